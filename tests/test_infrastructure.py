"""The suite itself: an unreachable PostgreSQL fails the run loudly, it never skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_unreachable_postgresql_fails_the_run_with_how_to_start_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_sync.py"],
        cwd=REPO,
        env={
            **os.environ,
            "REGIONSYNC_TEST_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode not in (0, 5), done.stdout
    assert "PostgreSQL is not reachable" in done.stdout + done.stderr
    assert "pg_ctlcluster" in done.stdout + done.stderr
    assert " skipped" not in done.stdout
