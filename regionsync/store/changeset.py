"""A fetched snapshot against the ``regions`` table: stage, plan, apply, unstage.

The snapshot is staged in temporary tables (COPY on PostgreSQL), the database classifies
every staged region in one join (on PostgreSQL a full join, which also meets the active
regions the snapshot lacks) and keeps only the ones that change, in a temporary diff
table; counts, log details, history rows and the upsert all read from that table. An
unchanged snapshot reads back a few counts and writes nothing: comparisons are
null-safe (``IS DISTINCT FROM``) on the stored fields, ``raw`` included (``jsonb`` equality
on PostgreSQL, canonical JSON text on SQLite).

An optional field absent from a record means "not reported": an existing region keeps its
stored value, a new one stores NULL; an explicit JSON null is a value like any other.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection

from regionsync.records import OPTIONAL_FIELDS, RegionRecord, Snapshot
from regionsync.store.tables import BigId, UTCDateTime, region_history, regions

Kind = Literal["added", "changed", "updated", "removed", "restored"]
"""``changed``: a tracked field changed; ``updated``: only untracked fields (no history)."""
KINDS: tuple[Kind, ...] = get_args(Kind)
PRESENT: tuple[Kind, ...] = ("added", "changed", "updated", "restored")

TRACKED = ("carrier_enabled", "hosting_region")
UNTRACKED = ("region_name", "display_name", "management_type", "management_type_value", "raw")
STORED = TRACKED + UNTRACKED
#: The stored fields a change describes (``raw`` only says whether it differs).
SHOWN = tuple(name for name in STORED if name != "raw")

#: Canonical JSON text; jsonb on PostgreSQL, so that it compares as a JSON value.
_RAW = sa.Text().with_variant(JSONB(), "postgresql")


def _untracked_columns() -> list[sa.Column[Any]]:
    """The untracked stored fields, as a table of the snapshot holds them."""
    return [
        sa.Column("region_name", sa.Text),
        sa.Column("display_name", sa.Text),
        sa.Column("management_type", sa.Text),
        sa.Column("management_type_value", sa.Integer),
        sa.Column("raw", _RAW),
    ]


_temp = sa.MetaData()
#: Temporary tables; on PostgreSQL they go with the transaction (no DROP statements to send).
_TEMPORARY: dict[str, Any] = {"prefixes": ["TEMPORARY"], "postgresql_on_commit": "DROP"}
staged = sa.Table(
    "regionsync_staged",
    _temp,
    # No primary key on PostgreSQL: the snapshot has one record per id, and an index costs
    # more to build than the hash joins that read this table. SQLite, which joins by
    # nested loops, gets a unique index once the rows are in.
    sa.Column("id", sa.Text, nullable=False),
    sa.Column("carrier_enabled", sa.Boolean, nullable=False),
    sa.Column("hosting_region", sa.Text),
    *_untracked_columns(),
    **_TEMPORARY,
)
#: Ids of rejected records: their regions stay exactly as they are.
held = sa.Table("regionsync_held", _temp, sa.Column("id", sa.Text, primary_key=True), **_TEMPORARY)
#: (region, field) for each optional field a record omitted; usually empty.
absent = sa.Table(
    "regionsync_absent",
    _temp,
    sa.Column("id", sa.Text, nullable=False),
    sa.Column("field", sa.Text, nullable=False),
    **_TEMPORARY,
)
#: One row per region the snapshot changes: its tracked values before and after, and its
#: other stored fields as the snapshot has them (NULL for a removal), so that applying and
#: describing the changes read this table alone, never the whole staged snapshot again.
diff = sa.Table(
    "regionsync_diff",
    _temp,
    sa.Column("region_id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("carrier_enabled_before", sa.Boolean),
    sa.Column("carrier_enabled_after", sa.Boolean),
    sa.Column("hosting_region_before", sa.Text),
    sa.Column("hosting_region_after", sa.Text),
    *_untracked_columns(),
    **_TEMPORARY,
)
#: The columns of a change that ``region_history`` keeps.
BEFORE_AFTER = (
    "carrier_enabled_before",
    "carrier_enabled_after",
    "hosting_region_before",
    "hosting_region_after",
)
TEMP_TABLES = (staged, held, absent, diff)

#: The alias the statements join a snapshot row by; the stored row of its region is
#: :func:`_existing`, the account's own rows of ``regions``.
incoming = staged.alias("s")


def _existing(account: str) -> sa.Subquery:
    """The account's rows of ``regions``, as the ``r`` the statements join."""
    return sa.select(regions).where(regions.c.account == account).subquery("r")


