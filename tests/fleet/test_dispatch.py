"""The dispatcher (docs/fleet.md): which accounts are due, spread over the period, and their
sync jobs deferred once, on a real PostgreSQL database with procrastinate's tables.

No worker runs here: the tests call :class:`Dispatcher` and :func:`dispatch_due` at chosen
moments, with runs inserted at chosen times, and read ``procrastinate_jobs`` back.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from procrastinate import App
from sqlalchemy.engine import URL, Engine

from regionsync.daemon.schedule import parse_schedule
from regionsync.fleet.app import DISPATCH_LOCK_KEY, SYNC_TASK, dispatch_due, make_app
from regionsync.fleet.dispatch import Dispatcher, job_lock, latest_due, offset
from regionsync.store.accounts import AccountRow, add_account, set_paused
from regionsync.store.tables import sync_runs
from tests.support import settings_for

PERIOD = timedelta(minutes=15)
#: A moment to dispatch at: any would do, the runs are placed around it.
NOON = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
BERLIN = "Europe/Berlin"
QUEUE_TABLES = "procrastinate_jobs, procrastinate_periodic_defers, procrastinate_events"


@pytest.fixture
def database(pg_engine: Engine) -> Engine:
    """The session database, emptied, its queue too."""
    with pg_engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {QUEUE_TABLES} RESTART IDENTITY CASCADE")
    return pg_engine


@pytest.fixture
def app(pg_url: URL, database: Engine) -> App:
    """The fleet's app (never opened: :func:`dispatch_due` defers on its own transaction)."""
    settings = settings_for(pg_url, REGIONSYNC_SCHEDULE="15m")
    return make_app(settings, database, period=PERIOD)[0]


def dispatcher(schedule: str = "15m", timezone: str = "UTC") -> Dispatcher:
    return Dispatcher(schedule, timezone, "default")


def add(database: Engine, *names: str, schedule: str | None = None) -> None:
    with database.begin() as connection:
        for name in names:
            add_account(connection, AccountRow(name, "SID", pod="in", schedule=schedule))


def ran(database: Engine, name: str, started_at: datetime, status: str = "succeeded") -> None:
    """A run of ``name`` that started at ``started_at``."""
    with database.begin() as connection:
        connection.execute(
            sync_runs.insert().values(
                account=name,
                started_at=started_at,
                finished_at=started_at + timedelta(seconds=1),
                status=status,
                trigger="worker",
                source="test",
            )
        )


def due(database: Engine, now: datetime, **options: str) -> list[str]:
    with database.connect() as connection:
        return dispatcher(**options).due(connection, SYNC_TASK, now).accounts


def queued(database: Engine) -> list[dict[str, Any]]:
    with database.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT task_name, queue_name, lock, queueing_lock, args, status"
                " FROM procrastinate_jobs ORDER BY id"
            )
        ).mappings()
        return [dict(row) for row in rows]


def slot(name: str, now: datetime) -> datetime:
    """``name``'s latest due time at ``now`` on the 15-minute schedule."""
    found = latest_due(parse_schedule("15m"), name, now)
    assert found is not None
    return found


