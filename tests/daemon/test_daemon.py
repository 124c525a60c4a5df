"""The daemon as operators run it: a real ``regionsync daemon`` process, the fake Kaleyra API and
PostgreSQL, with a schedule of seconds. Plus ``/healthz`` and ``/metrics`` served in-process."""

from __future__ import annotations

import copy
import dataclasses
import gc
import itertools
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.daemon.health import DaemonHealth
from regionsync.daemon.loop import Daemon
from regionsync.daemon.metrics import DaemonMetrics, MetricsServer
from regionsync.daemon.schedule import parse_schedule
from regionsync.errors import ConfigError
from regionsync.status import StatusReport, gather
from regionsync.store.lock import ADVISORY_LOCK_KEY as LOCK_KEY
from regionsync.store.schema import migrate
from regionsync.sync import Guard
from regionsync.testing.fakeapi import FakeKaleyra, sample_regions
from tests.support import admin_url, settings_for
from tests.support.cli import Invoke, url_env
from tests.support.daemon import (
    DaemonProcess,
    count,
    daemon_settings,
    http_get,
    metric_samples,
    runs,
)
from tests.support.fakeapi_fixtures import API_KEY
from tests.support.sources import ListSource, region
from tests.support.tcpproxy import TcpProxy

#: The API says "come back in 10 minutes": each run fails at once instead of retrying.
OUTAGE = "http503:retry-after=600"


# Helpers ---------------------------------------------------------------------------------