def _mine(account: str) -> sa.ColumnElement[bool]:
    return regions.c.account == account


@dataclass(frozen=True)
class Change:
    """One region the snapshot changes; ``fields`` maps a stored field to (before, after).

    ``raw`` is never in ``fields``: ``raw_changed`` says whether the record differs.
    """

    region_id: str
    kind: Kind
    display_name: str | None
    fields: dict[str, tuple[Any, Any]]
    raw_changed: bool = False

    def describe(self) -> dict[str, Any]:
        """The change as log fields: ``{"changes": {field: [before, after]}}``."""
        out: dict[str, Any] = {
            "changes": {name: [before, after] for name, (before, after) in self.fields.items()}
        }
        if self.raw_changed:
            out["raw_changed"] = True
        return out


@dataclass
class Plan:
    """What applying the staged snapshot does: counts by kind, and the first few changes."""

    counts: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    unchanged: int = 0
    active_before: int = 0
    #: Where the changes are: the diff table, or the staged rows shaped as it when all are
    #: added.
    diff: sa.FromClause = diff
    changes: list[Change] = field(default_factory=list)
    #: Not diffed: the answer was the account's last applied one (:mod:`.answers`).
    shortcut: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def history_rows(self) -> int:
        """The rows applying it writes to ``region_history`` (updates write none)."""
        return self.total - self.counts["updated"]


def stage(
    connection: Connection,
    snapshot: Snapshot,
    account: str,
    streamed: StreamedStage | None = None,
) -> None:
    """Load the snapshot into this connection's temporary tables (in its transaction).

    ``streamed``: the records the parse already sent (:class:`StreamedStage`); they are
    the snapshot's own when there are as many (no duplicate was replaced, no record held
    back), and are sent again otherwise.
    """
    if streamed is not None and streamed.count:
        streamed.close()
        if streamed.count != len(snapshot.records):
            connection.exec_driver_sql(f"TRUNCATE {staged.name}")
            _copy_binary(connection, snapshot.records)
    else:
        _create_tables(connection)
        if connection.dialect.name == "postgresql":
            if snapshot.records:
                _copy_binary(connection, snapshot.records)
        else:
            names = ", ".join(column.name for column in staged.columns)
            marks = ", ".join("?" for _ in staged.columns)
            if snapshot.records:
                connection.exec_driver_sql(
                    f"INSERT INTO {staged.name} ({names}) VALUES ({marks})",
                    [_row(rec) for rec in snapshot.records],
                )
            connection.exec_driver_sql(
                f"CREATE UNIQUE INDEX {staged.name}_id ON {staged.name} (id)"
            )
    if snapshot.held_ids:
        held.create(connection)
        connection.execute(held.insert(), [{"id": region_id} for region_id in snapshot.held_ids])
    omitted = [
        {"id": rec.id, "field": name}
        for rec in snapshot.records
        if rec.absent
        for name in OPTIONAL_FIELDS
        if name in rec.absent
    ]
    if omitted:
        absent.create(connection)
        connection.execute(absent.insert(), omitted)
        _keep_stored_values(connection, account)


def _create_tables(connection: Connection) -> None:
    """The tables every stage fills; ``held`` and ``absent`` only when there is something to
    hold or keep (creating a temporary table writes to the system catalogs)."""
    unstage(connection)
    staged.create(connection)
    diff.create(connection)


#: A record as a row of the staging table, in its column order (a C-level getter: it runs
#: once per region).
_row: Callable[[RegionRecord], tuple[Any, ...]] = operator.attrgetter(
    *(column.name for column in staged.columns)
)