def test_offsets_spread_a_thousand_names_over_the_period() -> None:
    names = [f"account-{i:04d}" for i in range(1000)]
    seconds = [offset(name, PERIOD).total_seconds() for name in names]
    assert all(0 <= s < PERIOD.total_seconds() and s == int(s) for s in seconds)
    per_second = Counter(seconds)
    assert max(per_second.values()) <= 8  # never a burst: about one a second
    assert len(per_second) > 500
    per_minute = Counter(int(s) // 60 for s in seconds)
    assert len(per_minute) == 15
    assert all(40 <= n <= 100 for n in per_minute.values()), per_minute  # 67 each on average
    # Stable: a name keeps its place, whichever replica computes it.
    assert [offset(name, PERIOD).total_seconds() for name in names] == seconds


def test_latest_due_of_an_interval_is_the_accounts_own_slot_in_each_period() -> None:
    schedule = parse_schedule("15m")
    for name in ("acme", "globex", "initech"):
        latest = slot(name, NOON)
        assert NOON - PERIOD < latest <= NOON
        assert latest_due(schedule, name, latest) == latest  # due at the slot itself
        assert latest_due(schedule, name, latest - timedelta(microseconds=1)) == latest - PERIOD
        assert latest_due(schedule, name, NOON + 3 * PERIOD) == latest + 3 * PERIOD
    assert len({slot(name, NOON) for name in ("acme", "globex", "initech")}) == 3


def test_an_account_is_due_once_each_period(database: Engine) -> None:
    add(database, "acme")
    assert due(database, NOON) == ["acme"]  # never synced: at once

    latest = slot("acme", NOON)
    ran(database, "acme", latest + timedelta(seconds=2))
    assert due(database, NOON) == []
    assert due(database, latest + PERIOD - timedelta(seconds=1)) == []
    assert due(database, latest + PERIOD) == ["acme"]
    assert due(database, latest + 5 * PERIOD) == ["acme"]  # late or not: one sync owed, not five


def test_a_failed_run_waits_for_the_next_period_and_a_skipped_one_does_not(
    database: Engine,
) -> None:
    add(database, "refused", "squatted")
    latest = slot("refused", NOON)
    ran(database, "refused", latest + timedelta(seconds=1), status="failed")
    ran(database, "squatted", slot("squatted", NOON) + timedelta(seconds=1), status="skipped")
    assert due(database, NOON) == ["squatted"]  # a refused key is not hammered
    assert due(database, latest + PERIOD) == ["refused", "squatted"]


def test_paused_accounts_are_never_due(database: Engine) -> None:
    add(database, "acme", "globex")
    with database.begin() as connection:
        set_paused(connection, "globex", paused=True)
    assert due(database, NOON) == ["acme"]
    assert due(database, NOON + 10 * PERIOD) == ["acme"]


def test_with_no_account_rows_the_settings_account_is_due(database: Engine) -> None:
    assert due(database, NOON) == ["default"]
    ran(database, "default", slot("default", NOON) + timedelta(seconds=1))
    assert due(database, NOON) == []
    assert due(database, NOON + PERIOD) == ["default"]

    add(database, "acme")  # with rows, the settings' account is none of them
    assert due(database, NOON + PERIOD) == ["acme"]


def test_crontab_schedules_are_due_at_their_fire_times(database: Engine) -> None:
    every_five = parse_schedule("*/5 * * * *")
    assert latest_due(every_five, "any", NOON + timedelta(minutes=7, seconds=30)) == (
        NOON + timedelta(minutes=5)
    )
    assert latest_due(every_five, "any", NOON + timedelta(minutes=5)) == (
        NOON + timedelta(minutes=5)
    )
    # In REGIONSYNC_TIMEZONE: 03:00 in Berlin is 02:00 UTC in December.
    berlin = parse_schedule("0 3 * * *", BERLIN)
    assert latest_due(berlin, "any", NOON) == datetime(2026, 12, 8, 2, 0, tzinfo=UTC)

    add(database, "fives", schedule="*/5 * * * *")
    add(database, "nightly", schedule="0 3 * * *")
    ran(database, "fives", NOON + timedelta(minutes=4, seconds=59))
    ran(database, "nightly", datetime(2026, 12, 8, 2, 0, 5, tzinfo=UTC))
    # An account's own schedule is read in the settings' time zone.
    assert (
        due(database, NOON + timedelta(minutes=4, seconds=59, microseconds=1), timezone=BERLIN)
        == []
    )
    assert due(database, NOON + timedelta(minutes=5, seconds=10), timezone=BERLIN) == ["fives"]
    assert due(database, datetime(2026, 12, 9, 1, 59, tzinfo=UTC), timezone=BERLIN) == ["fives"]
    assert due(database, datetime(2026, 12, 9, 2, 0, tzinfo=UTC), timezone=BERLIN) == [
        "fives",
        "nightly",
    ]
    assert due(database, NOON + timedelta(minutes=1), timezone="UTC") == ["nightly"]  # 03:00 UTC


def test_dispatch_defers_one_job_per_due_account_carrying_its_name_only(
    database: Engine, app: App
) -> None:
    add(database, "acme", "globex", "initech")
    with database.begin() as connection:
        set_paused(connection, "initech", paused=True)
    assert dispatch_due(app, database, dispatcher(), NOON) == 2
    assert queued(database) == [
        {
            "task_name": SYNC_TASK,
            "queue_name": "regionsync",
            "lock": job_lock(name),
            "queueing_lock": job_lock(name),
            "args": {"account": name},
            "status": "todo",
        }
        for name in ("acme", "globex")
    ]


def test_dispatching_twice_defers_nothing_the_second_time(database: Engine, app: App) -> None:
    add(database, "acme", "globex")
    assert dispatch_due(app, database, dispatcher(), NOON) == 2
    assert dispatch_due(app, database, dispatcher(), NOON) == 0
    # A period later, its job still waiting: still one job per account.
    assert dispatch_due(app, database, dispatcher(), NOON + PERIOD) == 0
    with database.connect() as connection:
        found = dispatcher().due(connection, SYNC_TASK, NOON + PERIOD)
    assert (found.accounts, found.queued, found.considered) == ([], 2, 2)
    assert len(queued(database)) == 2

    # Running is queued too; once its job is gone, the account is due again.
    with database.begin() as connection:
        connection.execute(sa.text("UPDATE procrastinate_jobs SET status = 'doing'"))
    assert dispatch_due(app, database, dispatcher(), NOON) == 0
    with database.begin() as connection:
        connection.execute(
            sa.text("DELETE FROM procrastinate_jobs WHERE args->>'account' = 'acme'")
        )
    assert dispatch_due(app, database, dispatcher(), NOON) == 1
    assert sorted(job["args"]["account"] for job in queued(database)) == ["acme", "globex"]


def test_a_second_dispatcher_at_the_same_moment_defers_nothing(database: Engine, app: App) -> None:
    add(database, "acme")
    with database.connect() as other, other.begin():
        other.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": DISPATCH_LOCK_KEY})
        assert dispatch_due(app, database, dispatcher(), NOON) == 0
    assert queued(database) == []
    assert dispatch_due(app, database, dispatcher(), NOON) == 1