def regions(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM regions")).mappings()
        return {row["id"]: dict(row) for row in rows}


def advisory_locks(engine: Engine) -> int:
    with engine.connect() as connection:
        held: int = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalar_one()
        return held


def changed_regions() -> tuple[list[dict[str, Any]], str, str]:
    """The sample with one region's ``carrier_enabled`` flipped and another gone."""
    data = copy.deepcopy(sample_regions())
    data[0]["carrier_enabled"] = not data[0]["carrier_enabled"]
    gone = data.pop()
    return data, data[0]["id"], gone["id"]


def assert_picked_up(engine: Engine, flipped: str, gone: str) -> None:
    now = regions(engine)
    original = {r["id"]: r for r in sample_regions()}
    assert now[flipped]["carrier_enabled"] is (not original[flipped]["carrier_enabled"])
    assert now[gone]["removed_at"] is not None
    assert sum(1 for r in now.values() if r["removed_at"] is None) == len(original) - 1


def assert_stopped_cleanly(daemon: DaemonProcess, engine: Engine, *, within: float = 5) -> None:
    sent = time.monotonic()
    daemon.send(signal.SIGTERM)
    assert daemon.exit_code(timeout=within + 5) == 0, daemon.tail()
    assert time.monotonic() - sent < within
    assert [r["id"] for r in runs(engine) if r["status"] == "running"] == []
    names = daemon.names()
    assert names.index("daemon.stopping") < names.index("daemon.stopped") == len(names) - 1
    assert API_KEY not in daemon.log.read_text()


class Admin:
    """Makes a database refuse connections and drops the ones it has, like an outage."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.engine = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")

    def refuse_connections(self) -> None:
        with self.engine.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
        self.terminate_connections()

    def terminate_connections(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": self.database},
            )

    def allow_connections(self) -> None:
        with self.engine.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')


# The daemon process ------------------------------------------------------------------------


@pytest.mark.slow
def test_daemon_syncs_on_schedule_serves_health_and_metrics_and_stops_on_sigterm(
    pg_engine: Engine, pg_url: URL, fake: FakeKaleyra, start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon(pg_url, fake)
    daemon.wait_until(lambda: count(pg_engine, "succeeded") >= 3, "three successful runs")

    done = runs(pg_engine)
    assert {r["trigger"] for r in done} == {"daemon"}
    assert {r["status"] for r in done} <= {"succeeded", "running"}
    starts = [r["started_at"] for r in done]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert all(0.5 < gap < 2.0 for gap in gaps), gaps  # every second, not in bursts
    started = daemon.event("daemon.started")
    assert started["schedule"] == "every 1s"
    assert started["misfire_grace_s"] == 1
    assert started["health_max_age_s"] == 3.0
    assert started["metrics_port"] == daemon.port
    assert "daemon.next_run" in daemon.names()

    status, health = daemon.health()
    assert status == 200, health
    assert health["status"] == "ok"
    assert 0 <= health["last_success_age_seconds"] < health["max_age_seconds"] == 3.0
    assert health["consecutive_failures"] == 0
    last_success = datetime.fromisoformat(health["last_success_at"])
    assert last_success in {r["finished_at"] for r in runs(pg_engine)}

    metrics = daemon.metrics()
    succeeded = metrics['regionsync_sync_runs_total{status="succeeded"}']
    assert 3 <= succeeded <= count(pg_engine, "succeeded")
    assert metrics['regionsync_sync_runs_total{status="failed"}'] == 0
    assert metrics['regionsync_sync_runs_total{status="skipped"}'] == 0
    assert metrics['regionsync_sync_duration_seconds_count{status="succeeded"}'] == succeeded
    assert 0 < metrics['regionsync_sync_duration_seconds_sum{status="succeeded"}'] < succeeded * 5
    assert metrics['regionsync_regions{state="active"}'] == len(regions(pg_engine))
    assert metrics['regionsync_regions{state="removed"}'] == 0
    assert metrics["regionsync_consecutive_failures"] == 0
    assert metrics["regionsync_health_max_age_seconds"] == 3
    assert abs(metrics["regionsync_last_success_timestamp_seconds"] - time.time()) < 5
    assert http_get(daemon.port, "/elsewhere")[0] == 404

    assert_stopped_cleanly(daemon, pg_engine)


@pytest.mark.slow
def test_daemon_keeps_going_through_an_api_outage_and_picks_up_changes(
    pg_engine: Engine, pg_url: URL, fake: FakeKaleyra, start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon(pg_url, fake)
    daemon.wait_until(lambda: daemon.health()[0] == 200, "a first success")

    fake.fail(OUTAGE)
    daemon.wait_until(lambda: count(pg_engine, "failed") >= 2, "two failed runs")
    failed = [r for r in runs(pg_engine) if r["status"] == "failed"]
    assert all("HTTP 503" in r["error"] for r in failed)
    daemon.wait_until(lambda: daemon.health()[0] == 503, "/healthz to go stale", timeout=10)
    health = daemon.health()[1]
    assert health["status"] == "stale"
    assert health["last_success_age_seconds"] >= health["max_age_seconds"] == 3.0
    assert health["consecutive_failures"] >= 2
    metrics = daemon.metrics()
    assert metrics["regionsync_consecutive_failures"] >= 2
    assert metrics['regionsync_sync_runs_total{status="failed"}'] >= 2

    data, flipped, gone = changed_regions()
    fake.set_regions(data)
    fake.clear_faults()
    daemon.wait_until(lambda: runs(pg_engine)[-1]["status"] == "succeeded", "a success again")
    last_failure = max(r["id"] for r in runs(pg_engine) if r["status"] == "failed")
    recovered = next(r for r in runs(pg_engine) if r["id"] > last_failure)
    assert (recovered["status"], recovered["changed"], recovered["removed"]) == ("succeeded", 1, 1)
    assert_picked_up(pg_engine, flipped, gone)
    daemon.wait_until(lambda: daemon.health()[0] == 200, "/healthz to be fresh again")
    assert daemon.metrics()["regionsync_consecutive_failures"] == 0

    assert_stopped_cleanly(daemon, pg_engine)


@pytest.mark.slow
def test_daemon_survives_the_database_being_down_at_start_and_later(
    fresh_pg_url: URL, fake: FakeKaleyra, start_daemon: Callable[..., DaemonProcess]
) -> None:
    engine = store.create_engine(settings_for(fresh_pg_url))
    migrate(engine)
    engine.dispose()
    admin = Admin(str(fresh_pg_url.database))
    admin.refuse_connections()
    try:
        daemon = start_daemon(fresh_pg_url, fake)
        assert "daemon.database_unavailable" in daemon.names()
        status, health = daemon.health()
        assert (status, health["last_success_at"]) == (503, None)  # no success yet
        daemon.wait_until(lambda: daemon.runs_counted("failed") >= 2, "two attempts to fail")

        admin.allow_connections()
        daemon.wait_until(lambda: daemon.health()[0] == 200, "a success once the database is up")
        assert count(engine, "succeeded") >= 1

        admin.refuse_connections()  # and drop the daemon's pooled connections
        failed = daemon.runs_counted("failed")
        daemon.wait_until(lambda: daemon.runs_counted("failed") >= failed + 2, "failures")
        data, flipped, gone = changed_regions()
        fake.set_regions(data)
        admin.allow_connections()
        daemon.wait_until(
            lambda: any(r["changed"] == 1 and r["removed"] == 1 for r in runs(engine)),
            "the changed regions to be synced",
        )
        assert_picked_up(engine, flipped, gone)

        # A restart in the middle of a sync: its connection (and lock) die under it.
        fake.fail("slow:1.5", times=1)
        daemon.wait_until(lambda: count(engine, "running") == 1, "a sync in progress")
        [cut] = [r["id"] for r in runs(engine) if r["status"] == "running"]
        admin.terminate_connections()
        daemon.wait_until(lambda: runs(engine)[-1]["id"] > cut, "the next run")
        failed_run = next(r for r in runs(engine) if r["id"] == cut)
        assert failed_run["status"] == "failed"
        assert "database error" in failed_run["error"]
        daemon.wait_until(lambda: runs(engine)[-1]["status"] == "succeeded", "a success after it")
        assert_stopped_cleanly(daemon, engine)
    finally:
        admin.allow_connections()
        engine.dispose()
        admin.engine.dispose()


@pytest.mark.slow
def test_sigterm_during_a_slow_sync_lets_it_finish_then_exits_0(
    pg_engine: Engine, pg_url: URL, fake: FakeKaleyra, start_daemon: Callable[..., DaemonProcess]
) -> None:
    fake.fail("slow:3", times=1)
    daemon = start_daemon(pg_url, fake, REGIONSYNC_SCHEDULE="1h")
    daemon.wait_until(
        lambda: fake.request_count() == 1 and count(pg_engine, "running") == 1,
        "the sync at start to be fetching",
    )
    sent = time.monotonic()
    daemon.send(signal.SIGTERM)
    assert daemon.exit_code(timeout=15) == 0, daemon.tail()
    waited = time.monotonic() - sent
    assert 1.5 < waited < 10, waited  # it waited for the 3-second response

    [run] = runs(pg_engine)
    assert (run["status"], run["fetched"]) == ("succeeded", len(sample_regions()))
    names = daemon.names()
    assert names.index("daemon.stopping") < names.index("sync.finished")
    assert names[-1] == "daemon.stopped"
    assert daemon.event("daemon.stopping")["waiting_for_sync"] is True
    assert fake.request_count() == 1  # no new run after the signal


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_the_next_run_closes_the_abandoned_one(
    pg_engine: Engine,
    pg_url: URL,
    fake: FakeKaleyra,
    start_daemon: Callable[..., DaemonProcess],
    invoke: Invoke,
) -> None:
    fake.fail("slow:60", times=1)
    daemon = start_daemon(pg_url, fake, REGIONSYNC_SCHEDULE="1h")
    daemon.wait_until(lambda: count(pg_engine, "running") == 1, "the sync at start")
    daemon.send(signal.SIGTERM)
    daemon.wait_until(lambda: "daemon.stopping" in daemon.names(), "the first signal")
    sent = time.monotonic()
    daemon.send(signal.SIGINT)
    assert daemon.exit_code(timeout=5) == 128 + signal.SIGINT
    assert time.monotonic() - sent < 2
    assert daemon.names()[-1] == "daemon.killed"
    assert [r["status"] for r in runs(pg_engine)] == ["running"]
    daemon.wait_until(lambda: advisory_locks(pg_engine) == 0, "its session's lock to go")

    done = invoke("run", env=daemon_settings(pg_url, fake))
    assert done.returncode == 0, done.stderr
    first, second = runs(pg_engine)
    assert first["status"] == "failed"
    assert "abandoned" in first["error"]
    assert second["status"] == "succeeded"


def refused(invoke: Invoke, env: dict[str, str]) -> str:
    """``regionsync daemon``, in-process: each refusal comes before the daemon would start."""
    done = invoke("daemon", env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("regionsync: error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.mark.slow
def test_daemon_refuses_an_unmigrated_database_with_exit_2(
    fresh_pg_url: URL, fake: FakeKaleyra, invoke: Invoke
) -> None:
    error = refused(invoke, daemon_settings(fresh_pg_url, fake))
    assert "has no regionsync schema: run `regionsync migrate`" in error


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("REGIONSYNC_SCHEDULE", "0 0 * * 8", "REGIONSYNC_SCHEDULE: day-of-week field '8'"),
        ("REGIONSYNC_SCHEDULE", "*/5 * * *", "REGIONSYNC_SCHEDULE: expected an interval"),
        ("KALEYRA_SID", "", "KALEYRA_SID: is required"),
    ],
)
def test_daemon_refuses_bad_settings_with_exit_2(
    pg_engine: Engine,
    pg_url: URL,
    fake: FakeKaleyra,
    invoke: Invoke,
    setting: str,
    value: str,
    message: str,
) -> None:
    assert message in refused(invoke, daemon_settings(pg_url, fake, **{setting: value}))
    assert runs(pg_engine) == []


@pytest.mark.slow
def test_daemon_refuses_a_metrics_port_in_use_with_exit_2(
    pg_engine: Engine, pg_url: URL, fake: FakeKaleyra, invoke: Invoke
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # where the daemon listens by default
        taken.listen()
        port = str(taken.getsockname()[1])
        error = refused(invoke, daemon_settings(pg_url, fake, REGIONSYNC_METRICS_PORT=port))
    assert f"REGIONSYNC_METRICS_PORT: cannot listen on 127.0.0.1 port {port}" in error
    assert runs(pg_engine) == []


# /healthz and /metrics in-process ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def report(
    last_success_at: datetime | None, *, active: int = 7, removed: int = 2, failures: int = 0
) -> StatusReport:
    return StatusReport(
        recent_runs=[],
        active_regions=active,
        removed_regions=removed,
        last_success_at=last_success_at,
        checked_at=last_success_at or datetime.now(UTC),
        consecutive_failures=failures,
    )


@pytest.fixture
def served() -> Iterator[tuple[DaemonMetrics, Clock, int]]:
    clock = Clock()
    metrics = DaemonMetrics(max_age=timedelta(minutes=45), clock=clock)
    server = MetricsServer(metrics, 0, host="127.0.0.1").start()
    try:
        yield metrics, clock, server.port
    finally:
        server.stop()


def test_healthz_is_503_before_any_success_then_200_while_fresh_then_503(
    served: tuple[DaemonMetrics, Clock, int],
) -> None:
    metrics, clock, port = served
    status, _, body = http_get(port, "/healthz")
    assert (status, json.loads(body)["last_success_at"]) == (503, None)

    metrics.record_status(report(clock.now - timedelta(minutes=10)))
    status, content_type, body = http_get(port, "/healthz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {
        "status": "ok",
        "last_success_at": "2024-03-01T11:50:00+00:00",
        "last_success_age_seconds": 600.0,
        "max_age_seconds": 2700.0,
        "consecutive_failures": 0,
        "active_regions": 7,
        "removed_regions": 2,
        "checked_at": "2024-03-01T12:00:00+00:00",
    }

    metrics.record_run("failed", 0.5)
    metrics.record_status(report(clock.now - timedelta(minutes=10), failures=1))
    clock.now += timedelta(minutes=35)
    status, _, body = http_get(port, "/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "stale"
    assert json.loads(body)["last_success_age_seconds"] == 2700.0
    assert json.loads(body)["consecutive_failures"] == 1


def test_metrics_count_runs_by_status_and_reset_consecutive_failures_on_success(
    served: tuple[DaemonMetrics, Clock, int],
) -> None:
    metrics, clock, port = served
    for status, duration in [("failed", 0.2), ("failed", 40.0), ("skipped", None)]:
        metrics.record_run(status, duration)
    samples = metric_samples(http_get(port, "/metrics")[2].decode())
    assert samples['regionsync_sync_runs_total{status="failed"}'] == 2
    assert samples['regionsync_sync_runs_total{status="skipped"}'] == 1
    assert samples['regionsync_sync_runs_total{status="succeeded"}'] == 0
    assert samples["regionsync_consecutive_failures"] == 2  # a skipped run changes nothing
    assert samples['regionsync_sync_duration_seconds_count{status="failed"}'] == 2
    assert samples['regionsync_sync_duration_seconds_count{status="succeeded"}'] == 0
    assert samples['regionsync_sync_duration_seconds_bucket{le="0.25",status="failed"}'] == 1
    assert samples['regionsync_sync_duration_seconds_bucket{le="60.0",status="failed"}'] == 2
    assert samples["regionsync_last_success_timestamp_seconds"] == 0

    success = clock.now - timedelta(seconds=30)
    metrics.record_run("succeeded", 1.0)
    metrics.record_status(report(success, active=7, removed=2))
    samples = metric_samples(http_get(port, "/metrics")[2].decode())
    assert samples["regionsync_consecutive_failures"] == 0
    assert samples["regionsync_last_success_timestamp_seconds"] == success.timestamp()
    assert samples['regionsync_regions{state="active"}'] == 7
    assert samples['regionsync_regions{state="removed"}'] == 2
    assert samples["regionsync_health_max_age_seconds"] == 2700


# Hung APIs, skipped ticks, a squatted lock, a dead database, a flooded metrics port --------


@pytest.mark.slow
def test_sigterm_during_a_dripping_fetch_stops_within_the_fetch_budget(
    pg_engine: Engine, pg_url: URL, fake: FakeKaleyra, start_daemon: Callable[..., DaemonProcess]
) -> None:
    fake.fail("drip:0.5")  # a byte every half second: every read succeeds, the answer never ends
    daemon = start_daemon(pg_url, fake, budget=3.0, REGIONSYNC_SCHEDULE="1h")
    daemon.wait_until(
        lambda: fake.request_count() == 1 and count(pg_engine, "running") == 1, "the fetch"
    )
    sent = time.monotonic()
    daemon.send(signal.SIGTERM)
    assert daemon.exit_code(timeout=20) == 0, daemon.tail()
    assert time.monotonic() - sent < 3.0 + 2.0  # the budget, and a margin for the apply

    [run] = runs(pg_engine)
    assert run["status"] == "failed"
    assert "3.0 s budget" in run["error"]
    failed = daemon.event("daemon.run_failed")
    assert "budget" in failed["error"]
    assert failed["consecutive_failures"] == 1
    assert daemon.names()[-1] == "daemon.stopped"


@pytest.mark.slow
def test_a_tick_that_finds_the_previous_sync_running_is_reported(
    pg_engine: Engine, pg_url: URL, fake: FakeKaleyra, start_daemon: Callable[..., DaemonProcess]
) -> None:
    fake.fail("drip:0.2")
    daemon = start_daemon(pg_url, fake, budget=2.5)  # ticks every second
    daemon.wait_until(lambda: "daemon.tick_skipped" in daemon.names(), "a skipped tick")
    skipped = daemon.event("daemon.tick_skipped")
    assert skipped["reason"] == "the previous sync is still running"
    assert skipped["level"] == "warning"
    assert 0.5 < skipped["running_for_s"] < 2.5
    _, health = daemon.health()
    assert health["ticks_skipped"]["still_running"] >= 1
    assert daemon.metrics()['regionsync_ticks_skipped_total{reason="still_running"}'] >= 1

    daemon.wait_until(lambda: daemon.runs_counted("failed") >= 1, "the hung fetch to fail")
    [failed, *_] = [r for r in runs(pg_engine) if r["status"] == "failed"]
    assert "2.5 s budget" in failed["error"]
    assert daemon.health()[1]["consecutive_failures"] >= 1

    fake.clear_faults()
    daemon.wait_until(lambda: runs(pg_engine)[-1]["status"] == "succeeded", "a success")
    assert count(pg_engine, "skipped") == 0  # skipped ticks write no run: nothing was attempted
    assert_stopped_cleanly(daemon, pg_engine)


class Squatter:
    """A session of another role that holds the sync's advisory lock."""

    def __init__(self, url: URL) -> None:
        self.role = f"squatter_{os.getpid()}_{time.monotonic_ns() % 10**6}"
        self.admin = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE ROLE "{self.role}" LOGIN')
        self.engine = sa.create_engine(url.set(username=self.role, password=None))
        self.connection = self.engine.connect()
        self.pid: int = self.connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        self.connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
        self.connection.commit()

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'DROP ROLE "{self.role}"')
        self.admin.dispose()


