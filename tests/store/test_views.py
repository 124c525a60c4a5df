"""The analysts' views: hand-made histories with known answers, real syncs, a property
against a replay of the history, the data dictionary, and migrating 0002 down and up.

The read-only role is tested in ``test_grants.py``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import hypothesis.strategies as st
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from sqlalchemy.engine import Engine

from regionsync.errors import PermanentSourceError
from regionsync.settings import DEFAULT_ACCOUNT
from regionsync.store.models import Base
from regionsync.store.schema import current_revision, migrate
from regionsync.store.tables import accounts
from regionsync.sync import run_sync
from tests.support import as_utc
from tests.support.migrations import downgrade
from tests.support.seed import (
    NAMES,
    SEEDED_RUNS,
    Event,
    Seeded,
    Values,
    seed,
    state_at,
    write_events,
)
from tests.support.sources import FailingSource, ListSource, region

VIEWS = ["region_status_intervals", "active_regions", "region_changes", "sync_health"]
PG_VIEWS = [*VIEWS, "region_status_daily"]


def query(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [dict(row) for row in c.execute(sa.text(sql), params).mappings()]


@pytest.fixture
def seeded(engine: Engine) -> Seeded:
    return seed(engine, datetime.now(UTC).replace(microsecond=0))


def test_sync_health_has_no_row_on_an_empty_database(engine: Engine) -> None:
    """One row per account: with no account added and none that ran, there is none."""
    assert query(engine, "SELECT * FROM sync_health") == []


def test_sync_health_has_one_row_per_account_with_its_own_counts(engine: Engine) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    seed(engine, now, account="brand-a")
    write_events(
        engine,
        [
            (now - timedelta(days=3), "a", "added", (True, "EUROPE")),
            (now - timedelta(days=2), "b", "added", (True, "EUROPE")),
            (now - timedelta(days=1), "a", "removed", None),
        ],
        first_run=SEEDED_RUNS + 1,
        account="brand-b",
    )
    rows = query(engine, "SELECT * FROM sync_health ORDER BY account")
    got = [
        (
            r["account"],
            r["last_run_id"],
            r["last_run_status"],
            r["consecutive_failures"],
            r["active_regions"],
            r["removed_regions"],
            as_utc(r["last_success_at"]),
            r["paused_at"],
        )
        for r in rows
    ]
    assert got == [
        ("brand-a", SEEDED_RUNS, "failed", 2, 2, 1, now - timedelta(days=5, seconds=-2), None),
        (
            "brand-b",
            SEEDED_RUNS + 3,
            "succeeded",
            0,
            1,
            1,
            now - timedelta(days=1, seconds=-2),
            None,
        ),
    ]


def test_sync_health_lists_the_added_accounts_even_before_they_run(engine: Engine) -> None:
    """Once accounts has rows it names the accounts; paused_at comes from it."""
    now = datetime.now(UTC).replace(microsecond=0)
    seed(engine, now, account="brand-a")
    with engine.begin() as c:
        c.execute(
            accounts.insert(),
            [
                {
                    "name": "brand-a",
                    "sid": "SID-A",
                    "pod": "in",
                    "created_at": now,
                    "paused_at": None,
                },
                {
                    "name": "brand-c",
                    "sid": "SID-C",
                    "pod": "na",
                    "created_at": now,
                    "paused_at": now,
                },
            ],
        )
    rows = query(engine, "SELECT * FROM sync_health ORDER BY account")
    got = [
        (r["account"], r["last_run_id"], r["active_regions"], as_utc(r["paused_at"])) for r in rows
    ]
    assert got == [("brand-a", SEEDED_RUNS, 2, None), ("brand-c", None, 0, now)]


def test_every_view_starts_with_account_and_keeps_accounts_apart(engine: Engine) -> None:
    """Two accounts with the same story and the same region ids: each view gives each
    account what it gives one account alone; the views join by account."""
    now = datetime.now(UTC).replace(microsecond=0)
    seed(engine, now, account="brand-a")
    seed(engine, now, account="brand-b", first_run=SEEDED_RUNS + 1)
    views = PG_VIEWS if engine.dialect.name == "postgresql" else VIEWS
    inspector = sa.inspect(engine)
    alone = {
        "region_status_intervals": 6,
        "active_regions": 2,
        "region_changes": 8,
        "sync_health": 1,
        "region_status_daily": 61 + 61 + 41,
    }
    for view in views:
        assert inspector.get_columns(view)[0]["name"] == "account", view
        counted = query(engine, f"SELECT account, count(*) AS n FROM {view} GROUP BY account")
        assert sorted((r["account"], r["n"]) for r in counted) == [
            ("brand-a", alone[view]),
            ("brand-b", alone[view]),
        ], view
    runs = query(engine, "SELECT account, sync_run_id, sync_started_at FROM region_changes")
    assert {r["account"] for r in runs if r["sync_run_id"] > SEEDED_RUNS} == {"brand-b"}
    assert {r["account"] for r in runs if r["sync_run_id"] <= SEEDED_RUNS} == {"brand-a"}


def test_sync_health_after_failures(engine: Engine, seeded: Seeded) -> None:
    [row] = query(engine, "SELECT * FROM sync_health")
    assert row["account"] == DEFAULT_ACCOUNT
    assert row["last_run_id"] == 10
    assert row["last_run_status"] == "failed"
    assert row["last_run_error"] == "failed for the test"
    assert as_utc(row["last_success_at"]) == seeded.day(-5) + timedelta(seconds=2)
    assert row["last_success_age_seconds"] == pytest.approx(5 * 86400 - 2, abs=120)
    assert row["consecutive_failures"] == 2  # the skipped run counts neither way
    assert (row["active_regions"], row["removed_regions"]) == (2, 1)


def test_active_regions_are_those_present_with_since_when(engine: Engine, seeded: Seeded) -> None:
    rows = query(engine, "SELECT * FROM active_regions ORDER BY region_id")
    assert [(r["region_id"], r["display_name"], bool(r["carrier_enabled"])) for r in rows] == [
        ("a", "Alpha", True),
        ("c", "Charlie", True),
    ]
    assert [as_utc(r["present_since"]) for r in rows] == [seeded.day(-60), seeded.day(-25)]


def test_region_changes_reads_newest_first_with_the_run(engine: Engine, seeded: Seeded) -> None:
    rows = query(engine, "SELECT * FROM region_changes")
    assert [(r["region_id"], r["change"]) for r in rows] == [
        ("a", "changed"),
        ("b", "removed"),
        ("a", "changed"),
        ("c", "restored"),
        ("c", "removed"),
        ("c", "added"),
        ("b", "added"),
        ("a", "added"),
    ]
    newest = rows[0]
    assert newest["display_name"] == "Alpha"
    assert (bool(newest["carrier_enabled_before"]), bool(newest["carrier_enabled_after"])) == (
        False,
        True,
    )
    assert newest["sync_run_id"] == 7
    assert (newest["sync_trigger"], newest["sync_source"]) == ("daemon", "test")
    assert as_utc(newest["sync_started_at"]) == seeded.day(-5)


def test_status_intervals_at_the_boundaries(engine: Engine, seeded: Seeded) -> None:
    rows = query(
        engine,
        "SELECT region_id, carrier_enabled, hosting_region, valid_from, valid_to"
        " FROM region_status_intervals ORDER BY region_id, valid_from",
    )
    got = [
        (r["region_id"], bool(r["carrier_enabled"]), as_utc(r["valid_from"]), as_utc(r["valid_to"]))
        for r in rows
    ]
    d = seeded.day
    assert got == [
        ("a", True, d(-60), d(-20)),
        ("a", False, d(-20), d(-5)),
        ("a", True, d(-5), None),
        ("b", True, d(-60), d(-10)),  # the removal ends it
        ("c", False, d(-40), d(-32)),  # the removal ends it...
        ("c", True, d(-25), None),  # ...and the restoration starts a new one
    ]


def test_status_intervals_carry_the_name_and_hosting_across_a_restore(engine: Engine) -> None:
    def day(n: int) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n)

    events: list[Event] = [
        (day(0), "r1", "added", (True, "EUROPE")),
        (day(2), "r1", "changed", (False, "EUROPE")),
        (day(5), "r1", "removed", None),
        (day(9), "r1", "restored", (False, "NORTH_AMERICA")),
    ]
    write_events(engine, events, names={"r1": "Region One"})
    with engine.connect() as c:
        rows = c.exec_driver_sql(
            "SELECT region_id, display_name, carrier_enabled, hosting_region, valid_from, valid_to"
            " FROM region_status_intervals ORDER BY valid_from"
        ).all()
    got = [(r[0], r[1], bool(r[2]), r[3], as_utc(r[4]), as_utc(r[5])) for r in rows]
    assert got == [
        ("r1", "Region One", True, "EUROPE", day(0), day(2)),
        ("r1", "Region One", False, "EUROPE", day(2), day(5)),
        ("r1", "Region One", False, "NORTH_AMERICA", day(9), None),
    ]


def test_status_daily_has_each_day_from_first_sight_to_today(
    pg_engine: Engine,
) -> None:
    seeded = seed(pg_engine, datetime.now(UTC).replace(microsecond=0))
    rows = query(
        pg_engine,
        "SELECT day, region_id, display_name, present, carrier_enabled, hosting_region"
        " FROM region_status_daily ORDER BY region_id, day",
    )
    today = seeded.now.date()
    expected = []
    for rid in sorted(NAMES):
        first = seeded.day(-60 if rid in "ab" else -40).date()
        day = first
        while day <= today:
            end_of_day = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            state = seeded.state_at(min(end_of_day - timedelta(microseconds=1), seeded.now))
            value = state.get(rid)
            expected.append(
                {
                    "day": day,
                    "region_id": rid,
                    "display_name": NAMES[rid],
                    "present": value is not None,
                    "carrier_enabled": None if value is None else value[0],
                    "hosting_region": None if value is None else value[1],
                }
            )
            day += timedelta(days=1)
    assert rows == expected
    assert len(rows) == 61 + 61 + 41


def test_every_table_view_and_column_has_a_comment(pg_engine: Engine) -> None:
    missing = query(
        pg_engine,
        """
        SELECT c.relname AS name, NULL AS column_name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v')
          AND obj_description(c.oid, 'pg_class') IS NULL
        UNION ALL
        SELECT c.relname, a.attname
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v')
          AND col_description(c.oid, a.attnum) IS NULL
          AND c.relname NOT LIKE 'procrastinate%'  -- the task queue's: procrastinate's columns
        """,
    )
    assert missing == []
    described = query(
        pg_engine,
        "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v')"
        " AND c.relname NOT LIKE 'procrastinate%'",
    )
    assert described[0]["n"] == 7 + len(PG_VIEWS)  # six tables, alembic_version, the views


# --- real syncs ------------------------------------------------------------------------


def test_no_region_is_active_before_a_sync_succeeds(engine: Engine) -> None:
    with pytest.raises(PermanentSourceError):
        run_sync(engine, FailingSource(PermanentSourceError("RCS601: channel disabled")))
    assert query(engine, "SELECT * FROM active_regions") == []
    [health] = query(engine, "SELECT * FROM sync_health")
    assert (health["last_run_status"], health["last_success_at"]) == ("failed", None)
    assert health["last_success_age_seconds"] is None
    assert health["consecutive_failures"] == 1


def test_views_follow_real_syncs(engine: Engine) -> None:
    source = ListSource([region("a"), region("b", enabled=False), region("c")])
    first = run_sync(engine, source)
    # b's record is invalid this time: held as it was. c is gone: removed.
    source.data = [region("a", hosting="EUROPE"), region("b", enabled="yes")]
    second = run_sync(engine, source)
    active = query(engine, "SELECT region_id, carrier_enabled FROM active_regions")
    assert sorted((r["region_id"], bool(r["carrier_enabled"])) for r in active) == [
        ("a", True),
        ("b", False),
    ]
    changes = query(
        engine,
        "SELECT region_id, change, hosting_region_before, hosting_region_after, sync_run_id"
        " FROM region_changes WHERE sync_run_id = :run ORDER BY region_id",
        run=second.run_id,
    )
    assert [tuple(r.values()) for r in changes] == [
        ("a", "changed", "NORTH_AMERICA", "EUROPE", second.run_id),
        ("c", "removed", "NORTH_AMERICA", None, second.run_id),
    ]

    for _ in range(2):
        with pytest.raises(PermanentSourceError):
            run_sync(engine, FailingSource(PermanentSourceError("HTTP 401: bad key")))
    [health] = query(engine, "SELECT * FROM sync_health")
    assert health["last_run_status"] == "failed"
    assert health["last_run_error"] == "HTTP 401: bad key"
    assert health["consecutive_failures"] == 2
    assert (health["active_regions"], health["removed_regions"]) == (2, 1)
    assert 0 <= float(health["last_success_age_seconds"]) < 60

    third = run_sync(engine, source)
    [health] = query(engine, "SELECT * FROM sync_health")
    assert health["consecutive_failures"] == 0
    assert (health["last_run_id"], health["last_run_status"]) == (third.run_id, "succeeded")
    assert (third.run_id or 0) > (first.run_id or 0) > 0


# --- region_status_daily at the edges of a day -------------------------------------------


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@pytest.mark.parametrize("session_zone", ["UTC", "Pacific/Kiritimati", "America/Los_Angeles"])
def test_status_daily_is_the_state_at_the_end_of_each_utc_day(
    pg_engine: Engine, session_zone: str
) -> None:
    today = datetime.now(UTC).date()
    d0 = _midnight(today - timedelta(days=7))

    def at(day: int, **time: int) -> datetime:
        return d0 + timedelta(days=day, **time)

    write_events(
        pg_engine,
        [
            (at(0), "m", "added", (True, "EUROPE")),  # exactly midnight: counts for day 0
            (at(1, hours=10), "m", "changed", (False, "EUROPE")),  # hidden by the next one
            (at(2, microseconds=-1), "m", "changed", (True, "NORTH_AMERICA")),  # day 1 still
            (at(2), "m", "removed", None),
            (at(4, hours=8), "m", "restored", (False, "NORTH_AMERICA")),
            (at(4, hours=20), "m", "removed", None),  # gone again by the end of day 4
            (at(5, hours=1), "m", "restored", (True, "EUROPE")),
            (at(5, hours=2), "m", "removed", None),
            (at(5, hours=3), "m", "restored", (True, "EUROPE")),
        ],
    )
    with pg_engine.connect() as c:
        c.exec_driver_sql(f"SET TIME ZONE '{session_zone}'")
        rows = c.execute(
            sa.text(
                "SELECT day, present, carrier_enabled, hosting_region FROM region_status_daily"
                " WHERE region_id = 'm' ORDER BY day"
            )
        ).all()
    absent = (False, None, None)
    expected_states = [
        (True, True, "EUROPE"),
        (True, True, "NORTH_AMERICA"),
        absent,
        absent,
        absent,
        (True, True, "EUROPE"),
        (True, True, "EUROPE"),
        (True, True, "EUROPE"),  # today
    ]
    assert [tuple(r) for r in rows] == [
        (today - timedelta(days=7 - n), *state) for n, state in enumerate(expected_states)
    ]


# --- a property: the history views agree with a replay of the history --------------------

TIMES_OF_DAY = [
    timedelta(0),
    timedelta(microseconds=1),
    timedelta(hours=12),
    timedelta(days=1, microseconds=-1),
]
STATES = st.one_of(st.none(), st.tuples(st.booleans(), st.sampled_from(["EU", "NA", None])))
PLANS = st.lists(
    st.tuples(st.integers(0, 6), st.sampled_from(TIMES_OF_DAY), st.tuples(STATES, STATES)),
    max_size=10,
    unique_by=lambda step: step[:2],
)


Plan = list[tuple[int, timedelta, tuple[Values | None, ...]]]


def _events(plan: Plan, d0: datetime) -> list[Event]:
    """What syncs would record for regions p and q taking the planned states in turn."""
    events: list[Event] = []
    state: dict[str, Values | None] = {}
    for day, time, wanted in sorted(plan, key=lambda step: step[:2]):
        for rid, value in zip("pq", wanted, strict=True):
            before = state.get(rid)
            if value == before:
                continue
            if value is None:
                change = "removed"
            elif before is None:
                change = "restored" if rid in state else "added"
            else:
                change = "changed"
            events.append((d0 + timedelta(days=day) + time, rid, change, value))
            state[rid] = value
    return events


def _expected_intervals(events: list[Event]) -> list[tuple[Any, ...]]:
    rows = []
    for rid in sorted({e[1] for e in events}):
        mine = [e for e in events if e[1] == rid]
        ends: list[datetime | None] = [e[0] for e in mine[1:]]
        for (at, _, _, after), end in zip(mine, [*ends, None], strict=True):
            if after is not None:
                rows.append((rid, after[0], after[1], at, end))
    return rows


def _expected_days(events: list[Event], today: date) -> list[tuple[Any, ...]]:
    rows = []
    for rid in sorted({e[1] for e in events}):
        day = min(e[0] for e in events if e[1] == rid).date()
        while day <= today:
            end_of_day = _midnight(day + timedelta(days=1)) - timedelta(microseconds=1)
            value = state_at(events, end_of_day)[rid]
            rows.append((day, rid, value is not None, *(value or (None, None))))
            day += timedelta(days=1)
    return rows


def _clear(engine: Engine) -> None:
    with engine.begin() as c:
        for table in ("region_history", "regions", "sync_runs"):
            c.exec_driver_sql(f"DELETE FROM {table}")


@pytest.mark.slow
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=PLANS)
def test_history_views_agree_with_a_replay_of_the_history(engine: Engine, plan: Plan) -> None:
    today = datetime.now(UTC).date()
    events = _events(plan, _midnight(today - timedelta(days=7)))
    _clear(engine)
    write_events(engine, events)
    intervals = query(
        engine,
        "SELECT region_id, carrier_enabled, hosting_region, valid_from, valid_to"
        " FROM region_status_intervals ORDER BY region_id, valid_from",
    )
    got = [(r["region_id"], bool(r["carrier_enabled"]), r["hosting_region"]) for r in intervals]
    bounds = [(as_utc(r["valid_from"]), as_utc(r["valid_to"])) for r in intervals]
    assert [(*g, *b) for g, b in zip(got, bounds, strict=True)] == _expected_intervals(events)
    if engine.dialect.name != "postgresql":
        return
    days = query(
        engine,
        "SELECT day, region_id, present, carrier_enabled, hosting_region"
        " FROM region_status_daily ORDER BY region_id, day",
    )
    assert [tuple(r.values()) for r in days] == _expected_days(events, today)


# --- the schema --------------------------------------------------------------------------


def _schema(engine: Engine) -> tuple[set[str], set[str]]:
    inspector = sa.inspect(engine)
    return set(inspector.get_view_names()), {
        ix["name"] for ix in inspector.get_indexes("region_history") if ix["name"]
    }


def test_0002_goes_down_to_0001_and_up_again_keeping_the_data(empty_engine: Engine) -> None:
    migrate(empty_engine)
    seed(empty_engine, datetime.now(UTC).replace(microsecond=0))
    views, indexes = _schema(empty_engine)
    on_pg = empty_engine.dialect.name == "postgresql"
    expected_views = {*VIEWS, "region_status_daily"} if on_pg else set(VIEWS)
    assert views == expected_views
    assert "ix_region_history_account_region_id_changed_at_id" in indexes

    downgrade(empty_engine, "0001")
    assert current_revision(empty_engine) == "0001"
    views, indexes = _schema(empty_engine)
    assert views == {"region_status_intervals"}
    assert "ix_region_history_region_id_changed_at" in indexes
    assert "ix_region_history_region_id_changed_at_id" not in indexes
    assert "ix_region_history_appearances" not in indexes
    assert len(query(empty_engine, "SELECT * FROM region_status_intervals")) == 6
    if on_pg:
        [row] = query(
            empty_engine,
            "SELECT obj_description('alembic_version'::regclass, 'pg_class') AS a,"
            " obj_description('region_status_intervals'::regclass, 'pg_class') AS v",
        )
        assert row == {"a": None, "v": None}

    migrate(empty_engine)
    assert _schema(empty_engine)[0] == expected_views
    assert len(query(empty_engine, "SELECT * FROM region_changes")) == 8


def test_indexes_include_the_columns_the_model_says(pg_engine: Engine) -> None:
    """``alembic check`` does not compare INCLUDE columns; this does."""
    inspector = sa.inspect(pg_engine)
    for table in Base.metadata.sorted_tables:
        reflected = {ix["name"]: ix for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            wanted = list(index.dialect_options["postgresql"]["include"] or [])
            options = reflected[str(index.name)].get("dialect_options", {})
            assert options.get("postgresql_include", []) == wanted, index.name
