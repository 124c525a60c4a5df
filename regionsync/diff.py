"""Set-based comparison of a fetched snapshot with the ``regions`` table.

The snapshot is staged in a temporary table; one SELECT classifies every present region,
one finds the regions to mark removed, and the same expressions drive the INSERT ... SELECT
statements that apply it. Comparisons are null-safe (``IS DISTINCT FROM``) on stored fields
only, so an identical snapshot matches and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from regionsync.models import RawJSON, canonical_json, regions_table
from regionsync.records import Snapshot

TRACKED = ("carrier_enabled", "hosting_region")
UNTRACKED = ("region_name", "display_name", "management_type", "management_type_value", "raw")
STORED = TRACKED + UNTRACKED

_temp = sa.MetaData()
staged = sa.Table(
    "regionsync_staged",
    _temp,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("region_name", sa.Text),
    sa.Column("display_name", sa.Text),
    sa.Column("management_type", sa.Text),
    sa.Column("management_type_value", sa.Integer),
    sa.Column("carrier_enabled", sa.Boolean, nullable=False),
    sa.Column("hosting_region", sa.Text),
    sa.Column("raw", RawJSON, nullable=False),
    prefixes=["TEMPORARY"],
)
held = sa.Table(
    "regionsync_held",
    _temp,
    sa.Column("id", sa.Text, primary_key=True),
    prefixes=["TEMPORARY"],
)
#: History rows computed from the old state, inserted once the regions they name exist.
pending_history = sa.Table(
    "regionsync_pending_history",
    _temp,
    sa.Column("region_id", sa.Text, nullable=False),
    sa.Column("change", sa.Text, nullable=False),
    sa.Column("carrier_enabled_before", sa.Boolean),
    sa.Column("carrier_enabled_after", sa.Boolean),
    sa.Column("hosting_region_before", sa.Text),
    sa.Column("hosting_region_after", sa.Text),
    prefixes=["TEMPORARY"],
)
TEMP_TABLES = (staged, held, pending_history)

regions = regions_table
s = staged.alias("s")
r = regions.alias("r")


def _distinct(names: tuple[str, ...]) -> sa.ColumnElement[bool]:
    return sa.or_(*(r.c[name].is_distinct_from(s.c[name]) for name in names))


#: How each staged region compares with its row in ``regions``.
KIND = sa.case(
    (r.c.id.is_(None), "added"),
    (r.c.removed_at.is_not(None), "restored"),
    (_distinct(TRACKED), "changed"),
    (_distinct(UNTRACKED), "updated"),
    else_="unchanged",
)

present_changes = (
    sa.select(
        s.c.id.label("region_id"),
        KIND.label("kind"),
        *(r.c[name].label(f"{name}_before") for name in STORED),
        *(s.c[name].label(f"{name}_after") for name in STORED),
    )
    .select_from(s.outerjoin(r, r.c.id == s.c.id))
    .subquery("present")
)

#: Active regions absent from the snapshot, except those held back by rejected records.
absent = sa.and_(
    regions.c.removed_at.is_(None),
    ~sa.exists().where(staged.c.id == regions.c.id),
    ~sa.exists().where(held.c.id == regions.c.id),
)


@dataclass(frozen=True)
class Change:
    """One region that the snapshot changes; ``fields`` maps a field to (before, after)."""

    region_id: str
    kind: str  # added, changed (a tracked field), updated (untracked only), removed, restored
    fields: dict[str, tuple[Any, Any]]

    @property
    def writes_history(self) -> bool:
        return self.kind != "updated"


@dataclass
class Plan:
    """What applying a snapshot would do."""

    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    active_before: int = 0

    def count(self, *kinds: str) -> int:
        return sum(1 for change in self.changes if change.kind in kinds)


def stage(connection: Connection, snapshot: Snapshot) -> None:
    """Load the snapshot into this connection's temporary tables."""
    unstage(connection)
    for table in TEMP_TABLES:
        table.create(connection)
    rows = [
        (
            rec.id,
            rec.region_name,
            rec.display_name,
            rec.management_type,
            rec.management_type_value,
            rec.carrier_enabled,
            rec.hosting_region,
            rec.raw,
        )
        for rec in snapshot.records
    ]
    if rows and connection.dialect.name == "postgresql":
        _copy_rows(connection, rows)
    elif rows:
        names = [column.name for column in staged.columns]
        connection.execute(staged.insert(), [dict(zip(names, row, strict=True)) for row in rows])
    if snapshot.held_ids:
        connection.execute(held.insert(), [{"id": region_id} for region_id in snapshot.held_ids])


def _copy_rows(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: COPY is several times faster than batched INSERTs at 100,000 rows."""
    names = ", ".join(column.name for column in staged.columns)
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {staged.name} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row((*row[:-1], canonical_json(row[-1])))


def unstage(connection: Connection) -> None:
    for table in TEMP_TABLES:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))


def plan(connection: Connection) -> Plan:
    """Compare the staged snapshot with ``regions``; reads only."""
    result = Plan()
    rows = connection.execute(sa.select(present_changes)).mappings()
    for row in rows:
        kind = row["kind"]
        if kind == "unchanged":
            result.unchanged += 1
            continue
        names = STORED if kind in ("added", "restored") else _differing(row)
        result.changes.append(
            Change(
                region_id=row["region_id"],
                kind=kind,
                fields={
                    name: (
                        None if kind in ("added", "restored") else row[f"{name}_before"],
                        row[f"{name}_after"],
                    )
                    for name in names
                },
            )
        )
    removed = connection.execute(
        sa.select(regions.c.id, regions.c.carrier_enabled, regions.c.hosting_region)
        .where(absent)
        .order_by(regions.c.id)
    )
    for region_id, carrier_enabled, hosting_region in removed:
        result.changes.append(
            Change(
                region_id=region_id,
                kind="removed",
                fields={
                    "carrier_enabled": (carrier_enabled, None),
                    "hosting_region": (hosting_region, None),
                },
            )
        )
    result.active_before = connection.execute(
        sa.select(sa.func.count()).select_from(regions).where(regions.c.removed_at.is_(None))
    ).scalar_one()
    return result


def _differing(row: sa.RowMapping) -> tuple[str, ...]:
    return tuple(name for name in STORED if row[f"{name}_before"] != row[f"{name}_after"])
