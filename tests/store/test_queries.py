"""The example queries: shipped with the package, shown verbatim on the analysts' page,
and run here against a seeded history with known answers — the portable ones on SQLite too.

A query whose first line says "(PostgreSQL)" may use PostgreSQL's dialect; every other one
must give the same answers on both databases. Every query answers per account (its first
column): two accounts holding the same region ids never mix.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from itertools import takewhile
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from regionsync.settings import DEFAULT_ACCOUNT
from regionsync.store.tables import region_history, regions, sync_runs
from tests.support import as_utc
from tests.support.docs import page
from tests.support.seed import SEEDED_RUNS, Event, Seeded, seed, write_events

QUERIES = sorted(
    p.name for p in files("regionsync.store.queries").iterdir() if p.name.endswith(".sql")
)
PORTABLE = {
    "regions_enabled_now.sql",
    "when_region_lost_carrier_support.sql",
    "removed_never_restored.sql",
    "data_freshness.sql",
}


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def sql_of(name: str) -> str:
    return files("regionsync.store.queries").joinpath(name).read_text()


def run(engine: Engine, name: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows, with SQLite's text timestamps read back as the aware datetimes PG gives."""
    with engine.connect() as c:
        return run_on(c, name, **params)


def run_on(connection: Connection, name: str, **params: Any) -> list[tuple[Any, ...]]:
    """:func:`run` on an open connection (inside its transaction)."""
    sql = sql_of(name)
    used = {key: value for key, value in params.items() if f":{key}" in sql}
    rows = [tuple(row) for row in connection.execute(sa.text(sql), used)]
    return [tuple(_read(value) for value in row) for row in rows]


def _read(value: Any) -> Any:
    return as_utc(value) if isinstance(value, str) and TIMESTAMP.match(value) else value


def question(sql: str) -> str:
    """The comment lines a query starts with."""
    return "\n".join(takewhile(lambda line: line.startswith("--"), sql.splitlines()))


