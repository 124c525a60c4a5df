"""The snapshot against the table: absent vs null fields, and only changed rows read back."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from regionsync.errors import PermanentSourceError, RegionSyncError
from regionsync.records import RegionRecord, Snapshot
from regionsync.settings import DEFAULT_ACCOUNT
from regionsync.source.answer import Origin, read_answer
from regionsync.store import answers, changeset
from regionsync.sync import Guard, preview, run_sync
from tests.support.sources import ListSource, body, region, validate_record
from tests.test_sync import history, rows

OPTIONAL_KEYS = ("region_name", "display_name", "management_type", "hosting_region")
VALUE_KEYS = ("management_type_value", "managment_type_value")


def record(data: dict[str, Any]) -> RegionRecord:
    """A valid record whose ``absent`` names the optional fields ``data`` leaves out."""
    parsed = validate_record(data, position=1)
    assert isinstance(parsed, RegionRecord), parsed
    missing = {name for name in OPTIONAL_KEYS if name not in data}
    if not any(name in data for name in VALUE_KEYS):
        missing.add("management_type_value")
    return dataclasses.replace(parsed, absent=frozenset(missing))


class RecordSource:
    """Serves records built with :func:`record`, so that absent fields are marked."""

    description = "test:records"

    def __init__(self, data: list[dict[str, Any]]) -> None:
        self.data = data

    def fetch(self) -> Snapshot:
        records = tuple(sorted((record(d) for d in self.data), key=lambda r: r.id))
        return Snapshot(
            records=records,
            rejected=(),
            fetched=len(records),
            source=self.description,
            received_at=datetime.now(UTC),
        )


def stored(engine: Engine, region_id: str) -> dict[str, Any]:
    with engine.connect() as c:
        row = c.execute(
            sa.text(
                "SELECT display_name, management_type_value, hosting_region, carrier_enabled,"
                " updated_at FROM regions WHERE id = :id"
            ),
            {"id": region_id},
        ).one()
    return dict(row._mapping)


def without(data: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in names}


def test_absent_field_keeps_the_stored_value_and_writes_no_history(engine: Engine) -> None:
    run_sync(engine, RecordSource([region("a", hosting="EUROPE", name="Alpha")]))
    before = stored(engine, "a")
    partial = without(region("a", hosting="EUROPE", name="Alpha"), "hosting_region", "display_name")
    source = RecordSource([partial])
    result = run_sync(engine, source)
    after = stored(engine, "a")
    assert (after["hosting_region"], after["display_name"]) == ("EUROPE", "Alpha")
    assert len(history(engine)) == 1, "an absent field is no change"
    # The record itself did change (raw is the record as received): an untracked update.
    assert [c.kind for c in result.changes] == ["updated"]
    assert result.changes[0].fields == {}
    assert result.changes[0].raw_changed
    assert after["updated_at"] > before["updated_at"]
    again = run_sync(engine, source)
    assert again.changes == []
    assert again.counts.unchanged == 1
    assert stored(engine, "a") == after


def test_absent_field_beside_a_tracked_change_keeps_its_value_in_history(engine: Engine) -> None:
    run_sync(engine, RecordSource([region("a", hosting="EUROPE")]))
    run_sync(engine, RecordSource([without(region("a", enabled=False), "hosting_region")]))
    assert history(engine)[-1] == (2, "a", "changed", True, False, "EUROPE", "EUROPE")
    assert stored(engine, "a")["hosting_region"] == "EUROPE"


def test_explicit_null_is_a_value(engine: Engine) -> None:
    run_sync(engine, RecordSource([region("a", hosting="EUROPE")]))
    result = run_sync(engine, RecordSource([region("a", hosting=None)]))
    assert result.counts.changed == 1
    assert stored(engine, "a")["hosting_region"] is None
    assert history(engine)[-1] == (2, "a", "changed", True, True, "EUROPE", None)


def test_new_region_with_absent_fields_stores_null(engine: Engine) -> None:
    data = without(region("n"), "hosting_region", "display_name", "managment_type_value")
    run_sync(engine, RecordSource([data]))
    got = stored(engine, "n")
    assert (got["hosting_region"], got["display_name"], got["management_type_value"]) == (
        None,
        None,
        None,
    )
    assert history(engine) == [(1, "n", "added", None, True, None, None)]


def test_restored_region_keeps_its_stored_value_for_an_absent_field(engine: Engine) -> None:
    run_sync(engine, RecordSource([region("a"), region("b", hosting="EUROPE")]))
    run_sync(engine, RecordSource([region("a")]))
    run_sync(engine, RecordSource([region("a"), without(region("b"), "hosting_region")]))
    assert history(engine)[-1] == (3, "b", "restored", None, True, None, "EUROPE")


def test_absent_value_field_keeps_the_stored_value(engine: Engine) -> None:
    run_sync(engine, RecordSource([region("a", managment_type_value=7)]))
    run_sync(engine, RecordSource([without(region("a"), "managment_type_value")]))
    assert stored(engine, "a")["management_type_value"] == 7


def test_dry_run_resolves_absent_fields_like_a_run(engine: Engine) -> None:
    run_sync(engine, RecordSource([region("a", hosting="EUROPE")]))
    planned = preview(engine, RecordSource([without(region("a", enabled=False), "hosting_region")]))
    assert [(c.kind, c.fields) for c in planned.changes] == [
        ("changed", {"carrier_enabled": (True, False)})
    ]
    assert planned.changes[0].display_name == "Region a"


@contextmanager
def rows_read(engine: Engine) -> Iterator[list[int]]:
    """How many rows each SELECT brought back to Python (PostgreSQL reports it)."""
    counted: list[int] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            counted.append(max(cursor.rowcount, 0))

    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        yield counted
    finally:
        sa.event.remove(engine, "after_cursor_execute", after)


def test_only_the_changed_rows_are_read_back(pg_engine: Engine) -> None:
    n = 500
    source = ListSource([region(f"r{i:03d}") for i in range(n)])
    run_sync(pg_engine, source, guard=Guard(region_lines=0))
    with rows_read(pg_engine) as counted:
        run_sync(pg_engine, source)
    assert sum(counted) < 20, counted
    source.data = [region(f"r{i:03d}", enabled=i >= 300) for i in range(n)]
    with rows_read(pg_engine) as counted:
        result = run_sync(pg_engine, source)
    assert result.counts.changed == 300
    assert len(result.changes) == 100, "the first 100 only, as many as the log shows"
    assert sum(counted) < 100 + 20, counted


def test_unchanged_snapshot_neither_rewrites_nor_locks_a_row(pg_engine: Engine) -> None:
    source = ListSource([region(f"r{i}") for i in range(50)])
    run_sync(pg_engine, source)
    versions = "SELECT id, xmin::text, xmax::text FROM regions ORDER BY id"
    before = rows(pg_engine, versions)
    run_sync(pg_engine, source)
    assert rows(pg_engine, versions) == before, "rows were rewritten or locked"


def test_absent_field_through_the_parser_keeps_the_stored_value(engine: Engine) -> None:
    source = ListSource([region("a", hosting="EUROPE")])
    run_sync(engine, source)
    source.data = [without(region("a", hosting="EUROPE"), "hosting_region")]
    run_sync(engine, source)
    assert stored(engine, "a")["hosting_region"] == "EUROPE"
    assert len(history(engine)) == 1


# Staging while parsing (PostgreSQL) ------------------------------------------------------


def copies_after_the_parse(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each COPY made after the parse had ended sent (none when streamed)."""
    sent: list[int] = []
    real = changeset._copy_binary

    def counting(connection: Connection, records: Any) -> None:
        records = list(records)
        sent.append(len(records))
        real(connection, records)

    monkeypatch.setattr(changeset, "_copy_binary", counting)
    return sent


