"""The fleet seen from outside (docs/fleet.md, *Seen from outside*): when an account is due
and overdue, one definition for the dispatcher, ``status`` and the metrics; a worker's
``/metrics`` counting the fleet and its own syncs, without a label per account; ``/healthz``
turning 503 when the database does not answer or an account is left behind; and the fleet's
alert rules, checked by promtool."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.daemon.schedule import parse_schedule
from regionsync.fleet.app import SyncEnded
from regionsync.fleet.dispatch import Dispatcher, timetables
from regionsync.fleet.metrics import UNAVAILABLE, FleetMetrics
from regionsync.periods import first_due_after, is_due, lateness, latest_due
from regionsync.status import gather
from regionsync.store import runs
from regionsync.store.accounts import AccountRow, add_account, set_paused
from regionsync.store.runs import Counts
from regionsync.store.tables import RunStatus
from regionsync.testing.fakeapi import FakeKaleyra
from tests.support import settings_for
from tests.support.cli import Invoke, url_env
from tests.support.daemon import http_get, metric_samples
from tests.support.fleet import WorkerProcess, add_fleet_accounts
from tests.support.monitoring import (
    FLEET_ALERT_TESTS,
    FLEET_ALERTS,
    PROMTOOL,
    exposed_names,
    missing_names,
    needs_promtool,
    queries,
)

HOUR = timedelta(hours=1)
MOMENT = datetime(2026, 3, 27, 23, 59, 30, tzinfo=UTC)  # Berlin's clock jumps on the 29th


# One definition of due and overdue ---------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "zone"),
    [("15m", "UTC"), ("*/5 * * * *", "UTC"), ("0 9 * * 1-5", "Europe/Berlin"), ("1d", "UTC")],
)
def test_due_since_is_the_first_due_time_after_the_last_start(expression: str, zone: str) -> None:
    schedule = parse_schedule(expression, zone)
    period = schedule.period(now=MOMENT)
    for name in ("acme", "bravo", "shop-0042"):
        for minutes in (0, 7, 61, 3 * 24 * 60 + 5):
            start = MOMENT + timedelta(minutes=minutes)
            due = first_due_after(schedule, name, start)
            assert due is not None
            assert start < due <= start + period
            assert latest_due(schedule, name, due) == due  # it is one of the due times
            assert not is_due(schedule, name, start, due - timedelta(microseconds=1))
            assert is_due(schedule, name, start, due)
            late = lateness(schedule, name, last_start=start, created_at=None, now=due + period)
            assert (late.due_since, late.overdue) == (due, False)  # due for exactly a period
            later = due + period + timedelta(seconds=1)
            late = lateness(schedule, name, last_start=start, created_at=None, now=later)
            assert (late.due_since, late.overdue) == (due, True)
            assert late.periods_late() > 1


def test_an_account_never_synced_is_due_from_when_it_was_added() -> None:
    schedule = parse_schedule("15m")
    added = MOMENT - timedelta(minutes=20)
    late = lateness(schedule, "acme", last_start=None, created_at=added, now=MOMENT)
    assert (late.due, late.due_since, late.overdue) == (True, added, True)
    assert late.due_for == timedelta(minutes=20)
    fresh = lateness(schedule, "acme", last_start=None, created_at=MOMENT, now=MOMENT)
    assert (fresh.due, fresh.overdue) == (True, False)


def test_the_dispatcher_defers_exactly_the_accounts_status_calls_due(pg_engine: Engine) -> None:
    """Per-account schedules: a yearly one that ran is not due, a 1s one that ran is due
    after a second, one that never ran is due; the dispatcher and ``status`` agree."""
    with pg_engine.begin() as c:
        add_account(c, AccountRow("yearly", "S1", pod="in", schedule="@yearly"))
        add_account(c, AccountRow("second", "S2", pod="in", schedule="1s"))
        add_account(c, AccountRow("never", "S3", pod="in", schedule="@yearly"))
    record(pg_engine, "yearly", "succeeded")
    record(pg_engine, "second", "succeeded")
    time.sleep(1.1)
    settings = settings_for(pg_engine.url)
    with pg_engine.connect() as c:
        found = Dispatcher(settings.schedule, settings.timezone, settings.account).due(
            c, "regionsync.sync_account", datetime.now(UTC)
        )
    report = gather(pg_engine, timetables=timetables(settings))
    due = [row.account for row in report.accounts if row.lateness and row.lateness.due]
    assert sorted(found.accounts) == due == ["never", "second"]


def record(engine: Engine, account: str, status: RunStatus) -> None:
    """A run of ``account`` starting now, ended as ``status`` (or left running)."""
    with engine.begin() as connection:
        if status == "skipped":
            runs.open_run(connection, account=account, trigger="cli", source="t", skipped="held")
            return
        run_id = runs.open_run(connection, account=account, trigger="cli", source="t")
        if status != "running":
            error = "boom" if status == "failed" else None
            runs.finish_run(connection, run_id, status=status, error=error)


def test_status_shows_overdue_accounts_in_its_table_and_json(invoke: Invoke, db_url: URL) -> None:
    """A failed run counts as a start (failing, not overdue); a skipped one does not; a
    fresh success a whole period ago is ``overdue``; a paused account is not judged."""
    engine = store.create_engine(settings_for(db_url))
    try:
        with engine.begin() as c:
            for name, schedule in (
                ("failed", "@yearly"),
                ("late", "1s"),
                ("paused", "1s"),
                ("skipped", "1s"),
                ("synced", "@yearly"),
            ):
                add_account(c, AccountRow(name, name.upper(), pod="in", schedule=schedule))
            set_paused(c, "paused", paused=True)
        record(engine, "failed", "failed")
        record(engine, "skipped", "skipped")
        record(engine, "synced", "succeeded")
        record(engine, "late", "succeeded")
        time.sleep(2.1)  # "late" is due within a second of its run, overdue a second later
        report = gather(engine, timetables=timetables(settings_for(db_url)))
    finally:
        engine.dispose()
    rows = {row.account: row for row in report.accounts}
    assert [row.account for row in report.overdue] == ["skipped", "late"]  # longest due first
    assert rows["skipped"].lateness is not None
    assert rows["skipped"].lateness.due_since == rows["skipped"].created_at  # never started
    assert [rows[n].state(HOUR) for n in ("failed", "late", "paused", "skipped", "synced")] == [
        "failing",
        "overdue",
        "paused",
        "never",
        "ok",
    ]

    env = url_env(db_url)
    table = invoke("status", "--max-age", "1h", env=env)
    lines = table.stdout.splitlines()
    assert lines[0].startswith("5 accounts: 1 ok, 1 overdue, 1 failing, 1 never, 1 paused")
    assert "due for" in lines[1]
    cells = {line.split()[0]: line for line in lines[2:7]}
    assert [("!" in cells[name]) for name in ("failed", "late", "skipped", "synced")] == [
        False,
        True,  # due for longer than a period
        True,
        False,
    ]
    summary = "overdue: 2 account(s) due for longer than their period, the longest skipped"
    assert any(line.startswith(summary) for line in lines), table.stdout

    shown = json.loads(invoke("status", "--json", "--max-age", "1h", env=env).stdout)
    assert shown["overdue_accounts"] == 2
    accounts = {a["account"]: a for a in shown["accounts"]}
    assert (accounts["late"]["overdue"], accounts["late"]["state"]) == (True, "overdue")
    assert accounts["late"]["period_seconds"] == 1.0
    assert accounts["late"]["due_for_seconds"] > 1.0
    assert (accounts["failed"]["overdue"], accounts["failed"]["due_since"]) == (False, None)
    assert accounts["paused"]["overdue"] is None  # not judged
    one = invoke("status", "--account", "late", "--max-age", "1h", env=env).stdout
    assert "OVERDUE: due since" in one


# A worker's /metrics and /healthz, in-process parts ---------------------------------------


@pytest.fixture
def served(pg_engine: Engine) -> Iterator[Callable[[Engine], tuple[FleetMetrics, int]]]:
    """Serve a :class:`FleetMetrics` reading ``engine`` on a free port."""
    from regionsync.daemon.metrics import serve_metrics

    stops: list[Callable[[], None]] = []

    def serve(engine: Engine) -> tuple[FleetMetrics, int]:
        settings = settings_for(pg_engine.url)
        metrics = FleetMetrics(
            engine,
            timetables(settings),
            implicit_account=settings.account,
            concurrency=3,
            period=timedelta(minutes=15),
        )
        server = serve_metrics(metrics, "127.0.0.1", 0)
        assert server is not None
        stops.append(server.stop)
        return metrics, server.port

    yield serve
    for stop in stops:
        stop()


def test_without_the_database_the_fleet_figures_read_nan_and_healthz_is_503(
    served: Callable[[Engine], tuple[FleetMetrics, int]], pg_engine: Engine
) -> None:
    nowhere = store.create_engine(settings_for("postgresql://postgres@127.0.0.1:1/regionsync"))
    try:
        metrics, port = served(nowhere)
        assert metrics.refresh() is None  # refused at once: nothing listens on port 1
        status, _, body = http_get(port, "/healthz")
        health = json.loads(body)
        assert (status, health["status"]) == (503, "database_unavailable")
        assert health["database_error"] == UNAVAILABLE
        assert "127.0.0.1" not in body.decode()  # where the database is: for the log only
        found = metric_samples(http_get(port, "/metrics")[2].decode())
        assert found["regionsync_fleet_database_up"] == 0
        for name in ("accounts", "accounts_due", "accounts_overdue", "oldest_overdue_seconds"):
            assert math.isnan(found[f"regionsync_fleet_{name}"])
        assert math.isnan(found['regionsync_fleet_jobs{status="todo"}'])
        assert found["regionsync_fleet_concurrency"] == 3  # this replica's own: still known
    finally:
        nowhere.dispose()

    metrics, port = served(pg_engine)
    snapshot = metrics.refresh()
    assert snapshot is not None
    assert snapshot.accounts == 1  # the settings' implicit account
    status, _, body = http_get(port, "/healthz")
    assert (status, json.loads(body)["status"]) == (200, "ok")
    assert (
        metric_samples(http_get(port, "/metrics")[2].decode())["regionsync_fleet_database_up"] == 1
    )


def test_a_replicas_syncs_are_counted_by_outcome_and_reason_never_by_account(
    served: Callable[[Engine], tuple[FleetMetrics, int]], pg_engine: Engine
) -> None:
    metrics, port = served(pg_engine)
    for ended in (
        SyncEnded("succeeded", 0.4, counts=Counts(fetched=3, added=2, changed=1)),
        SyncEnded("failed", 1.5, "auth"),
        SyncEnded("skipped"),
        SyncEnded("gone"),  # removed before its job ran: no run to count
    ):
        metrics.sync_started()
        metrics.sync_ended(ended)
    metrics.sync_started()  # one still running
    metrics.jobs_dispatched(4)
    metrics.job_recovered()
    text = http_get(port, "/metrics")[2].decode()
    found = metric_samples(text)
    assert found['regionsync_sync_runs_total{status="succeeded"}'] == 1
    assert found['regionsync_sync_runs_total{status="failed"}'] == 1
    assert found['regionsync_sync_runs_total{status="skipped"}'] == 1
    assert found['regionsync_sync_failures_total{reason="auth"}'] == 1
    assert found['regionsync_sync_duration_seconds_count{status="succeeded"}'] == 1
    assert found['regionsync_region_changes_total{change="added"}'] == 2
    assert found["regionsync_fleet_syncs_running"] == 1
    assert found["regionsync_fleet_jobs_dispatched_total"] == 4
    assert found["regionsync_fleet_jobs_recovered_total"] == 1
    labels = {key for sample in exposed_names(text).values() for key in sample}
    assert labels == {"status", "reason", "change", "le", "version"}  # none names an account
    health = json.loads(http_get(port, "/healthz")[2])["worker"]
    assert health["syncs"] == {"succeeded": 1, "failed": 1, "skipped": 1, "gone": 1}
    assert (health["running"], health["concurrency"]) == (1, 3)


# Real worker processes ---------------------------------------------------------------------


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"accounts": 3, "regions_per_account": 5}


@pytest.fixture
def queue(pg_engine: Engine) -> Engine:
    """The session database, its task queue emptied too (a killed worker's jobs stay)."""
    with pg_engine.begin() as connection:
        connection.exec_driver_sql("TRUNCATE procrastinate_jobs CASCADE")
    return pg_engine


def worker_metrics(worker: WorkerProcess) -> dict[str, float]:
    status, content_type, body = http_get(worker.port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    return metric_samples(body.decode())


def worker_health(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    status, content_type, body = http_get(worker.port, "/healthz")
    assert content_type == "application/json"
    return status, json.loads(body)


@pytest.mark.slow
def test_a_workers_metrics_count_the_fleet_and_pass_promtool(
    start_worker: Callable[..., WorkerProcess],
    queue: Engine,
    pg_url: URL,
    fake: FakeKaleyra,
) -> None:
    keys = add_fleet_accounts(queue, fake, [1, 2, 3])
    with queue.begin() as connection:
        set_paused(connection, "acct-3", paused=True)
    worker = start_worker(pg_url, fake, REGIONSYNC_SCHEDULE="1h", **keys)

    # Read before the worker took its first job: two accounts due, none synced yet.
    found = worker_metrics(worker)
    assert found["regionsync_fleet_accounts"] == 3
    assert found["regionsync_fleet_accounts_paused"] == 1
    assert found["regionsync_fleet_accounts_due"] == 2
    assert found["regionsync_fleet_accounts_overdue"] == 0
    assert found["regionsync_fleet_oldest_overdue_seconds"] == 0
    assert found["regionsync_fleet_database_up"] == 1
    assert found["regionsync_fleet_concurrency"] == 4
    assert found["regionsync_schedule_period_seconds"] == 3600
    status, health = worker_health(worker)
    assert (status, health["status"], health["due"], health["overdue"]) == (200, "ok", 2, 0)

    def synced() -> bool:
        return worker_metrics(worker)['regionsync_sync_runs_total{status="succeeded"}'] == 2

    worker.wait_until(synced, "both unpaused accounts synced")
    worker.wait_until(
        lambda: worker_metrics(worker)["regionsync_fleet_accounts_due"] == 0,
        "the next read of the fleet's figures",
    )
    text = http_get(worker.port, "/metrics")[2].decode()
    found = metric_samples(text)
    assert found['regionsync_fleet_jobs{status="todo"}'] == 0
    assert found['regionsync_fleet_jobs{status="doing"}'] == 0
    assert found["regionsync_fleet_accounts_failing"] == 0
    assert found["regionsync_fleet_jobs_dispatched_total"] == 2  # once each
    assert found['regionsync_region_changes_total{change="added"}'] == 10
    assert found["regionsync_fleet_syncs_running"] == 0
    assert missing_names(text, queries("fleet")) == []
    if PROMTOOL is not None:
        checked = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    worker.send(signal.SIGTERM)
    assert worker.exit_code(timeout=30) == 0


@pytest.mark.slow
def test_accounts_no_worker_synced_for_three_periods_are_overdue_and_healthz_says_behind(
    start_worker: Callable[..., WorkerProcess],
    invoke: Invoke,
    queue: Engine,
    pg_url: URL,
    fake: FakeKaleyra,
) -> None:
    keys = add_fleet_accounts(queue, fake, [1, 2])
    time.sleep(6.5)  # three periods of 2 s, and a half, with no worker running
    env = {**url_env(pg_url), "REGIONSYNC_SCHEDULE": "2s"}
    shown = json.loads(invoke("status", "--json", "--max-age", "1h", env=env).stdout)
    assert shown["overdue_accounts"] == 2
    assert all(a["overdue"] and a["due_for_seconds"] > 6 for a in shown["accounts"])
    table = invoke("status", "--max-age", "1h", env=env).stdout
    assert "overdue: 2 account(s) due for longer than their period" in table

    worker = start_worker(pg_url, fake, REGIONSYNC_SCHEDULE="2s", **keys)
    status, health = worker_health(worker)  # as read before its first job
    assert (status, health["status"], health["behind"], health["overdue"]) == (503, "behind", 2, 2)
    assert health["oldest_overdue"]["account"] in ("acct-1", "acct-2")
    assert health["oldest_overdue"]["due_for_seconds"] > 6
    found = worker_metrics(worker)
    assert found["regionsync_fleet_accounts_overdue"] == 2
    assert found["regionsync_fleet_oldest_overdue_seconds"] > 6

    worker.wait_until(lambda: worker_health(worker)[0] == 200, "/healthz 200 once synced")
    assert worker_health(worker)[1]["behind"] == 0
    worker.send(signal.SIGTERM)
    assert worker.exit_code(timeout=30) == 0


# The fleet's alert rules ------------------------------------------------------------------


@needs_promtool
def test_the_fleet_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    for command in (
        ["check", "rules", str(FLEET_ALERTS)],
        ["test", "rules", str(FLEET_ALERT_TESTS)],
    ):
        done = subprocess.run([PROMTOOL, *command], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_fleet_rule_aggregates_over_replicas_or_selects_the_workers_job() -> None:
    """Each replica reports the same fleet figures: a rule on them must take one value per
    job (max/sum by job), or it fires once per replica."""
    for where, expr in queries("fleet"):
        if where.startswith("alert") and "regionsync_fleet_" in expr:
            assert "by (job)" in expr, where
