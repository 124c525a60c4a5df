"""Faults in the middle of a big apply: the process killed, its backend terminated, a lock
timeout. Whatever happens, nothing is half-written and the next run completes.

Each test loads 50,000 regions, then serves a snapshot that flips every one of them (50,000
changes, one history row each) and strikes while the apply transaction is at work, as seen in
``pg_stat_activity``. See docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync.testing.fakeapi import FakeKaleyra
from tests.support import clean_environ
from tests.support.fakeapi_fixtures import process_variables
from tests.support.sources import region

N = 50_000
#: A statement of the apply (staging included) is running in the regionsync session.
APPLYING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name = 'regionsync' AND state = 'active'"
    " AND (query ILIKE 'COPY%' OR query ILIKE '%region%')"
    " AND query NOT ILIKE '%pg_stat_activity%'"
)

pytestmark = pytest.mark.slow


def snapshot(*, enabled: bool) -> list[dict[str, Any]]:
    return [region(f"r{i:05d}", enabled=enabled) for i in range(N)]


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"regions": snapshot(enabled=True)}


def env_for(url: URL, fake: FakeKaleyra, **extra: str) -> dict[str, str]:
    return {**clean_environ(), **process_variables(url, fake, **extra)}


def run(url: URL, fake: FakeKaleyra, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regionsync", "run"],
        env=env_for(url, fake, **extra),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def state(engine: Engine) -> tuple[int, int, int]:
    """(regions enabled, history rows, regions) — what a half-written apply would change."""
    with engine.connect() as c:
        return c.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM regions WHERE carrier_enabled),"
                " (SELECT count(*) FROM region_history), (SELECT count(*) FROM regions)"
            )
        ).one()


def strike_during_apply(
    url: URL,
    fake: FakeKaleyra,
    engine: Engine,
    strike: Callable[[subprocess.Popen[str], int], None],
) -> tuple[int, str]:
    """Start a run of the flipped snapshot, call ``strike`` once its apply is running;
    returns the run's exit code and standard error."""
    fake.set_regions(snapshot(enabled=False))
    process = subprocess.Popen(
        [sys.executable, "-m", "regionsync", "run"],
        env=env_for(url, fake),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            with engine.connect() as c:
                pid = c.execute(sa.text(APPLYING)).scalar()
            if pid is not None:
                strike(process, pid)
                break
            time.sleep(0.005)
        else:
            pytest.fail("the apply was never seen running")
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, err


@pytest.fixture
def loaded(db_url: URL, fake: FakeKaleyra, pg_engine: Engine) -> Engine:
    first = run(db_url, fake)
    assert first.returncode == 0, first.stderr[-2000:]
    assert state(pg_engine) == (N, N, N)
    return pg_engine


@pytest.fixture
def db_url(pg_url: URL, pg_engine: Engine) -> URL:
    return pg_url


def test_sigkill_mid_apply_writes_nothing_and_the_next_run_completes(
    db_url: URL, fake: FakeKaleyra, loaded: Engine
) -> None:
    code, _ = strike_during_apply(
        db_url, fake, loaded, lambda p, _pid: os.kill(p.pid, signal.SIGKILL)
    )
    assert code == -signal.SIGKILL
    # The killed session's transaction is rolled back once PostgreSQL notices it is gone.
    assert state(loaded) == (N, N, N)
    again = run(db_url, fake)
    assert again.returncode == 0, again.stderr[-2000:]
    assert state(loaded) == (0, 2 * N, N)
    with loaded.connect() as c:
        statuses = c.execute(sa.text("SELECT status, error FROM sync_runs ORDER BY id")).all()
    assert [s for s, _ in statuses] == ["succeeded", "failed", "succeeded"]
    assert "abandoned" in statuses[1][1]


def test_backend_terminated_mid_apply_fails_the_run_cleanly(
    db_url: URL, fake: FakeKaleyra, loaded: Engine
) -> None:
    def terminate(_process: subprocess.Popen[str], pid: int) -> None:
        with loaded.connect() as c:
            c.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    code, err = strike_during_apply(db_url, fake, loaded, terminate)
    assert code == 1, err[-2000:]
    assert "Traceback" not in err
    assert state(loaded) == (N, N, N)
    with loaded.connect() as c:
        last = c.execute(sa.text("SELECT status FROM sync_runs ORDER BY id DESC LIMIT 1")).one()
    assert last.status == "failed"
    again = run(db_url, fake)
    assert again.returncode == 0, again.stderr[-2000:]
    assert state(loaded) == (0, 2 * N, N)


def test_lock_timeout_during_the_apply_fails_the_run_and_writes_nothing(
    db_url: URL, fake: FakeKaleyra, loaded: Engine
) -> None:
    fake.set_regions(snapshot(enabled=False))
    with loaded.connect() as blocker:
        blocker.execute(sa.text("SELECT 1 FROM regions WHERE id = 'r25000' FOR UPDATE"))
        # libpq reads PGOPTIONS: the run's sessions give up on a lock after half a second.
        blocked = run(db_url, fake, PGOPTIONS="-c lock_timeout=500")
        blocker.rollback()
    assert blocked.returncode == 1, blocked.stderr[-2000:]
    assert "Traceback" not in blocked.stderr
    assert "lock" in blocked.stderr.lower()
    assert state(loaded) == (N, N, N)
    again = run(db_url, fake)
    assert again.returncode == 0, again.stderr[-2000:]
    assert state(loaded) == (0, 2 * N, N)
