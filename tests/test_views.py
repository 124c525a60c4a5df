"""The analysts' views on a hand-made history with known answers, the data dictionary,
and the read-only role."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync.errors import ConfigError
from regionsync.grants import grant_readonly
from tests.seed import NAMES, Seeded, seed

VIEWS = ["region_status_intervals", "active_regions", "region_changes", "sync_health"]
PG_VIEWS = [*VIEWS, "region_status_daily"]


def query(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [dict(row) for row in c.execute(sa.text(sql), params).mappings()]


def utc(value: Any) -> datetime | None:
    """A timestamp read through a view: SQLite hands back text, PostgreSQL a datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@pytest.fixture
def seeded(engine: Engine) -> Seeded:
    return seed(engine, datetime.now(UTC).replace(microsecond=0))


def test_sync_health_is_one_row_on_an_empty_database(engine: Engine) -> None:
    rows = query(engine, "SELECT * FROM sync_health")
    assert rows == [
        {
            "last_run_id": None,
            "last_run_status": None,
            "last_run_started_at": None,
            "last_run_finished_at": None,
            "last_run_error": None,
            "last_success_at": None,
            "last_success_age_seconds": None,
            "consecutive_failures": 0,
            "active_regions": 0,
            "removed_regions": 0,
        }
    ]


def test_sync_health_after_failures(engine: Engine, seeded: Seeded) -> None:
    [row] = query(engine, "SELECT * FROM sync_health")
    assert row["last_run_id"] == 10
    assert row["last_run_status"] == "failed"
    assert row["last_run_error"] == "failed for the test"
    assert utc(row["last_success_at"]) == seeded.day(-5) + timedelta(seconds=2)
    assert row["last_success_age_seconds"] == pytest.approx(5 * 86400 - 2, abs=120)
    assert row["consecutive_failures"] == 2  # the skipped run counts neither way
    assert (row["active_regions"], row["removed_regions"]) == (2, 1)


def test_active_regions_are_those_present_with_since_when(engine: Engine, seeded: Seeded) -> None:
    rows = query(engine, "SELECT * FROM active_regions ORDER BY region_id")
    assert [(r["region_id"], r["display_name"], bool(r["carrier_enabled"])) for r in rows] == [
        ("a", "Alpha", True),
        ("c", "Charlie", True),
    ]
    assert [utc(r["present_since"]) for r in rows] == [seeded.day(-60), seeded.day(-25)]


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


def test_status_intervals_at_the_boundaries(engine: Engine, seeded: Seeded) -> None:
    rows = query(
        engine,
        "SELECT region_id, carrier_enabled, hosting_region, valid_from, valid_to"
        " FROM region_status_intervals ORDER BY region_id, valid_from",
    )
    got = [
        (r["region_id"], bool(r["carrier_enabled"]), utc(r["valid_from"]), utc(r["valid_to"]))
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
        """,
    )
    assert missing == []
    described = query(
        pg_engine,
        "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v')",
    )
    assert described[0]["n"] == 4 + len(PG_VIEWS)  # three tables, alembic_version, the views


@pytest.fixture
def reader(pg_url: URL, pg_engine: Engine) -> Iterator[str]:
    role = f"regionsync_reader_{uuid.uuid4().hex[:8]}"
    with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
    yield role
    with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql(f'DROP OWNED BY "{role}"')
        c.exec_driver_sql(f'DROP ROLE "{role}"')


def test_readonly_role_reads_everything_and_writes_nothing(
    pg_url: URL, pg_engine: Engine, reader: str
) -> None:
    seed(pg_engine, datetime.now(UTC))
    statements = grant_readonly(pg_engine, reader)
    assert statements[0] == f'GRANT USAGE ON SCHEMA "public" TO "{reader}"'
    with pg_engine.begin() as c:  # what a later migration would add
        c.exec_driver_sql("CREATE VIEW later_view AS SELECT 1 AS one")
    as_reader = sa.create_engine(pg_url.set(username=reader, password=None))
    try:
        with as_reader.connect() as c:
            for name in [
                "regions",
                "region_history",
                "sync_runs",
                "alembic_version",
                *PG_VIEWS,
                "later_view",
            ]:
                c.execute(sa.text(f"SELECT * FROM {name} LIMIT 1")).all()
        for statement in [
            "INSERT INTO sync_runs (started_at, status, trigger, source, fetched, added, changed,"
            " unchanged, removed, restored, rejected) VALUES (now(), 'running', 'cli', 'x',"
            " 0, 0, 0, 0, 0, 0, 0)",
            "UPDATE regions SET display_name = 'x'",
            "DELETE FROM region_history",
            "TRUNCATE sync_runs",
            "CREATE TABLE mine (x int)",
            "DROP VIEW sync_health",
        ]:
            with as_reader.connect() as c, pytest.raises(sa.exc.ProgrammingError) as caught:
                c.exec_driver_sql(statement)
            assert "permission denied" in str(caught.value) or "must be owner" in str(caught.value)
    finally:
        as_reader.dispose()
        with pg_engine.begin() as c:
            c.exec_driver_sql("DROP VIEW later_view")


def test_grant_readonly_refuses_unknown_roles_and_sqlite(
    pg_engine: Engine, sqlite_engine: Engine
) -> None:
    with pytest.raises(ConfigError, match="no PostgreSQL role named 'nobody_at_all'"):
        grant_readonly(pg_engine, "nobody_at_all")
    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        grant_readonly(sqlite_engine, "anyone")