@pytest.fixture
def squatter(pg_engine: Engine, pg_url: URL) -> Iterator[Squatter]:
    held = Squatter(pg_url)
    yield held
    held.close()


@pytest.mark.slow
def test_a_lock_held_by_another_role_is_reported_with_its_holder(
    pg_engine: Engine,
    pg_url: URL,
    fake: FakeKaleyra,
    start_daemon: Callable[..., DaemonProcess],
    squatter: Squatter,
) -> None:
    daemon = start_daemon(pg_url, fake)
    daemon.wait_until(lambda: count(pg_engine, "skipped") >= 2, "two skipped runs")
    daemon.wait_until(
        lambda: daemon.metrics()['regionsync_ticks_skipped_total{reason="lock_held"}'] >= 2,
        "the skipped ticks to be counted",
    )
    event = daemon.event("daemon.tick_skipped")
    assert event["reason"] == "another session holds the sync lock"
    assert (event["holder_pid"], event["holder_user"]) == (squatter.pid, squatter.role)
    assert event["stuck"] is False
    _, health = daemon.health()
    assert health["ticks_skipped"]["lock_held"] >= 2
    assert (health["lock"]["pid"], health["lock"]["user"]) == (squatter.pid, squatter.role)
    assert health["lock"]["stuck"] is False
    metrics = daemon.metrics()
    assert metrics["regionsync_lock_stuck"] == 0
    assert metrics["regionsync_lock_held_seconds"] > 0
    assert fake.request_count() == 0  # nothing fetched without the lock
    assert_stopped_cleanly(daemon, pg_engine)


