"""The tables of docs/contract.md §3 as typed SQLAlchemy models.

The migrations spell out their own DDL and never import this module; ``alembic check``
(run by the tests) proves the two agree. Every column carries a comment: BI tools show
them to analysts as the data dictionary.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The closed sets of the tables' text columns: each CHECK constraint below is generated
# from its type, and the code and the metrics use the same types.

HistoryChange = Literal["added", "changed", "removed", "restored"]
"""``region_history.change``: ``changed`` means a tracked field changed."""
RunOutcome = Literal["succeeded", "failed", "skipped"]
"""How a finished run ended (``skipped``: another sync held the lock)."""
RunStatus = Literal["running", RunOutcome]
"""``sync_runs.status``: ``running`` until the run ends."""
RunTrigger = Literal["cli", "daemon"]
"""``sync_runs.trigger``: what started the run."""
DeliveryStatus = Literal["pending", "delivered", "failed"]
"""``notification_deliveries.status``: ``failed`` means given up."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, so SQLite compares ``raw`` as a value, not as text order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamptz``; on SQLite, stored as UTC and read back timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a timezone-aware column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


RawJSON = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _in(column: str, values: Any) -> str:
    """The CHECK text allowing a ``Literal`` type's members, in their order (as the
    migrations spell it out)."""
    return f"{column} IN ({', '.join(repr(v) for v in get_args(values))})"


class SyncRun(Base):
    __tablename__ = "sync_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RunStatus), name="status"),
        CheckConstraint(_in("trigger", RunTrigger), name="trigger"),
        Index(None, "status", "started_at"),
        {"comment": "One row per sync attempt: when, how it ended, and what it counted."},
    )

    id: Mapped[int] = mapped_column(
        BigId, primary_key=True, autoincrement=True, comment="Run number, increasing."
    )
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, comment="When the run started (UTC).")
    finished_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, comment="When the run ended (UTC); NULL while running."
    )
    status: Mapped[RunStatus] = mapped_column(
        Text, comment="running, succeeded, failed, or skipped (another sync held the lock)."
    )
    trigger: Mapped[RunTrigger] = mapped_column(
        Text, comment="What started the run: cli (regionsync run) or daemon."
    )
    source: Mapped[str] = mapped_column(
        Text, comment="Where the data came from: the API URL or file:PATH; never a secret."
    )
    fetched: Mapped[int] = mapped_column(
        Integer, default=0, comment="Records received, duplicates and rejects included."
    )
    added: Mapped[int] = mapped_column(
        Integer, default=0, comment="Regions seen for the first time."
    )
    changed: Mapped[int] = mapped_column(
        Integer, default=0, comment="Present regions with any stored field changed, tracked or not."
    )
    unchanged: Mapped[int] = mapped_column(
        Integer, default=0, comment="Present regions that matched the database exactly."
    )
    removed: Mapped[int] = mapped_column(
        Integer, default=0, comment="Regions absent from this sync, newly marked removed."
    )
    restored: Mapped[int] = mapped_column(
        Integer, default=0, comment="Removed regions that came back in this sync."
    )
    rejected: Mapped[int] = mapped_column(
        Integer,
        default=0,
        comment="Records refused as invalid; their regions were left as they were.",
    )
    error: Mapped[str | None] = mapped_column(
        Text, comment="Why the run failed or was skipped, one line; never a secret."
    )


class Region(Base):
    __tablename__ = "regions"
    __table_args__ = (
        Index(None, "removed_at"),
        {"comment": "Current state of every region ever seen (rows are never deleted)."},
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, comment="Kaleyra's region id.")
    region_name: Mapped[str | None] = mapped_column(
        Text, comment="Google's region resource name, e.g. /v1/regions/amx-tracfone."
    )
    display_name: Mapped[str | None] = mapped_column(
        Text, comment="Human-readable name, e.g. United States: Tracfone."
    )
    management_type: Mapped[str | None] = mapped_column(
        Text, comment="Who manages the region, as Kaleyra sends it (e.g. GOOGLE_MANAGED)."
    )
    management_type_value: Mapped[int | None] = mapped_column(
        Integer, comment="The management type as Kaleyra's integer code."
    )
    carrier_enabled: Mapped[bool] = mapped_column(
        Boolean, comment="Whether the carrier is enabled for the agent in this region (tracked)."
    )
    hosting_region: Mapped[str | None] = mapped_column(
        Text, comment="Hosting region as Kaleyra sends it, e.g. NORTH_AMERICA (tracked)."
    )
    raw: Mapped[Any] = mapped_column(
        RawJSON, comment="The record exactly as last received from the API."
    )
    first_seen_at: Mapped[datetime] = mapped_column(
        UTCDateTime, comment="When a sync first received this region (UTC)."
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, comment="When a stored field last changed, raw and removed_at included (UTC)."
    )
    removed_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime,
        comment="When a successful sync first missed this region; NULL while it is present.",
    )