@pytest.fixture
def seeded_pg(pg_engine: Engine) -> Seeded:
    return seed(pg_engine, datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def seeded(engine: Engine) -> Seeded:
    return seed(engine, datetime.now(UTC).replace(microsecond=0))


def test_there_are_six_to_eight_queries_each_on_the_analysts_page() -> None:
    assert 6 <= len(QUERIES) <= 8
    shown = page("analysts.md")
    for name in QUERIES:
        sql = sql_of(name).strip()
        assert sql.startswith("-- "), f"{name} should start with its question"
        assert sql in shown, f"{name} is not shown verbatim in docs/analysts.md"


def test_only_queries_marked_postgresql_are_left_out_on_sqlite() -> None:
    marked = {name for name in QUERIES if "(PostgreSQL)" in question(sql_of(name))}
    assert set(QUERIES) - marked == PORTABLE


A = DEFAULT_ACCOUNT


def test_regions_enabled_now(engine: Engine, seeded: Seeded) -> None:
    assert run(engine, "regions_enabled_now.sql") == [
        (A, "a", "Alpha", "EUROPE", seeded.day(-60)),
        (A, "c", "Charlie", "NORTH_AMERICA", seeded.day(-25)),
    ]


def test_changes_in_the_last_30_days(pg_engine: Engine, seeded_pg: Seeded) -> None:
    rows = run(pg_engine, "changes_last_30_days.sql")
    assert [(r[0], r[2], r[4], r[1]) for r in rows] == [
        (A, "a", "changed", seeded_pg.day(-5)),
        (A, "b", "removed", seeded_pg.day(-10)),
        (A, "a", "changed", seeded_pg.day(-20)),
        (A, "c", "restored", seeded_pg.day(-25)),
    ]


def test_when_a_region_lost_carrier_support(engine: Engine, seeded: Seeded) -> None:
    query = "when_region_lost_carrier_support.sql"
    assert run(engine, query, region_id="a") == [(A, seeded.day(-20), "changed", False, 5)]
    assert run(engine, query, region_id="b") == [(A, seeded.day(-10), "removed", None, 6)]
    assert run(engine, query, region_id="c") == []  # removed while disabled: nothing lost


def test_total_time_enabled(pg_engine: Engine, seeded_pg: Seeded) -> None:
    [(account, region_id, enabled_for, periods)] = run(
        pg_engine, "total_time_enabled.sql", region_id="a"
    )
    assert (account, region_id, periods) == (A, "a", 2)
    assert abs(enabled_for - timedelta(days=45)) < timedelta(minutes=2)  # 40 days + the last 5
    [(_, _, c_enabled, _)] = run(pg_engine, "total_time_enabled.sql", region_id="c")
    assert abs(c_enabled - timedelta(days=25)) < timedelta(minutes=2)
    assert run(pg_engine, "total_time_enabled.sql", region_id="zz") == []  # no account has it


def test_enabled_regions_per_hosting_region_per_week(pg_engine: Engine, seeded_pg: Seeded) -> None:
    rows = run(pg_engine, "enabled_per_hosting_region_per_week.sql")
    today = seeded_pg.now.date()
    first = seeded_pg.day(-60).date()
    week = first - timedelta(days=first.weekday())
    expected = []
    while week <= today:
        last = min(week + timedelta(days=6), today)
        moment = min(
            datetime(last.year, last.month, last.day, tzinfo=UTC)
            + timedelta(days=1, microseconds=-1),
            seeded_pg.now,
        )
        counts: dict[str, int] = {}
        for value in seeded_pg.state_at(moment).values():
            if value is not None and value[0]:
                counts[value[1]] = counts.get(value[1], 0) + 1
        expected += [(A, week, hosting, n) for hosting, n in sorted(counts.items())]
        week += timedelta(days=7)
    assert rows == expected
    this_week = today - timedelta(days=today.weekday())
    assert [r[2:] for r in rows if r[1] == this_week] == [("EUROPE", 1), ("NORTH_AMERICA", 1)]


def test_regions_enabled_at_a_given_moment(pg_engine: Engine, seeded_pg: Seeded) -> None:
    d = seeded_pg.day
    assert run(pg_engine, "regions_enabled_at.sql", as_of=d(-30)) == [
        (A, "a", "Alpha", "EUROPE", d(-60), d(-20)),
        (A, "b", "Bravo", "NORTH_AMERICA", d(-60), d(-10)),
    ]
    # At the very moment a change was received, the new state holds (valid_to is exclusive).
    assert run(pg_engine, "regions_enabled_at.sql", as_of=d(-20)) == [
        (A, "b", "Bravo", "NORTH_AMERICA", d(-60), d(-10)),
        (A, "c", "Charlie", "NORTH_AMERICA", d(-25), None),
    ]
    as_text = (d(-20) - timedelta(microseconds=1)).isoformat()  # as psql would pass it
    assert [r[1] for r in run(pg_engine, "regions_enabled_at.sql", as_of=as_text)] == [
        "a",
        "b",
        "c",
    ]


def test_removed_and_never_restored(engine: Engine, seeded: Seeded) -> None:
    assert run(engine, "removed_never_restored.sql") == [
        (A, "b", "Bravo", "NORTH_AMERICA", seeded.day(-10))
    ]


def test_data_freshness(engine: Engine, seeded: Seeded) -> None:
    [(account, last_success, age, failures, status, error, active, removed)] = run(
        engine, "data_freshness.sql"
    )
    assert account == A
    assert last_success == seeded.day(-5) + timedelta(seconds=2)
    assert float(age) == pytest.approx(5 * 86400 - 2, abs=120)
    assert (failures, status, error, active, removed) == (2, "failed", "failed for the test", 2, 1)


# --- two accounts holding the same region ids ---------------------------------------------

BRAND_A, BRAND_B = "brand-a", "brand-b"
#: brand-b's own story of the same ids a, b and c, beside brand-a's (the seed's):
#: a never enabled; c enabled, then removed while enabled; b added late, enabled.
EVENTS_B: list[tuple[int, str, str, tuple[bool, str] | None]] = [
    (-50, "a", "added", (False, "ASIA_PACIFIC")),
    (-45, "c", "added", (True, "NORTH_AMERICA")),
    (-15, "b", "added", (True, "EUROPE")),
    (-8, "c", "removed", None),
]
NAMES_B = {"a": "Alpha B", "b": "Bravo B", "c": "Charlie B"}
FIRST_RUN_B = SEEDED_RUNS + 1


def seed_two_accounts(engine: Engine) -> Seeded:
    seeded = seed(engine, datetime.now(UTC).replace(microsecond=0), account=BRAND_A)
    events: list[Event] = [(seeded.day(n), rid, ch, after) for n, rid, ch, after in EVENTS_B]
    write_events(engine, events, names=NAMES_B, first_run=FIRST_RUN_B, account=BRAND_B)
    return seeded


def without_account(connection: Connection, account: str) -> None:
    """Delete the account's rows (the caller rolls back)."""
    for table in (region_history, regions, sync_runs):
        connection.execute(table.delete().where(table.c.account == account))


@pytest.mark.parametrize("name", QUERIES)
def test_each_account_answers_as_if_it_were_alone(pg_engine: Engine, name: str) -> None:
    """With brand-b beside it, brand-a's rows are exactly those it gives alone, and the
    other way round: no query joins one account's rows to the other's. (One transaction:
    PostgreSQL's now() stays the same.)"""
    seeded = seed_two_accounts(pg_engine)
    region_ids = ("a", "b", "c") if ":region_id" in sql_of(name) else ("a",)
    with pg_engine.connect() as c, c.begin():
        for region_id in region_ids:
            params = {"region_id": region_id, "as_of": seeded.day(-30)}
            both = run_on(c, name, **params)
            assert {row[0] for row in both} <= {BRAND_A, BRAND_B}
            for account, other in ((BRAND_A, BRAND_B), (BRAND_B, BRAND_A)):
                savepoint = c.begin_nested()
                without_account(c, other)
                alone = run_on(c, name, **params)
                savepoint.rollback()
                assert {row[0] for row in alone} <= {account}
                assert [row for row in both if row[0] == account] == alone, (name, account)
        c.rollback()


def test_the_portable_queries_keep_the_accounts_apart(engine: Engine) -> None:
    seeded = seed_two_accounts(engine)
    d = seeded.day
    assert run(engine, "regions_enabled_now.sql") == [
        (BRAND_A, "a", "Alpha", "EUROPE", d(-60)),
        (BRAND_A, "c", "Charlie", "NORTH_AMERICA", d(-25)),
        (BRAND_B, "b", "Bravo B", "EUROPE", d(-15)),
    ]
    assert run(engine, "removed_never_restored.sql") == [
        (BRAND_A, "b", "Bravo", "NORTH_AMERICA", d(-10)),
        (BRAND_B, "c", "Charlie B", "NORTH_AMERICA", d(-8)),
    ]
    lost = "when_region_lost_carrier_support.sql"
    assert run(engine, lost, region_id="a") == [(BRAND_A, d(-20), "changed", False, 5)]
    assert run(engine, lost, region_id="c") == [(BRAND_B, d(-8), "removed", None, FIRST_RUN_B + 3)]
    freshness = run(engine, "data_freshness.sql")
    assert [(r[0], r[1], r[3], r[4], r[6], r[7]) for r in freshness] == [
        (BRAND_A, d(-5) + timedelta(seconds=2), 2, "failed", 2, 1),
        (BRAND_B, d(-8) + timedelta(seconds=2), 0, "succeeded", 2, 1),
    ]


def test_the_postgresql_queries_keep_the_accounts_apart(pg_engine: Engine) -> None:
    seeded = seed_two_accounts(pg_engine)
    d = seeded.day
    totals = run(pg_engine, "total_time_enabled.sql", region_id="a")
    assert [(r[0], r[1], r[3]) for r in totals] == [(BRAND_A, "a", 2), (BRAND_B, "a", 0)]
    assert abs(totals[0][2] - timedelta(days=45)) < timedelta(minutes=2)
    assert totals[1][2] == timedelta(0)  # brand-b's a was never enabled
    assert run(pg_engine, "regions_enabled_at.sql", as_of=d(-30)) == [
        (BRAND_A, "a", "Alpha", "EUROPE", d(-60), d(-20)),
        (BRAND_A, "b", "Bravo", "NORTH_AMERICA", d(-60), d(-10)),
        (BRAND_B, "c", "Charlie B", "NORTH_AMERICA", d(-45), d(-8)),
    ]
    changes = run(pg_engine, "changes_last_30_days.sql")
    assert [(r[0], r[2], r[3], r[4]) for r in changes] == [
        (BRAND_A, "a", "Alpha", "changed"),
        (BRAND_A, "b", "Bravo", "removed"),
        (BRAND_A, "a", "Alpha", "changed"),
        (BRAND_A, "c", "Charlie", "restored"),
        (BRAND_B, "c", "Charlie B", "removed"),
        (BRAND_B, "b", "Bravo B", "added"),
    ]
    this_week = seeded.now.date() - timedelta(days=seeded.now.weekday())
    weekly = run(pg_engine, "enabled_per_hosting_region_per_week.sql")
    assert [(r[0], r[2], r[3]) for r in weekly if r[1] == this_week] == [
        (BRAND_A, "EUROPE", 1),
        (BRAND_A, "NORTH_AMERICA", 1),
        (BRAND_B, "EUROPE", 1),
    ]
