"""A large write: foreign keys checked once, secondary indexes built once, and the table
left exactly as it was (README, *The sync*, bulk writes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from regionsync import bulk_write, changeset, runs
from regionsync.sync import Guard, run_sync
from tests.sources import ListSource, region
from tests.test_sync import rows

#: Everything the bulk write drops and puts back, as the catalog describes it.
CATALOG = """
SELECT 'index', indexname, indexdef, obj_description(format('%I', indexname)::regclass)
FROM pg_indexes WHERE tablename = :table
UNION ALL
SELECT 'constraint', conname, pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint')
FROM pg_constraint WHERE conrelid = CAST(:table AS regclass)
ORDER BY 1, 2
"""


def catalog(engine_or_connection: Engine | Connection, table: str) -> list[tuple[Any, ...]]:
    if isinstance(engine_or_connection, Engine):
        with engine_or_connection.connect() as connection:
            return catalog(connection, table)
    found = engine_or_connection.execute(sa.text(CATALOG), {"table": table})
    return [tuple(row) for row in found]


def names(described: list[tuple[Any, ...]]) -> set[str]:
    return {name for _, name, _, _ in described}


#: The names alone, read from the catalog tables without locking the table (the definitions
#: above do lock it, so another session must wait for the bulk write to end).
NAMES = """
SELECT relname FROM pg_class
WHERE oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = CAST(:table AS regclass))
UNION ALL
SELECT conname FROM pg_constraint WHERE conrelid = CAST(:table AS regclass)
"""


def names_seen_by(engine: Engine, table: str) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(sa.text(NAMES), {"table": table}).scalars())


def test_a_sync_writing_in_bulk_leaves_both_tables_as_they_were(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tables = ("regions", "region_history")
    before = {table: catalog(pg_engine, table) for table in tables}
    assert "fk_region_history_region_id_regions" in names(before["region_history"])
    assert "ix_region_history_region_id_changed_at_id" in names(before["region_history"])
    monkeypatch.setattr(changeset, "BULK_ROWS", 3)
    inside: list[tuple[str, set[str]]] = []
    real = bulk_write.in_bulk

    @contextmanager
    def spy(connection: Connection, table: str, rows: int) -> Iterator[None]:
        with real(connection, table, rows):
            left = names(catalog(connection, table))
            inside.append((table, names(before[table]) - left))
            assert names_seen_by(pg_engine, table) == names(before[table])  # not committed
            yield

    monkeypatch.setattr(bulk_write, "in_bulk", spy)
    source = ListSource([region(f"r{i}") for i in range(5)])
    run_sync(pg_engine, source)  # an initial load
    source.data = [region(f"r{i}", enabled=False) for i in range(4)] + [region("r9")]
    run_sync(pg_engine, source, guard=Guard(allow_mass_removal=True))
    source.data = source.data[:2]  # 3 removals into a table of 11 rows: indexes kept
    run_sync(pg_engine, source, guard=Guard(allow_mass_removal=True))
    source.data = source.data[:1]  # below the threshold: row by row
    run_sync(pg_engine, source, guard=Guard(allow_mass_removal=True))

    history_indexes = {
        "ix_region_history_appearances",
        "ix_region_history_changed_at",
        "ix_region_history_region_id_changed_at_id",
        "ix_region_history_sync_run_id",
        "uq_region_history_region_id_sync_run_id",
    }
    keys = {"fk_region_history_region_id_regions", "fk_region_history_sync_run_id_sync_runs"}
    assert inside == [
        ("regions", {"ix_regions_removed_at"}),  # 5 added to an empty table
        ("region_history", history_indexes | keys),  # 5 rows into an empty table
        ("region_history", history_indexes | keys),  # 6 rows into a table of 5
        ("region_history", keys),
    ]
    assert {table: catalog(pg_engine, table) for table in tables} == before
    assert rows(pg_engine, "SELECT change, count(*) FROM region_history GROUP BY 1 ORDER BY 1") == [
        ("added", 6),
        ("changed", 4),
        ("removed", 5),
    ]


def test_comments_on_what_is_dropped_come_back(fresh_pg_engine: Engine) -> None:
    comment = "it's 100% the analysts' index; \\ kept"
    with fresh_pg_engine.begin() as connection:
        for statement in (
            "COMMENT ON INDEX ix_region_history_changed_at IS :c",
            "COMMENT ON CONSTRAINT uq_region_history_region_id_sync_run_id ON region_history IS :c",
            "COMMENT ON CONSTRAINT fk_region_history_region_id_regions ON region_history IS :c",
        ):
            literal = "'" + comment.replace("'", "''") + "'"
            connection.exec_driver_sql(statement.replace(":c", literal).replace("%", "%%"))
    before = catalog(fresh_pg_engine, "region_history")
    assert sum(described[3] == comment for described in before) == 3
    with (
        fresh_pg_engine.begin() as connection,
        bulk_write.in_bulk(connection, "region_history", 10),
    ):
        assert names(catalog(connection, "region_history")) == {
            "pk_region_history",
            "ck_region_history_change",
        }
    assert catalog(fresh_pg_engine, "region_history") == before


def insert_history_of_an_unknown_region(connection: Connection) -> None:
    run_id = runs.open_run(connection, trigger="cli", source="test")
    connection.exec_driver_sql(
        "INSERT INTO region_history (region_id, sync_run_id, changed_at, change) "
        f"VALUES ('nowhere', {run_id}, now(), 'added')"
    )


def test_a_row_breaking_a_key_in_a_bulk_write_fails_it_and_keeps_the_keys(
    pg_engine: Engine,
) -> None:
    before = catalog(pg_engine, "region_history")

    def bulk_write_of_an_unknown_region() -> None:
        with (
            pg_engine.begin() as connection,
            bulk_write.in_bulk(connection, "region_history", 1),
        ):
            insert_history_of_an_unknown_region(connection)

    with pytest.raises(sa.exc.IntegrityError, match="fk_region_history_region_id_regions"):
        bulk_write_of_an_unknown_region()
    assert catalog(pg_engine, "region_history") == before
    assert rows(pg_engine, "SELECT count(*) FROM region_history") == [(0,)]
    assert rows(pg_engine, "SELECT count(*) FROM sync_runs") == [(0,)]


def test_rows_breaking_a_unique_index_built_after_them_fail_the_write(pg_engine: Engine) -> None:
    run_sync(pg_engine, ListSource([region("a")]))
    before = catalog(pg_engine, "region_history")
    with (
        pytest.raises(sa.exc.IntegrityError, match="uq_region_history_region_id_sync_run_id"),
        pg_engine.begin() as connection,
        bulk_write.in_bulk(connection, "region_history", 10),
    ):
        connection.exec_driver_sql(
            "INSERT INTO region_history (region_id, sync_run_id, changed_at, change) "
            "SELECT region_id, sync_run_id, now(), 'changed' FROM region_history"
        )
    assert catalog(pg_engine, "region_history") == before
    assert rows(pg_engine, "SELECT count(*) FROM region_history") == [(1,)]


def test_a_role_that_cannot_alter_the_table_keeps_row_by_row_checks(pg_engine: Engine) -> None:
    role = f"regionsync_writer_{uuid.uuid4().hex[:8]}"
    before = catalog(pg_engine, "region_history")
    with pg_engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role}")
        connection.exec_driver_sql(
            f"GRANT SELECT, INSERT, UPDATE ON region_history, regions, sync_runs TO {role}"
        )
        connection.exec_driver_sql(
            f"GRANT USAGE ON SEQUENCE region_history_id_seq, sync_runs_id_seq TO {role}"
        )
    try:
        with pg_engine.begin() as connection:
            connection.exec_driver_sql(f"SET LOCAL ROLE {role}")
            with bulk_write.in_bulk(connection, "region_history", 100):
                assert catalog(connection, "region_history") == before
                with (
                    pytest.raises(
                        sa.exc.IntegrityError, match="fk_region_history_region_id_regions"
                    ),
                    connection.begin_nested(),  # the keys are still there, checked row by row
                ):
                    insert_history_of_an_unknown_region(connection)
    finally:
        with pg_engine.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
    assert catalog(pg_engine, "region_history") == before


def test_elsewhere_than_postgresql_the_block_simply_runs(sqlite_engine: Engine) -> None:
    with sqlite_engine.begin() as connection, bulk_write.in_bulk(connection, "region_history", 10):
        found = connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE tbl_name = 'region_history' AND type = 'index'"
        ).all()
    assert ("ix_region_history_changed_at",) in found