@contextmanager
def _copy_into_staged(connection: Connection) -> Iterator[Any]:
    """PostgreSQL: a binary COPY into the staging table, the fastest way in (faster than a
    text COPY); yields psycopg's ``Copy``.

    ``raw`` is already canonical JSON text: it is sent as jsonb's binary form (a version
    byte and the text) instead of being decoded and encoded again. A driver error is
    raised as SQLAlchemy's, as every other statement's is.
    """
    import psycopg
    from psycopg.adapt import Buffer, Dumper
    from psycopg.pq import Format

    class RawJsonb(Dumper):
        format = Format.BINARY
        oid = 3802  # jsonb

        def dump(self, obj: str) -> Buffer:
            return b"\x01" + obj.encode()

    names = ", ".join(column.name for column in staged.columns)
    statement = f"COPY {staged.name} ({names}) FROM STDIN (FORMAT BINARY)"
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.adapters.register_dumper(None, RawJsonb)
    try:
        with cursor.copy(statement) as copy:
            copy.set_types(["text", "bool", "text", "text", "text", "text", "int4", "jsonb"])
            yield copy
    except psycopg.Error as error:
        raise sa.exc.DBAPIError(statement, None, error) from error


def _copy_binary(connection: Connection, records: Iterable[RegionRecord]) -> None:
    with _copy_into_staged(connection) as copy:
        for rec in records:
            copy.write_row(_row(rec))


class StreamedStage:
    """PostgreSQL: the staging COPY, fed by the parse itself (:mod:`regionsync.record_sink`).

    Each valid record goes to PostgreSQL as soon as it is validated, so that PostgreSQL
    stores the snapshot while Python validates the rest of it, which hides most of the COPY
    behind the parse. The COPY starts with the first record (so
    that no statement is open while the HTTP request waits) and ends in :func:`stage`.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.count = 0
        self._copies = ExitStack()
        self._copy: Any = None

    def add(self, record: RegionRecord) -> None:
        if self._copy is None:
            _create_tables(self.connection)
            self._copy = self._copies.enter_context(_copy_into_staged(self.connection))
        self._copy.write_row(_row(record))
        self.count += 1

    def close(self) -> None:
        """End the COPY (PostgreSQL then has every row sent)."""
        self._copies.close()

    def __enter__(self) -> StreamedStage:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Ends the COPY, or abandons it when the block failed."""
        self._copies.__exit__(*exc_info)


@contextmanager
def streamed_stage(
    connection: Connection, *, wanted: bool = True
) -> Iterator[StreamedStage | None]:
    """A :class:`StreamedStage` for the block on PostgreSQL (None elsewhere, or when not
    ``wanted``), given to :mod:`regionsync.record_sink`; if the block fails, its COPY is
    abandoned."""
    if connection.dialect.name != "postgresql" or not wanted:
        yield None
        return
    from regionsync import record_sink

    with StreamedStage(connection) as streamed, record_sink.receiving(streamed):
        yield streamed


def _keep_stored_values(connection: Connection, account: str) -> None:
    """Give each absent field the region's stored value (NULL for a new region)."""
    for name in OPTIONAL_FIELDS:
        stored = (
            sa.select(regions.c[name])
            .where(_mine(account), regions.c.id == staged.c.id)
            .scalar_subquery()
        )
        omitted = sa.select(absent.c.id).where(absent.c.field == name)
        connection.execute(staged.update().where(staged.c.id.in_(omitted)).values({name: stored}))


def unstage(connection: Connection) -> None:
    """Drop the temporary tables (SQLite; PostgreSQL drops them at the transaction's end)."""
    if connection.dialect.name == "postgresql":
        return
    for table in TEMP_TABLES:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))


def _distinct(existing: sa.Subquery, names: tuple[str, ...]) -> sa.ColumnElement[bool]:
    return sa.or_(*(existing.c[name].is_distinct_from(incoming.c[name]) for name in names))


