"""Starting real ``regionsync worker`` processes (replicas of the fleet) for a test, and
reading what they did.

``start_worker`` (a fixture, registered in conftest.py) starts ``python -m regionsync worker``
against a database and the fake Kaleyra API, with a schedule of seconds and JSON logs to a file
of its own, and waits for its ``worker.started`` line; a :class:`WorkerProcess` reads its log.
:func:`add_fleet_accounts` adds accounts served by the fake's fleet, and :func:`runs_by_account`
reads ``sync_runs`` back per account.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync.store.accounts import AccountRow, add_account
from regionsync.testing.fakeapi import FakeKaleyra, fleet_key, fleet_sid
from tests.support import clean_environ
from tests.support.daemon import REPOSITORY, free_port
from tests.support.fakeapi_fixtures import process_variables

#: Six seconds: the dispatcher runs every second (a fifteenth of it), a test sees a few periods.
SCHEDULE = "6s"


class WorkerProcess:
    """A ``regionsync worker`` process started by a test, and its log."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port  # REGIONSYNC_METRICS_PORT: each replica on one machine has its own
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Its JSON log lines (those named ``name``), oldest first."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written, or the CLI's one-line error
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                found.append(event)
        return found

    def run_ids(self, name: str) -> set[int]:
        """The ``sync_runs`` ids of its sync log lines named ``name`` (``sync.started``...)."""
        return {e["run_id"] for e in self.events(name) if "run_id" in e}

    def running(self) -> set[int]:
        """The runs it started and has not finished (as its log tells)."""
        ended = self.run_ids("sync.finished") | self.run_ids("sync.failed")
        return self.run_ids("sync.started") - ended

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        """Poll ``condition``; fail the test if the worker exits or time runs out first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if not self.alive():
                code = self.process.returncode
                pytest.fail(f"the worker exited ({code}) waiting for {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"waited {timeout}s for {what}:\n{self.tail()}")
            time.sleep(0.1)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def exit_code(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit within {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``python -m regionsync worker``; every one still running is killed afterwards."""
    started: list[WorkerProcess] = []

    def start(
        url: URL,
        fake: FakeKaleyra,
        *,
        concurrency: int = 4,
        budget: float | None = None,
        **env: str,
    ) -> WorkerProcess:
        """``budget``: the fetch budget in seconds; ``env``: more settings (keys...)."""
        port = free_port()
        log = tmp_path / f"worker-{len(started)}.log"
        command = ["-m", "regionsync"]
        if budget is not None:
            command = ["-m", "tests.support.budgeted", str(budget)]
        settings = process_variables(
            url,
            fake,
            **{"REGIONSYNC_SCHEDULE": SCHEDULE, "REGIONSYNC_METRICS_PORT": str(port), **env},
        )
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, *command, "worker", "--concurrency", str(concurrency)],
                env={**clean_environ(), **settings},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPOSITORY,
            )
        worker = WorkerProcess(process, port, log)
        started.append(worker)
        worker.wait_until(lambda: bool(worker.events("worker.started")), "worker.started")
        return worker

    yield start
    for worker in started:
        if worker.alive():
            worker.process.kill()
            worker.process.wait(timeout=10)


def key_variable(name: str) -> str:
    """The environment variable that holds account ``name``'s key."""
    return "KALEYRA_API_KEY_" + name.upper().replace("-", "_")


def add_fleet_accounts(
    engine: Engine, fake: FakeKaleyra, numbers: Iterable[int], **fields: Any
) -> dict[str, str]:
    """Add account ``acct-<i>`` for each of the fake's fleet accounts ``numbers``, its key in
    :func:`key_variable`; returns those variables with the right keys, for the workers."""
    keys = {}
    with engine.begin() as connection:
        for number in numbers:
            name, sid = f"acct-{number}", fleet_sid(number)
            add_account(
                connection,
                AccountRow(name, sid, base_url=fake.url, api_key_env=key_variable(name), **fields),
            )
            keys[key_variable(name)] = fleet_key(sid)
    return keys


@dataclass(frozen=True)
class Run:
    id: int
    started_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None


def runs_by_account(engine: Engine) -> dict[str, list[Run]]:
    """Every row of ``sync_runs``, per account, in the order they started."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT account, id, started_at, finished_at, status, error FROM sync_runs"
                " ORDER BY started_at, id"
            )
        ).all()
    found: dict[str, list[Run]] = {}
    for account, *fields in rows:
        found.setdefault(account, []).append(Run(*fields))
    return found


def logged_at(event: dict[str, Any]) -> datetime:
    """When a log line was written (its ``timestamp``, UTC)."""
    return datetime.fromisoformat(event["timestamp"])