def test_a_lock_held_longer_than_a_run_can_take_is_flagged_stuck(
    pg_engine: Engine, squatter: Squatter, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = DaemonMetrics(max_age=timedelta(minutes=45))
    health = DaemonHealth(metrics, stuck_after=timedelta(seconds=0.5))
    daemon = Daemon(
        pg_engine,
        ListSource([region("r1")]),
        schedule=parse_schedule("1s"),
        guard=Guard(),
        metrics=metrics,
        period=timedelta(seconds=1),
        health=health,
    )
    daemon.sync_once()
    assert health.lock_report() is not None
    assert health.lock_report()["stuck"] is False  # type: ignore[index]
    time.sleep(0.7)
    daemon.sync_once()
    _, body = health.health()
    assert body["lock"]["stuck"] is True
    assert (body["lock"]["pid"], body["lock"]["user"]) == (squatter.pid, squatter.role)
    assert body["ticks_skipped"] == {"still_running": 0, "lock_held": 2}
    samples = metric_samples(metrics.exposition().decode())
    assert samples["regionsync_lock_stuck"] == 1
    assert samples["regionsync_lock_held_seconds"] >= 0.5

    report = gather(pg_engine)
    assert report.lock is not None
    assert (report.lock.pid, report.lock.user) == (squatter.pid, squatter.role)
    assert report.lock.held_at_least >= timedelta(seconds=0.5)  # idle since it took the lock
    assert report.lock.is_stuck(timedelta(seconds=0.5))
    assert report.lock_warning is None  # 15 minutes are far from over
    assert report.as_json()["lock"]["pid"] == squatter.pid


def test_status_warns_about_a_stuck_lock_naming_its_holder(
    pg_engine: Engine, pg_url: URL, squatter: Squatter, invoke: Invoke
) -> None:
    done = invoke("status", "--json", env=url_env(pg_url))
    lock = json.loads(done.stdout)["lock"]
    assert (lock["pid"], lock["user"], lock["stuck"]) == (squatter.pid, squatter.role, False)
    assert lock["stuck_after_seconds"] == 900

    report = gather(pg_engine)
    assert report.lock is not None
    stuck = dataclasses.replace(
        report, lock=dataclasses.replace(report.lock, held_at_least=timedelta(hours=2))
    )
    warning = stuck.lock_warning
    assert warning is not None
    assert f"pid {squatter.pid}, user {squatter.role}" in warning
    assert stuck.as_json()["lock"]["stuck"] is True


@pytest.mark.slow
def test_daemon_carries_on_through_a_database_that_dies_and_comes_back(
    pg_engine: Engine, pg_url: URL, fake: FakeKaleyra, start_daemon: Callable[..., DaemonProcess]
) -> None:
    with TcpProxy((str(pg_url.host), int(pg_url.port or 5432))) as proxy:
        via_proxy = pg_url.set(host="127.0.0.1", port=proxy.port)
        daemon = start_daemon(via_proxy, fake)
        daemon.wait_until(lambda: count(pg_engine, "succeeded") >= 1, "a first success")

        proxy.cut()
        failed = daemon.runs_counted("failed")
        daemon.wait_until(lambda: daemon.runs_counted("failed") >= failed + 2, "two failures")
        assert daemon.process.poll() is None
        failures = [e for e in daemon.events() if e["event"] == "daemon.run_failed"]
        # Either mid-statement ("database error") or at connect, naming the setting to check.
        assert all(
            "database error" in e["error"] or "from REGIONSYNC_DATABASE_URL=" in e["error"]
            for e in failures
        ), [e["error"] for e in failures]
        assert daemon.metrics()["regionsync_consecutive_failures"] >= 2  # this process's count
        assert "Traceback" not in daemon.log.read_text()

        data, flipped, gone = changed_regions()
        fake.set_regions(data)
        proxy.restore()
        daemon.wait_until(
            lambda: any(r["changed"] == 1 and r["removed"] == 1 for r in runs(pg_engine)),
            "the changes to be synced once the database is back",
        )
        assert_picked_up(pg_engine, flipped, gone)
        daemon.wait_until(
            lambda: daemon.metrics()["regionsync_consecutive_failures"] == 0, "recovery"
        )
        assert_stopped_cleanly(daemon, pg_engine)


def idle_connections(port: int, number: int) -> list[socket.socket]:
    """Open ``number`` connections that send half a request and then nothing."""
    opened = []
    for _ in range(number):
        sock = socket.socket()
        sock.settimeout(0.2)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x")
        except OSError:
            sock.close()
            continue
        opened.append(sock)
    return opened


@pytest.mark.slow
def test_a_flooded_metrics_port_at_the_fd_limit_never_breaks_syncs(
    pg_engine: Engine, pg_url: URL, fake: FakeKaleyra, start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon(pg_url, fake, nofile=96)
    daemon.wait_until(lambda: count(pg_engine, "succeeded") >= 1, "a first success")
    flood = idle_connections(daemon.port, 300)
    try:
        assert len(flood) > 96  # more than the daemon could hold open: extras are closed
        before = count(pg_engine, "succeeded")
        daemon.wait_until(lambda: count(pg_engine, "succeeded") >= before + 3, "three syncs")
        assert count(pg_engine, "failed") == 0
        assert "daemon.run_failed" not in daemon.names()
        # Idle half-sent requests are dropped, so the page answers again while they stay open.
        daemon.wait_until(daemon.answers, "/healthz to answer", timeout=15)
        assert daemon.health()[0] == 200
    finally:
        for sock in flood:
            sock.close()
    assert_stopped_cleanly(daemon, pg_engine)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.slow
def test_metrics_server_bounds_connections_and_drops_idle_and_dripped_requests() -> None:
    metrics = DaemonMetrics(max_age=timedelta(minutes=45))
    server = MetricsServer(metrics, 0, max_connections=4, idle_timeout=0.5, lifetime=1.5).start()
    try:
        idle = idle_connections(server.port, 4)
        time.sleep(0.3)  # all four accepted and waiting for the rest of their request
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=2)
        assert closed_by_peer(extra, 0.5)  # over the limit: closed at once
        started = time.monotonic()
        assert all(closed_by_peer(sock, 2) for sock in idle)  # dropped after 0.5 s idle
        assert time.monotonic() - started < 1

        dripper = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        started = time.monotonic()
        while not closed_by_peer(dripper, 0.2):  # never idle for 0.5 s, yet cut at 1.5 s
            dripper.sendall(b"G")
            assert time.monotonic() - started < 3
        assert time.monotonic() - started > 1.2
        assert http_get(server.port, "/healthz")[0] == 503  # and the page answers again
        for sock in [*idle, extra, dripper]:
            sock.close()
    finally:
        server.stop()


def test_metrics_server_binds_loopback_unless_told_otherwise(pg_url: URL) -> None:
    assert settings_for(pg_url).metrics_host == "127.0.0.1"
    assert settings_for(pg_url, REGIONSYNC_METRICS_HOST="0.0.0.0").metrics_host == "0.0.0.0"  # noqa: S104
    assert settings_for(pg_url, REGIONSYNC_METRICS_HOST="[::1]").metrics_host == "::1"
    with pytest.raises(ConfigError, match="REGIONSYNC_METRICS_HOST"):
        settings_for(pg_url, REGIONSYNC_METRICS_HOST="http://x/")
    server = MetricsServer(DaemonMetrics(max_age=timedelta(minutes=1)), 0).start()
    try:
        assert server._serving.server.server_address[0] == "127.0.0.1"
    finally:
        server.stop()


def test_the_daemon_runs_with_the_cyclic_collector_on(pg_url: URL) -> None:
    """The program starts commands with it off (regionsync/__main__.py); days of syncs
    without it could keep every reference cycle they make."""
    from regionsync.daemon.loop import run_daemon

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(ConfigError, match="KALEYRA_SID"):
            run_daemon(settings_for(pg_url))  # stops at the settings, after turning it on
        assert gc.isenabled()
    finally:
        if not was_enabled:
            gc.disable()