def _kind(existing: sa.Subquery) -> sa.ColumnElement[str]:
    """How a staged region compares with its row in ``regions``."""
    return sa.case(
        (existing.c.id.is_(None), "added"),
        (existing.c.removed_at.is_not(None), "restored"),
        (_distinct(existing, TRACKED), "changed"),
        (_distinct(existing, UNTRACKED), "updated"),
        else_="unchanged",
    )


def _gone(account: str) -> sa.ColumnElement[bool]:
    """The account's active regions missing from the snapshot: removed, unless held."""
    return sa.and_(
        _mine(account),
        regions.c.removed_at.is_(None),
        ~sa.exists().where(staged.c.id == regions.c.id),
    )


#: Regions held back by rejected records (the held table exists only when some are).
_HELD = sa.exists().where(held.c.id == regions.c.id)


def plan(
    connection: Connection,
    snapshot: Snapshot,
    *,
    account: str,
    details: int | None = None,
    streamed: StreamedStage | None = None,
) -> Plan:
    """Stage ``snapshot`` and find what it changes; writes only temporary tables.

    ``details`` bounds how many :class:`Change` rows are read back (None: all of them).
    """
    if connection.dialect.name == "postgresql":
        # The diff hashes one table against the other: at the default work_mem a large
        # snapshot's hash spills to disk in batches. LOCAL: for this transaction only.
        connection.exec_driver_sql("SET LOCAL work_mem = '64MB'")
    stage(connection, snapshot, account, streamed)
    result = Plan()
    if connection.execute(sa.select(regions.c.id).where(_mine(account)).limit(1)).first() is None:
        # A first load: every staged region is added, nothing to compare with; the records,
        # sorted by id, are the details.
        result.counts["added"] = len(snapshot.records)
        result.diff = _everything_added()
        result.changes = [_added(record) for record in snapshot.records[:details]]
        return result
    _classify(connection, snapshot, account, result)
    if result.total and (details is None or details > 0):
        result.changes = _details(connection, account, details)
    return result


def _classify(connection: Connection, snapshot: Snapshot, account: str, result: Plan) -> None:
    """Fill the diff table with every staged region that changes, and count them."""
    columns = [column.name for column in diff.columns]
    # PostgreSQL: one pass. A full join meets, beside the snapshot's regions, the active
    # ones it lacks (the removed); SQLite before 3.39 has no full join, so it looks for
    # those in a second statement, when the counts say there are some.
    full = connection.dialect.name == "postgresql"
    existing = _existing(account)
    joined = incoming.outerjoin(existing, existing.c.id == incoming.c.id, full=full)
    kind: sa.ColumnElement[str] = _kind(existing)
    if full:
        gone: sa.ColumnElement[bool] = existing.c.removed_at.is_(None)
        if snapshot.held_ids:
            joined = joined.outerjoin(held, held.c.id == existing.c.id)
            gone = sa.and_(gone, held.c.id.is_(None))
        kind = sa.case(
            (incoming.c.id.is_(None), sa.case((gone, "removed"), else_="unchanged")),
            else_=_kind(existing),
        )
    present = (
        sa.select(
            sa.func.coalesce(incoming.c.id, existing.c.id).label("region_id")
            if full
            else incoming.c.id.label("region_id"),
            kind.label("kind"),
            *_before_after(existing),
            *(incoming.c[name] for name in UNTRACKED),
        )
        .select_from(joined)
        .subquery("present")
    )
    connection.execute(
        diff.insert().from_select(columns, sa.select(present).where(present.c.kind != "unchanged"))
    )
    for name, number in connection.execute(
        sa.select(diff.c.kind, sa.func.count()).group_by(diff.c.kind)
    ):
        result.counts[name] = number
    result.unchanged = len(snapshot.records) - sum(result.counts[k] for k in PRESENT)
    # Every active region is in the snapshot, held back by a rejected record, or missing.
    staged_active = len(snapshot.records) - result.counts["added"] - result.counts["restored"]
    active = (_mine(account), regions.c.removed_at.is_(None))
    held_active = _count(connection, *active, _HELD) if snapshot.held_ids else 0
    if full:
        result.active_before = staged_active + held_active + result.counts["removed"]
    else:
        result.active_before = _count(connection, *active)
        if result.active_before > staged_active + held_active:  # usually not: skip the anti-join
            _add_removals(connection, account, held=bool(snapshot.held_ids))
            result.counts["removed"] = connection.execute(
                sa.select(sa.func.count()).where(diff.c.kind == "removed")
            ).scalar_one()