def remembered_digest(engine: Engine) -> str | None:
    with engine.connect() as c:
        return answers.remembered(c, DEFAULT_ACCOUNT)


def test_the_parse_stages_the_records_as_it_validates_them_unless_an_answer_is_remembered(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming pays off when there is something to apply: on a first run, or once a write
    to the regions made the memory go; with the last answer remembered the next one likely
    repeats it, and is staged after the parse only if it does not (docs/sync.md,
    *Nothing to do*)."""
    copies = copies_after_the_parse(monkeypatch)
    source = ListSource([region(f"r{i}") for i in range(5)])
    run_sync(pg_engine, source)
    assert copies == []  # a first run: sent to PostgreSQL during the parse
    assert remembered_digest(pg_engine) is not None

    source.data[2] = region("r2", enabled=False)
    result = run_sync(pg_engine, source)
    assert copies == [5]  # remembered: parsed first, then staged in one COPY
    assert (result.counts.changed, result.unchanged_answer) == (1, False)
    assert history(pg_engine)[-1][:3] == (2, "r2", "changed")

    with pg_engine.begin() as c:
        c.exec_driver_sql("UPDATE regions SET display_name = 'renamed by hand' WHERE id = 'r0'")
    assert remembered_digest(pg_engine) is None  # any write to the regions forgets it
    source.data[3] = region("r3", enabled=False)
    result = run_sync(pg_engine, source)
    assert copies == [5]  # forgotten: streamed again
    assert result.counts.changed == 2  # r3, and r0's name put back
    assert history(pg_engine)[-1][:3] == (3, "r3", "changed")

    result = run_sync(pg_engine, source)
    assert copies == [5]  # the remembered answer again: neither staged nor diffed
    assert result.unchanged_answer
    assert result.counts.unchanged == 5


def test_records_a_duplicate_or_a_reject_replaced_are_staged_again(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = copies_after_the_parse(monkeypatch)
    source = ListSource([region("a"), region("b"), region("a", enabled=False)])
    run_sync(pg_engine, source)
    assert rows(pg_engine, "SELECT id, carrier_enabled FROM regions ORDER BY id") == [
        ("a", False),
        ("b", True),
    ]
    source.data = [region("a", enabled=True), region("b", enabled=False), {"id": "a"}]
    result = run_sync(pg_engine, source)  # "a" is held by its rejected copy: it stays as it is
    assert copies == [2, 1]
    assert (result.counts.changed, result.counts.rejected) == (1, 1)
    assert rows(pg_engine, "SELECT id, carrier_enabled FROM regions ORDER BY id") == [
        ("a", False),
        ("b", False),
    ]


class FailingAfterParseSource:
    """Parses valid records (staging them as it goes), then fails before the fetch ends."""

    description = "test:failing-after-parse"

    def fetch(self) -> Snapshot:
        data = [region(f"r{i}") for i in range(5)] + [{"id": f"junk{i}"} for i in range(20)]
        origin = Origin(source=self.description, where="from test")
        content = json.dumps(body(data)).encode()
        read_answer(content, origin, received_at=datetime.now(UTC))
        raise PermanentSourceError("the fetch failed after the parse", code="test")


def test_a_fetch_failing_after_staging_some_records_keeps_nothing(pg_engine: Engine) -> None:
    with pytest.raises(RegionSyncError, match="the fetch failed after the parse"):
        run_sync(pg_engine, FailingAfterParseSource())
    assert rows(pg_engine, "SELECT count(*) FROM regions") == [(0,)]
    [(status, error)] = rows(pg_engine, "SELECT status, error FROM sync_runs")
    assert status == "failed"
    assert "the fetch failed after the parse" in error
    run_sync(pg_engine, ListSource([region("r1")]))  # the connection and tables are sound
    assert rows(pg_engine, "SELECT id FROM regions") == [("r1",)]
