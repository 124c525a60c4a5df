"""The example queries: shipped with the package, shown verbatim on the analysts' page,
and run here against a seeded history with known answers — the portable ones on SQLite too.

A query whose first line says "(PostgreSQL)" may use PostgreSQL's dialect; every other one
must give the same answers on both databases.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from itertools import takewhile
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.support import as_utc
from tests.support.docs import page
from tests.support.seed import Seeded, seed

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
    sql = sql_of(name)
    used = {key: value for key, value in params.items() if f":{key}" in sql}
    with engine.connect() as c:
        rows = [tuple(row) for row in c.execute(sa.text(sql), used)]
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


def test_regions_enabled_now(engine: Engine, seeded: Seeded) -> None:
    assert run(engine, "regions_enabled_now.sql") == [
        ("a", "Alpha", "EUROPE", seeded.day(-60)),
        ("c", "Charlie", "NORTH_AMERICA", seeded.day(-25)),
    ]


def test_changes_in_the_last_30_days(pg_engine: Engine, seeded_pg: Seeded) -> None:
    rows = run(pg_engine, "changes_last_30_days.sql")
    assert [(r[1], r[3], r[0]) for r in rows] == [
        ("a", "changed", seeded_pg.day(-5)),
        ("b", "removed", seeded_pg.day(-10)),
        ("a", "changed", seeded_pg.day(-20)),
        ("c", "restored", seeded_pg.day(-25)),
    ]


def test_when_a_region_lost_carrier_support(engine: Engine, seeded: Seeded) -> None:
    query = "when_region_lost_carrier_support.sql"
    assert run(engine, query, region_id="a") == [(seeded.day(-20), "changed", False, 5)]
    assert run(engine, query, region_id="b") == [(seeded.day(-10), "removed", None, 6)]
    assert run(engine, query, region_id="c") == []  # removed while disabled: nothing lost


def test_total_time_enabled(pg_engine: Engine, seeded_pg: Seeded) -> None:
    [(region_id, enabled_for, periods)] = run(pg_engine, "total_time_enabled.sql", region_id="a")
    assert (region_id, periods) == ("a", 2)
    assert abs(enabled_for - timedelta(days=45)) < timedelta(minutes=2)  # 40 days + the last 5
    [(_, c_enabled, _)] = run(pg_engine, "total_time_enabled.sql", region_id="c")
    assert abs(c_enabled - timedelta(days=25)) < timedelta(minutes=2)
    [(_, nothing, none)] = run(pg_engine, "total_time_enabled.sql", region_id="zz")
    assert (nothing, none) == (timedelta(0), 0)


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
        expected += [(week, hosting, n) for hosting, n in sorted(counts.items())]
        week += timedelta(days=7)
    assert rows == expected
    this_week = today - timedelta(days=today.weekday())
    assert [r[1:] for r in rows if r[0] == this_week] == [("EUROPE", 1), ("NORTH_AMERICA", 1)]


def test_regions_enabled_at_a_given_moment(pg_engine: Engine, seeded_pg: Seeded) -> None:
    d = seeded_pg.day
    assert run(pg_engine, "regions_enabled_at.sql", as_of=d(-30)) == [
        ("a", "Alpha", "EUROPE", d(-60), d(-20)),
        ("b", "Bravo", "NORTH_AMERICA", d(-60), d(-10)),
    ]
    # At the very moment a change was received, the new state holds (valid_to is exclusive).
    assert run(pg_engine, "regions_enabled_at.sql", as_of=d(-20)) == [
        ("b", "Bravo", "NORTH_AMERICA", d(-60), d(-10)),
        ("c", "Charlie", "NORTH_AMERICA", d(-25), None),
    ]
    as_text = (d(-20) - timedelta(microseconds=1)).isoformat()  # as psql would pass it
    assert [r[0] for r in run(pg_engine, "regions_enabled_at.sql", as_of=as_text)] == [
        "a",
        "b",
        "c",
    ]


def test_removed_and_never_restored(engine: Engine, seeded: Seeded) -> None:
    assert run(engine, "removed_never_restored.sql") == [
        ("b", "Bravo", "NORTH_AMERICA", seeded.day(-10))
    ]


def test_data_freshness(engine: Engine, seeded: Seeded) -> None:
    [(last_success, age, failures, status, error, active, removed)] = run(
        engine, "data_freshness.sql"
    )
    assert last_success == seeded.day(-5) + timedelta(seconds=2)
    assert float(age) == pytest.approx(5 * 86400 - 2, abs=120)
    assert (failures, status, error, active, removed) == (2, "failed", "failed for the test", 2, 1)
