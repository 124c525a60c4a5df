"""Running ``regionsync`` in-process for tests: ``cli.main(argv)``, as sqlite-utils does."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import URL

from regionsync import cli
from tests.support import scrub_environ


@dataclass
class Done:
    """What one command did: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


Invoke = Callable[..., Done]


def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: Sequence[str],
    env: dict[str, str],
) -> Done:
    """``regionsync ARGS`` in this process, with exactly ``env`` as regionsync's settings."""
    scrub_environ(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    try:
        code = cli.main(list(args))
    except SystemExit as exit_:  # argparse's usage errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return Done(code, out, err)


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Invoke]:
    """``invoke(*args, env={...})``: ``regionsync ARGS`` in-process, in a clean environment."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str, env: dict[str, str] | None = None) -> Done:
        return run_cli(monkeypatch, capsys, args, {"REGIONSYNC_LOG_FORMAT": "json", **(env or {})})

    yield run
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


def assert_one_line_error(done: Any, code: int, *needles: str) -> None:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("regionsync: error:")]
    assert len(errors) == 1, done.stderr
    for needle in needles:
        assert needle in errors[0]


def url_env(url: URL) -> dict[str, str]:
    return {"REGIONSYNC_DATABASE_URL": url.render_as_string(hide_password=False)}


def table_counts(url: URL) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return {
                name: c.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
                for name in ("regions", "region_history", "sync_runs")
            }
    finally:
        engine.dispose()
