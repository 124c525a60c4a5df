"""Run retention (docs/operations.md, *Run retention*): old runs that wrote nothing go, in
small batches; runs that anything references, failed runs and each account's latest success
stay; readers never wait on it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync.daemon.loop import Daemon
from regionsync.daemon.metrics import DaemonMetrics
from regionsync.daemon.schedule import parse_schedule
from regionsync.fleet.app import make_app
from regionsync.settings import DEFAULT_RUNS_RETENTION, Settings
from regionsync.store.retention import RunPruner, prune_runs
from regionsync.store.tables import (
    applied_answers,
    notification_deliveries,
    region_history,
    regions,
    sync_runs,
)
from regionsync.sync import Guard
from tests.support import settings_for
from tests.support.cli import Invoke, assert_one_line_error
from tests.support.sources import ListSource, region

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
RETENTION = timedelta(days=30)


def add_run(
    engine: Engine,
    account: str,
    age: timedelta,
    status: str = "succeeded",
    **counts: int,
) -> int:
    """A run of ``account`` that started ``age`` before NOW; counts zero unless given.
    Tests add runs in the order they start, as syncs do: run ids follow start times."""
    started = NOW - age
    with engine.begin() as connection:
        run_id: int = connection.execute(
            sync_runs.insert()
            .values(
                account=account,
                started_at=started,
                finished_at=None if status == "running" else started + timedelta(seconds=1),
                status=status,
                trigger="worker",
                source="test",
                **{
                    name: counts.get(name, 0)
                    for name in ("fetched", "added", "changed", "unchanged", "removed")
                },
                restored=counts.get("restored", 0),
                rejected=counts.get("rejected", 0),
            )
            .returning(sync_runs.c.id)
        ).scalar_one()
    return run_id


def remaining(engine: Engine) -> set[int]:
    with engine.connect() as connection:
        return set(connection.execute(sa.select(sync_runs.c.id)).scalars())


def prune(engine: Engine, **options: Any) -> Any:
    return prune_runs(engine, RETENTION, at=NOW, max_seconds=None, **options)


def test_old_runs_that_wrote_nothing_go_and_recent_ones_stay(engine: Engine) -> None:
    old = [add_run(engine, "a", age * DAY) for age in (40, 35)]
    old.append(add_run(engine, "a", 33 * DAY, "skipped"))
    old.append(add_run(engine, "a", 32 * DAY, rejected=2, unchanged=5, fetched=7))
    old.append(add_run(engine, "a", 31 * DAY))
    recent = [add_run(engine, "a", age * DAY) for age in (29, 1)]

    report = prune(engine)

    assert remaining(engine) == set(recent)
    assert (report.deleted, report.stopped, report.complete) == (len(old), "done", True)
    assert prune(engine).deleted == 0


def test_runs_that_wrote_failed_or_are_running_stay(engine: Engine) -> None:
    kept = [
        add_run(engine, "a", 50 * DAY, "failed"),
        add_run(engine, "a", 49 * DAY, "running"),
        add_run(engine, "a", 48 * DAY, added=1),
        add_run(engine, "a", 47 * DAY, changed=1),  # an untracked field: no history row
        add_run(engine, "a", 46 * DAY, removed=1),
        add_run(engine, "a", 45 * DAY, restored=1),
    ]
    gone = add_run(engine, "a", 44 * DAY)
    kept.append(add_run(engine, "a", 1 * DAY))

    assert prune(engine).deleted == 1
    assert remaining(engine) == set(kept)
    assert gone not in remaining(engine)


def test_a_run_that_history_a_delivery_or_the_shortcut_references_stays(engine: Engine) -> None:
    # Zero counts on purpose: only the references keep these runs.
    in_history, delivered, remembered = (add_run(engine, "a", age * DAY) for age in (60, 59, 58))
    unreferenced = add_run(engine, "a", 57 * DAY)
    latest = add_run(engine, "a", 1 * DAY)
    moment = NOW - 60 * DAY
    with engine.begin() as connection:
        connection.execute(
            regions.insert().values(
                account="a",
                id="r1",
                carrier_enabled=True,
                raw={"id": "r1"},
                first_seen_at=moment,
                updated_at=moment,
            )
        )
        connection.execute(
            region_history.insert().values(
                account="a",
                region_id="r1",
                sync_run_id=in_history,
                changed_at=moment,
                change="added",
                carrier_enabled_after=True,
            )
        )
        connection.execute(
            notification_deliveries.insert().values(
                id="msg_1",
                account="a",
                sync_run_id=delivered,
                part=1,
                parts=1,
                created_at=moment,
                status="delivered",
                attempts=1,
                next_attempt_at=moment,
                payload={"run": delivered},
            )
        )
        connection.execute(
            applied_answers.insert().values(
                account="a", digest="0" * 64, sync_run_id=remembered, fetched=1, rejected=0
            )
        )

    assert prune(engine).deleted == 1
    assert remaining(engine) == {in_history, delivered, remembered, latest}
    assert unreferenced not in remaining(engine)


def test_each_accounts_latest_success_and_what_follows_it_stay_however_old(engine: Engine) -> None:
    # "quiet" last synced 34 days ago; "busy" syncs still, which keeps nothing of "quiet".
    add_run(engine, "quiet", 50 * DAY)
    add_run(engine, "quiet", 45 * DAY, "skipped")
    add_run(engine, "busy", 45 * DAY)
    kept = [
        add_run(engine, "quiet", 40 * DAY),  # its latest success
        add_run(engine, "quiet", 35 * DAY, "skipped"),  # after it: status's last run
        add_run(engine, "quiet", 34 * DAY, "failed"),
        add_run(engine, "busy", 1 * DAY),
    ]

    assert prune(engine).deleted == 3
    assert remaining(engine) == set(kept)


def test_a_batch_deletes_at_most_its_size_in_one_statement(engine: Engine) -> None:
    old = [add_run(engine, "a", (60 - i) * DAY) for i in range(25)]
    recent = add_run(engine, "a", 1 * DAY)
    deleted_per_statement: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deleted_per_statement.append(cursor.rowcount)

    sa.event.listen(engine, "after_cursor_execute", count)
    try:
        report = prune(engine, batch_size=7)
    finally:
        sa.event.remove(engine, "after_cursor_execute", count)

    assert deleted_per_statement == [7, 7, 7, 4]
    assert (report.deleted, report.batches, report.examined) == (len(old), 4, len(old))
    assert remaining(engine) == {recent}


def test_a_pass_ends_at_its_time_bound_and_the_next_goes_on_from_its_cursor(
    engine: Engine,
) -> None:
    old = [add_run(engine, "a", (60 - i) * DAY) for i in range(10)]
    add_run(engine, "a", 1 * DAY)

    stopped = prune_runs(engine, RETENTION, at=NOW, max_seconds=0)
    assert (stopped.stopped, stopped.deleted, stopped.cursor) == ("time", 0, 0)

    first = prune(engine, after=old[4])  # as a pass that ended there would go on
    assert first.deleted == 5
    assert remaining(engine) >= set(old[:5])


def test_the_pruner_goes_on_from_where_it_ended_and_rescans_from_the_start(
    engine: Engine,
) -> None:
    paused_success = add_run(engine, "paused", 50 * DAY)  # the account's latest: kept
    add_run(engine, "a", 40 * DAY)
    add_run(engine, "a", 1 * DAY)
    pruner = RunPruner(engine, RETENTION, max_seconds=None, rescan_every=timedelta(0))

    report = pruner.prune(at=NOW)
    assert report is not None
    assert report.deleted == 1
    assert pruner.cursor >= paused_success
    # The account is resumed: its old success is no longer its latest, behind the cursor.
    add_run(engine, "paused", 1 * DAY)

    again = pruner.prune(at=NOW)  # caught up, rescan due (every 0 s): from the first run
    assert again is not None
    assert again.deleted == 1
    assert paused_success not in remaining(engine)


def test_a_pruner_that_cannot_reach_the_database_logs_and_returns_none(tmp_path: Any) -> None:
    from regionsync import store

    settings = settings_for(URL.create("sqlite", database=str(tmp_path / "unmigrated.db")))
    engine = store.create_engine(settings)
    try:
        pruner = RunPruner.from_settings(engine, settings)
        assert pruner is not None
        assert pruner.prune() is None  # no sync_runs table: logged, not raised
    finally:
        engine.dispose()


# PostgreSQL: beside readers and locks ------------------------------------------------------


def test_a_reader_idle_in_a_transaction_never_holds_up_a_prune(
    pg_engine: Engine, pg_url: URL
) -> None:
    old = [add_run(pg_engine, "a", (60 - i) * DAY) for i in range(30)]
    add_run(pg_engine, "a", 1 * DAY)
    reader = sa.create_engine(pg_url)
    try:
        with reader.connect() as connection:
            connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            seen = connection.execute(sa.text("SELECT count(*) FROM sync_runs")).scalar_one()
            started = time.monotonic()
            report = prune(pg_engine, batch_size=10)
            took = time.monotonic() - started
            # The analyst's snapshot is untouched, and the analyst waited for nothing.
            again = connection.execute(sa.text("SELECT count(*) FROM sync_runs")).scalar_one()
            assert seen == again == len(old) + 1
    finally:
        reader.dispose()
    assert (report.deleted, report.stopped) == (len(old), "done")
    assert took < 5


def test_a_locked_run_ends_the_pass_at_once_and_a_later_pass_finishes(
    pg_engine: Engine, pg_url: URL
) -> None:
    old = [add_run(pg_engine, "a", (60 - i) * DAY) for i in range(20)]
    add_run(pg_engine, "a", 1 * DAY)
    holder = sa.create_engine(pg_url)
    try:
        with holder.connect() as connection:
            connection.execute(
                sa.text("SELECT id FROM sync_runs WHERE id = :id FOR UPDATE"), {"id": old[15]}
            )
            started = time.monotonic()
            blocked = prune(pg_engine, batch_size=10, lock_wait=timedelta(milliseconds=200))
            took = time.monotonic() - started
            connection.rollback()
    finally:
        holder.dispose()
    assert (blocked.stopped, blocked.deleted, blocked.cursor) == ("lock", 10, old[9])
    assert took < 3
    assert prune(pg_engine, after=blocked.cursor).deleted == 10
    assert len(remaining(pg_engine)) == 1


def test_a_run_referenced_while_its_batch_runs_is_kept_and_the_pass_ends(
    pg_engine: Engine, pg_url: URL
) -> None:
    old = add_run(pg_engine, "a", 60 * DAY)
    add_run(pg_engine, "a", 1 * DAY)
    writer = sa.create_engine(pg_url)
    moment = NOW - 60 * DAY
    try:
        with writer.connect() as connection:
            # A delivery referencing the old run, not yet committed: the prune's NOT EXISTS
            # cannot see it, and the foreign key makes the DELETE wait, then refuse.
            connection.execute(
                notification_deliveries.insert().values(
                    id="msg_late",
                    account="a",
                    sync_run_id=old,
                    part=1,
                    parts=1,
                    created_at=moment,
                    status="pending",
                    attempts=0,
                    next_attempt_at=moment,
                    payload={},
                )
            )
            outcome: list[Any] = []
            pruning = threading.Thread(
                target=lambda: outcome.append(prune(pg_engine, lock_wait=timedelta(seconds=5)))
            )
            pruning.start()
            time.sleep(0.5)
            connection.commit()
            pruning.join(10)
    finally:
        writer.dispose()
    assert len(outcome) == 1
    assert (outcome[0].stopped, outcome[0].deleted) == ("reference", 0)
    assert old in remaining(pg_engine)
    assert prune(pg_engine).deleted == 0  # now the reference is seen, and kept


# The setting and the processes that prune -------------------------------------------------


def test_the_retention_defaults_to_30_days_and_off_keeps_everything(pg_url: URL) -> None:
    assert settings_for(pg_url).runs_retention == DEFAULT_RUNS_RETENTION == 30 * DAY
    assert settings_for(pg_url, REGIONSYNC_RUNS_RETENTION="12h").runs_retention == timedelta(
        hours=12
    )
    off = settings_for(pg_url, REGIONSYNC_RUNS_RETENTION="off")
    assert off.runs_retention is None
    assert RunPruner.from_settings(sa.create_engine(pg_url), off) is None


@pytest.mark.parametrize("value", ["59m", "0", "0d", "30 days", "never", "-1d", "36501d"])
def test_a_bad_retention_is_one_clear_error(invoke: Invoke, value: str) -> None:
    done = invoke("status", env={"REGIONSYNC_RUNS_RETENTION": value})
    assert_one_line_error(done, 2, "REGIONSYNC_RUNS_RETENTION", "from 1h", "off")


def test_the_daemon_prunes_after_a_tick_at_most_once_an_hour(engine: Engine) -> None:
    first_old = add_run(engine, "default", 40 * DAY)
    daemon = Daemon(
        engine,
        ListSource([region("r1")]),
        schedule=parse_schedule("1h"),
        guard=Guard(),
        metrics=DaemonMetrics(max_age=timedelta(hours=3)),
        period=timedelta(hours=1),
        pruner=RunPruner(engine, RETENTION, max_seconds=None),
    )
    daemon.sync_once()  # a success now: the old run is no longer the latest
    assert first_old not in remaining(engine)

    second_old = add_run(engine, "default", 39 * DAY)
    daemon.sync_once()
    assert second_old in remaining(engine)  # within the hour: not pruned again

    assert daemon._pruned_at is not None
    daemon._pruned_at -= 3600  # an hour later
    daemon.sync_once()
    assert second_old not in remaining(engine)


def test_the_fleet_prunes_in_a_periodic_task_of_its_own(pg_engine: Engine, pg_url: URL) -> None:
    old = add_run(pg_engine, "a", 40 * DAY)
    add_run(pg_engine, "a", 1 * DAY)
    settings = settings_for(pg_url)
    app, _stats = make_app(settings, pg_engine, period=timedelta(minutes=15))
    task = app.tasks["regionsync.prune_runs"]
    assert task.queueing_lock == "prune"
    periodic = [p for p in app.periodic_registry.periodic_tasks.values() if p.task is task]
    assert [p.cron for p in periodic] == ["*/10 * * * *"]

    task(timestamp=0)
    assert old not in remaining(pg_engine)

    off = Settings.from_env(
        {
            "REGIONSYNC_DATABASE_URL": pg_url.render_as_string(False),
            "REGIONSYNC_RUNS_RETENTION": "off",
        }
    )
    app_off, _ = make_app(off, pg_engine, period=timedelta(minutes=15))
    assert "regionsync.prune_runs" not in app_off.tasks
