"""Starting a real ``regionsync daemon`` process for a test, and reading what it shows.

``start_daemon`` (a fixture, registered in conftest.py) starts ``python -m regionsync daemon``
against a database and the fake Kaleyra API, with a schedule of seconds and JSON logs, and
waits for ``/healthz`` to answer; a :class:`DaemonProcess` reads its log, health and metrics.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import URL, Engine

from regionsync.testing.fakeapi import FakeKaleyra
from tests.support import clean_environ
from tests.support.fakeapi_fixtures import process_variables

REPOSITORY = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def daemon_env(url: URL, fake: FakeKaleyra, **extra: str) -> dict[str, str]:
    """The environment of a daemon process: :func:`daemon_settings` on a clean environment."""
    return {**clean_environ(), **daemon_settings(url, fake, **extra)}


def daemon_settings(url: URL, fake: FakeKaleyra, **extra: str) -> dict[str, str]:
    """The daemon's settings: ``url``, ``fake``, a schedule of a second and JSON logs."""
    return process_variables(url, fake, **{"REGIONSYNC_SCHEDULE": "1s", **extra})


def metric_samples(text: str) -> dict[str, float]:
    """``{'name{label="value"}': value}`` for every sample of a Prometheus exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def http_get(port: int, path: str) -> tuple[int, str, bytes]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


class DaemonProcess:
    """A ``regionsync daemon`` process started by a test, its log, and its HTTP pages."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue  # a line still being written, or the CLI's one-line error
        return found

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def event(self, name: str) -> dict[str, Any]:
        return next(e for e in self.events() if e["event"] == name)

    def health(self) -> tuple[int, dict[str, Any]]:
        status, content_type, body = http_get(self.port, "/healthz")
        assert content_type == "application/json"
        return status, json.loads(body)

    def metrics(self) -> dict[str, float]:
        status, content_type, body = http_get(self.port, "/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=")
        return metric_samples(body.decode())

    def runs_counted(self, status: str) -> float:
        return self.metrics()[f'regionsync_sync_runs_total{{status="{status}"}}']

    def answers(self) -> bool:
        try:
            http_get(self.port, "/healthz")
        except OSError:
            return False
        return True

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                code = self.process.returncode
                pytest.fail(f"the daemon exited ({code}) waiting for {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"waited {timeout}s for {what}:\n{self.tail()}")
            time.sleep(0.05)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def exit_code(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit within {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start ``python -m regionsync daemon``; every one still running is killed afterwards."""
    started: list[DaemonProcess] = []

    def start(
        url: URL,
        fake: FakeKaleyra,
        *,
        budget: float | None = None,
        nofile: int | None = None,
        **env: str,
    ) -> DaemonProcess:
        """``budget``: the fetch budget in seconds; ``nofile``: its file descriptor limit."""
        port = free_port()
        log = tmp_path / f"daemon-{len(started)}.log"
        command = ["-m", "regionsync", "daemon"]
        if budget is not None:
            command = ["-m", "tests.support.budgeted", str(budget), "daemon"]

        def limit_fds() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, *command],
                env=daemon_env(url, fake, REGIONSYNC_METRICS_PORT=str(port), **env),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPOSITORY,
                preexec_fn=limit_fds if nofile is not None else None,
            )
        daemon = DaemonProcess(process, port, log)
        started.append(daemon)
        daemon.wait_until(daemon.answers, "/healthz to answer")
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=10)


def runs(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM sync_runs ORDER BY id")).mappings()
        return [dict(row) for row in rows]


def count(engine: Engine, status: str) -> int:
    return sum(1 for run in runs(engine) if run["status"] == status)