class RegionHistory(Base):
    __tablename__ = "region_history"
    __table_args__ = (
        UniqueConstraint("region_id", "sync_run_id"),
        CheckConstraint(_in("change", HistoryChange), name="change"),
        Index(None, "changed_at"),
        Index(None, "sync_run_id"),
        {
            "comment": "One row per region per sync in which a tracked field or the region's "
            "presence changed. Befores equal the previous row's afters; NULL means absent."
        },
    )

    id: Mapped[int] = mapped_column(
        BigId, primary_key=True, autoincrement=True, comment="Row number, increasing."
    )
    region_id: Mapped[str] = mapped_column(
        Text, ForeignKey("regions.id"), comment="The region that changed (regions.id)."
    )
    sync_run_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("sync_runs.id"), comment="The sync that saw the change (sync_runs.id)."
    )
    changed_at: Mapped[datetime] = mapped_column(
        UTCDateTime, comment="When that sync received its snapshot (UTC); one value per run."
    )
    change: Mapped[HistoryChange] = mapped_column(
        Text, comment="added, changed, removed, or restored."
    )
    carrier_enabled_before: Mapped[bool | None] = mapped_column(
        Boolean, comment="carrier_enabled before the change; NULL when the region was absent."
    )
    carrier_enabled_after: Mapped[bool | None] = mapped_column(
        Boolean, comment="carrier_enabled after the change; NULL when the region is now absent."
    )
    hosting_region_before: Mapped[str | None] = mapped_column(
        Text, comment="hosting_region before the change; NULL when absent or unset."
    )
    hosting_region_after: Mapped[str | None] = mapped_column(
        Text, comment="hosting_region after the change; NULL when absent or unset."
    )


class NotificationDelivery(Base):
    """The notification outbox (see README, *Notifications*)."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        UniqueConstraint("sync_run_id", "part"),
        CheckConstraint(_in("status", DeliveryStatus), name="status"),
        Index(None, "status", "next_attempt_at"),
        {
            "comment": "The notification outbox: one row per webhook delivery of a sync's "
            "changes, written in the sync's transaction and delivered after it commits."
        },
    )

    id: Mapped[str] = mapped_column(
        Text,
        primary_key=True,
        comment="The delivery's stable id, sent as webhook-id on every attempt (msg_...).",
    )
    sync_run_id: Mapped[int] = mapped_column(
        BigId,
        ForeignKey("sync_runs.id"),
        comment="The sync whose changes this delivery reports (sync_runs.id).",
    )
    part: Mapped[int] = mapped_column(
        Integer,
        comment="Which part of the run's changes, from 1; a run is split only past a size limit.",
    )
    parts: Mapped[int] = mapped_column(
        Integer, comment="How many deliveries the run's changes were split into (usually 1)."
    )
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime,
        comment="When the sync's transaction wrote it, or an operator last retried it (UTC).",
    )
    status: Mapped[DeliveryStatus] = mapped_column(
        Text,
        comment="pending (not yet accepted by the receiver), delivered, or failed (given up).",
    )
    attempts: Mapped[int] = mapped_column(Integer, comment="HTTP attempts made so far.")
    next_attempt_at: Mapped[datetime] = mapped_column(
        UTCDateTime,
        comment="While pending: not retried before this time (UTC; backoff or Retry-After).",
    )
    last_attempt_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, comment="When the latest attempt was made (UTC); NULL before any."
    )
    last_error: Mapped[str | None] = mapped_column(
        Text, comment="Why the latest attempt failed, one line; never a secret."
    )
    delivered_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, comment="When the receiver accepted it (UTC); NULL unless delivered."
    )
    payload: Mapped[Any] = mapped_column(
        RawJSON, comment="The notification: run id, time, counts and the changes it reports."
    )


#: A region's rows in order; on PostgreSQL it covers what the views read (index-only scans).
Index(
    None,
    RegionHistory.region_id,
    RegionHistory.changed_at,
    RegionHistory.id,
    postgresql_include=["change", "carrier_enabled_after", "hosting_region_after"],
)
#: When each region (re)appeared: keeps active_regions.present_since cheap on a long history.
Index(
    "ix_region_history_appearances",
    RegionHistory.region_id,
    RegionHistory.changed_at,
    postgresql_where=RegionHistory.change.in_(("added", "restored")),
    sqlite_where=RegionHistory.change.in_(("added", "restored")),
)

#: The tables as Core ``Table`` objects, for set-based statements: each one by its own
#: name, the one every module uses.
regions = cast(Table, Region.__table__)
region_history = cast(Table, RegionHistory.__table__)
sync_runs = cast(Table, SyncRun.__table__)
notification_deliveries = cast(Table, NotificationDelivery.__table__)