def _everything_added() -> sa.Subquery:
    """The staged snapshot shaped as the diff table, every region added (a first load:
    filling the diff table would only copy the staged rows)."""
    return sa.select(
        incoming.c.id.label("region_id"),
        sa.literal("added").label("kind"),
        sa.cast(sa.null(), sa.Boolean).label("carrier_enabled_before"),
        incoming.c.carrier_enabled.label("carrier_enabled_after"),
        sa.cast(sa.null(), sa.Text).label("hosting_region_before"),
        incoming.c.hosting_region.label("hosting_region_after"),
        *(incoming.c[name] for name in UNTRACKED),
    ).subquery("c")


def _add_removals(connection: Connection, account: str, *, held: bool) -> None:
    """The active regions missing from the snapshot and not held, as removals."""
    gone = sa.and_(_gone(account), ~_HELD) if held else _gone(account)
    connection.execute(
        diff.insert().from_select(
            ["region_id", "kind", *BEFORE_AFTER],
            sa.select(
                regions.c.id,
                sa.literal("removed"),
                regions.c.carrier_enabled,
                sa.null(),
                regions.c.hosting_region,
                sa.null(),
            ).where(gone),
        )
    )


def _count(connection: Connection, *where: sa.ColumnElement[bool]) -> int:
    found: int = connection.execute(
        sa.select(sa.func.count()).select_from(regions).where(*where)
    ).scalar_one()
    return found


def _before_after(existing: sa.Subquery) -> list[sa.ColumnElement[Any]]:
    """The tracked values before (NULL when the region was absent) and after."""
    was_present = existing.c.removed_at.is_(None)
    return [
        sa.case((was_present, existing.c.carrier_enabled)).label("carrier_enabled_before"),
        incoming.c.carrier_enabled.label("carrier_enabled_after"),
        sa.case((was_present, existing.c.hosting_region)).label("hosting_region_before"),
        incoming.c.hosting_region.label("hosting_region_after"),
    ]


def _added(record: RegionRecord) -> Change:
    """A new region's change, from its record (absent fields are stored as NULL)."""
    fields = {name: (None, getattr(record, name)) for name in SHOWN}
    return Change(record.id, "added", record.display_name, fields)


def _details(connection: Connection, account: str, limit: int | None) -> list[Change]:
    """The first ``limit`` changes by region id, with every field that differs."""
    existing = _existing(account)
    first = sa.select(diff).order_by(diff.c.region_id).limit(limit).subquery("first")
    query = (
        sa.select(
            first.c.region_id,
            first.c.kind,
            *(existing.c[name].label(f"{name}_before") for name in SHOWN),
            *(_after(first, name).label(f"{name}_after") for name in SHOWN),
            sa.type_coerce(existing.c.raw.is_distinct_from(first.c.raw), sa.Boolean).label(
                "raw_changed"
            ),
        )
        .select_from(first.outerjoin(existing, existing.c.id == first.c.region_id))
        .order_by(first.c.region_id)
    )
    found = []
    for row in connection.execute(query).mappings():
        kind: Kind = row["kind"]
        before = {name: row[f"{name}_before"] for name in SHOWN}
        after = {name: row[f"{name}_after"] for name in SHOWN}
        if kind == "removed":
            fields = {name: (before[name], None) for name in TRACKED}
        elif kind in ("added", "restored"):
            fields = {name: (None, after[name]) for name in SHOWN}
        else:
            fields = {name: (before[name], after[name]) for name in SHOWN}
            fields = {name: pair for name, pair in fields.items() if pair[0] != pair[1]}
        found.append(
            Change(
                region_id=row["region_id"],
                kind=kind,
                display_name=before["display_name"] if kind == "removed" else after["display_name"],
                fields=fields,
                raw_changed=kind in ("changed", "updated") and bool(row["raw_changed"]),
            )
        )
    return found


def apply(
    connection: Connection, planned: Plan, *, account: str, run_id: int, at: datetime
) -> None:
    """Write the planned changes: removals, new regions, updates, then the history rows.

    History goes last so that the rows of newly added regions exist for its foreign key.
    A statement with nothing to write is not sent (each would scan the staged snapshot).
    Every write is a plain DML statement, whatever its size: the locks it takes never make a
    reader wait (docs/reliability.md, *Readers beside the sync*).
    """
    when = sa.literal(at, UTCDateTime())
    owner = sa.literal(account, sa.Text())
    counts = planned.counts
    if counts["removed"]:
        removed = sa.select(diff.c.region_id).where(diff.c.kind == "removed")
        connection.execute(
            regions.update()
            .where(_mine(account), regions.c.id.in_(removed))
            .values(removed_at=at, updated_at=at)
        )
    if counts["added"]:
        # A plain INSERT, cheaper than an upsert's speculative insertion.
        new_regions = _rows(planned.diff, owner, when, ("added",))
        connection.execute(regions.insert().from_select(_COLUMNS, new_regions))
    if counts["changed"] or counts["updated"] or counts["restored"]:
        connection.execute(_upsert(connection, planned.diff, owner, when))
    if planned.history_rows:
        changed = planned.diff
        insert_history = region_history.insert().from_select(
            ["account", "sync_run_id", "changed_at", "region_id", "change", *BEFORE_AFTER],
            sa.select(
                owner,
                sa.literal(run_id, BigId),
                when,
                changed.c.region_id,
                changed.c.kind,
                *(changed.c[name] for name in BEFORE_AFTER),
            )
            .where(changed.c.kind != "updated")
            .order_by(changed.c.region_id),
        )
        connection.execute(insert_history)


_COLUMNS = ["account", "id", *STORED, "first_seen_at", "updated_at", "removed_at"]


def _rows(
    changed: sa.FromClause,
    owner: sa.ColumnElement[str],
    when: sa.ColumnElement[Any],
    kinds: tuple[Kind, ...],
) -> sa.Select[Any]:
    """The regions ``changed`` (:attr:`Plan.diff`) plans as one of ``kinds``, as ``regions``
    rows of the account ``owner``."""
    return (
        sa.select(
            owner,
            changed.c.region_id,
            *(_after(changed, name) for name in STORED),
            when,
            when,
            sa.null(),
        )
        # A WHERE also keeps SQLite from reading an upsert's ON CONFLICT as a join's ON.
        .where(changed.c.kind.in_(kinds))
    )


def _after(changed: sa.FromClause, name: str) -> sa.ColumnElement[Any]:
    """A stored field's value in the snapshot, from a row of the diff table."""
    return changed.c[f"{name}_after"] if name in TRACKED else changed.c[name]


def _upsert(
    connection: Connection,
    changed: sa.FromClause,
    owner: sa.ColumnElement[str],
    when: sa.ColumnElement[Any],
) -> sa.Executable:
    """Rewrite the existing regions that change (restored ones included)."""
    rows = _rows(changed, owner, when, ("changed", "updated", "restored"))
    key = [regions.c.account, regions.c.id]
    if connection.dialect.name == "postgresql":
        stmt = postgresql.insert(regions).from_select(_COLUMNS, rows)
        return stmt.on_conflict_do_update(index_elements=key, set_=_replaced(stmt.excluded))
    from sqlalchemy.dialects import sqlite  # imported only where SQLite is used

    lite = sqlite.insert(regions).from_select(_COLUMNS, rows)
    return lite.on_conflict_do_update(index_elements=key, set_=_replaced(lite.excluded))


def _replaced(excluded: Any) -> dict[str, Any]:
    """An upsert's SET: every stored field and ``updated_at`` from the new row; present again."""
    return {
        **{name: excluded[name] for name in STORED},
        "updated_at": excluded.updated_at,
        "removed_at": None,
    }
