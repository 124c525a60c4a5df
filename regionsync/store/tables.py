"""The tables of docs/contract.md §3, in SQLAlchemy Core: what every command reads and writes.

The sync works set by set (``INSERT ... SELECT``, ``COPY``), so it needs tables, not ORM
objects; importing only Core keeps the ORM (and the mapping of four classes) out of a
one-shot ``run``. :mod:`regionsync.store.models` maps typed classes onto these same tables.

The migrations spell out their own DDL and never import this module; ``alembic check``
(run by the tests) proves the two agree. Every column carries a comment: BI tools show
them to analysts as the data dictionary.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

from regionsync.settings import ACCOUNT_NAME_MAX

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
RunTrigger = Literal["cli", "daemon", "worker"]
"""``sync_runs.trigger``: what started the run."""
DeliveryStatus = Literal["pending", "delivered", "failed"]
"""``notification_deliveries.status``: ``failed`` means given up."""


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


metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _in(column: str, values: Any) -> str:
    """The CHECK text allowing a ``Literal`` type's members, in their order (as the
    migrations spell it out)."""
    return f"{column} IN ({', '.join(repr(v) for v in get_args(values))})"


def _count(name: str, comment: str) -> Column[int]:
    return Column(name, Integer, nullable=False, default=0, comment=comment)


def _account(comment: str) -> Column[str]:
    return Column("account", Text, nullable=False, comment=comment)


accounts = Table(
    "accounts",
    metadata,
    Column(
        "name",
        Text,
        primary_key=True,
        comment="The account's name: lowercase letters, digits, - and _, at most 63; the "
        "account column of every other table and view.",
    ),
    Column("sid", Text, nullable=False, comment="Kaleyra's account id (SID)."),
    Column("pod", Text, comment="Kaleyra's pod, in or na; NULL when base_url is set."),
    Column("base_url", Text, comment="The API's base URL, instead of a pod; NULL otherwise."),
    Column(
        "api_key_env",
        Text,
        comment="The environment variable holding the API key (the key itself is never stored).",
    ),
    Column(
        "api_key_file",
        Text,
        comment="The file holding the API key; with api_key_env NULL too, the key is the file "
        "named after the account in REGIONSYNC_API_KEYS_DIR.",
    ),
    Column(
        "schedule",
        Text,
        comment="The account's own schedule (as REGIONSYNC_SCHEDULE); NULL: the deployment's.",
    ),
    Column(
        "paused_at",
        UTCDateTime,
        comment="When the account was paused (UTC): not synced until resumed; NULL: active.",
    ),
    Column("created_at", UTCDateTime, nullable=False, comment="When the account was added (UTC)."),
    CheckConstraint(f"length(name) BETWEEN 1 AND {ACCOUNT_NAME_MAX}", name="name_length"),
    CheckConstraint(f"name ~ '^[a-z0-9_-]{{1,{ACCOUNT_NAME_MAX}}}$'", name="name_pattern").ddl_if(
        dialect="postgresql"
    ),
    CheckConstraint(
        f"name NOT GLOB '*[^a-z0-9_-]*' AND length(name) BETWEEN 1 AND {ACCOUNT_NAME_MAX}",
        name="name_pattern",
    ).ddl_if(dialect="sqlite"),
    CheckConstraint(_in("pod", Literal["in", "na"]), name="pod"),
    CheckConstraint("(pod IS NULL) <> (base_url IS NULL)", name="one_endpoint"),
    CheckConstraint("api_key_env IS NULL OR api_key_file IS NULL", name="one_key_source"),
    comment="The Kaleyra accounts this deployment syncs, one row each; empty: the KALEYRA_* "
    "settings are the one account, named by REGIONSYNC_ACCOUNT (default: default).",
)


sync_runs = Table(
    "sync_runs",
    metadata,
    Column(
        "id",
        BigId,
        primary_key=True,
        autoincrement=True,
        comment="Run number, increasing (across accounts).",
    ),
    _account("The account synced (accounts.name, or the one account the settings name)."),
    Column("started_at", UTCDateTime, nullable=False, comment="When the run started (UTC)."),
    Column("finished_at", UTCDateTime, comment="When the run ended (UTC); NULL while running."),
    Column(
        "status",
        Text,
        nullable=False,
        comment="running, succeeded, failed, or skipped (another sync held the lock).",
    ),
    Column(
        "trigger",
        Text,
        nullable=False,
        comment="What started the run: cli (regionsync run), daemon, or worker (a fleet replica).",
    ),
    Column(
        "source",
        Text,
        nullable=False,
        comment="Where the data came from: the API URL or file:PATH; never a secret.",
    ),
    _count("fetched", "Records received, duplicates and rejects included."),
    _count("added", "Regions seen for the first time."),
    _count("changed", "Present regions with any stored field changed, tracked or not."),
    _count("unchanged", "Present regions that matched the database exactly."),
    _count("removed", "Regions absent from this sync, newly marked removed."),
    _count("restored", "Removed regions that came back in this sync."),
    _count("rejected", "Records refused as invalid; their regions were left as they were."),
    Column("error", Text, comment="Why the run failed or was skipped, one line; never a secret."),
    CheckConstraint(_in("status", RunStatus), name="status"),
    CheckConstraint(_in("trigger", RunTrigger), name="trigger"),
    UniqueConstraint("account", "id"),
    Index(None, "account", "status", "id"),
    Index(None, "status", "started_at"),
    comment="One row per sync attempt of an account: when, how it ended, and what it counted.",
)

regions = Table(
    "regions",
    metadata,
    Column(
        "account",
        Text,
        primary_key=True,
        comment="The account the region is seen by; regions are keyed by (account, id).",
    ),
    Column("id", Text, primary_key=True, comment="Kaleyra's region id."),
    Column(
        "region_name",
        Text,
        comment="Google's region resource name, e.g. /v1/regions/amx-tracfone.",
    ),
    Column("display_name", Text, comment="Human-readable name, e.g. United States: Tracfone."),
    Column(
        "management_type",
        Text,
        comment="Who manages the region, as Kaleyra sends it (e.g. GOOGLE_MANAGED).",
    ),
    Column(
        "management_type_value", Integer, comment="The management type as Kaleyra's integer code."
    ),
    Column(
        "carrier_enabled",
        Boolean,
        nullable=False,
        comment="Whether the carrier is enabled for the agent in this region (tracked).",
    ),
    Column(
        "hosting_region",
        Text,
        comment="Hosting region as Kaleyra sends it, e.g. NORTH_AMERICA (tracked).",
    ),
    Column(
        "raw", RawJSON, nullable=False, comment="The record exactly as last received from the API."
    ),
    Column(
        "first_seen_at",
        UTCDateTime,
        nullable=False,
        comment="When a sync first received this region (UTC).",
    ),
    Column(
        "updated_at",
        UTCDateTime,
        nullable=False,
        comment="When a stored field last changed, raw and removed_at included (UTC).",
    ),
    Column(
        "removed_at",
        UTCDateTime,
        comment="When a successful sync first missed this region; NULL while it is present.",
    ),
    Index(None, "account", "removed_at"),
    comment="Current state of every region ever seen, per account (rows are never deleted).",
)

region_history = Table(
    "region_history",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True, comment="Row number, increasing."),
    _account("The account whose region changed; with region_id, a row of regions."),
    Column(
        "region_id",
        Text,
        nullable=False,
        comment="The region that changed (regions.id, of the same account).",
    ),
    Column(
        "sync_run_id",
        BigId,
        nullable=False,
        comment="The sync that saw the change (sync_runs.id).",
    ),
    Column(
        "changed_at",
        UTCDateTime,
        nullable=False,
        comment="When that sync received its snapshot (UTC); one value per run.",
    ),
    Column("change", Text, nullable=False, comment="added, changed, removed, or restored."),
    Column(
        "carrier_enabled_before",
        Boolean,
        comment="carrier_enabled before the change; NULL when the region was absent.",
    ),
    Column(
        "carrier_enabled_after",
        Boolean,
        comment="carrier_enabled after the change; NULL when the region is now absent.",
    ),
    Column(
        "hosting_region_before",
        Text,
        comment="hosting_region before the change; NULL when absent or unset.",
    ),
    Column(
        "hosting_region_after",
        Text,
        comment="hosting_region after the change; NULL when absent or unset.",
    ),
    ForeignKeyConstraint(["account", "region_id"], ["regions.account", "regions.id"]),
    ForeignKeyConstraint(["account", "sync_run_id"], ["sync_runs.account", "sync_runs.id"]),
    UniqueConstraint("region_id", "sync_run_id"),
    CheckConstraint(_in("change", HistoryChange), name="change"),
    Index(None, "changed_at"),
    Index(None, "sync_run_id"),
    comment="One row per region per sync in which a tracked field or the region's "
    "presence changed. Befores equal the previous row's afters; NULL means absent.",
)
#: A region's rows in order; on PostgreSQL it covers what the views read (index-only scans).
Index(
    None,
    region_history.c.account,
    region_history.c.region_id,
    region_history.c.changed_at,
    region_history.c.id,
    postgresql_include=["change", "carrier_enabled_after", "hosting_region_after"],
)
#: When each region (re)appeared: keeps active_regions.present_since cheap on a long history.
Index(
    "ix_region_history_appearances",
    region_history.c.account,
    region_history.c.region_id,
    region_history.c.changed_at,
    postgresql_where=region_history.c.change.in_(("added", "restored")),
    sqlite_where=region_history.c.change.in_(("added", "restored")),
)

#: The notification outbox (see docs/notifications.md).
notification_deliveries = Table(
    "notification_deliveries",
    metadata,
    Column(
        "id",
        Text,
        primary_key=True,
        comment="The delivery's stable id, sent as webhook-id on every attempt (msg_...).",
    ),
    _account("The account whose sync this delivery reports."),
    Column(
        "sync_run_id",
        BigId,
        nullable=False,
        comment="The sync whose changes this delivery reports (sync_runs.id).",
    ),
    Column(
        "part",
        Integer,
        nullable=False,
        comment="Which part of the run's changes, from 1; a run is split only past a size limit.",
    ),
    Column(
        "parts",
        Integer,
        nullable=False,
        comment="How many deliveries the run's changes were split into (usually 1).",
    ),
    Column(
        "created_at",
        UTCDateTime,
        nullable=False,
        comment="When the sync's transaction wrote it, or an operator last retried it (UTC).",
    ),
    Column(
        "status",
        Text,
        nullable=False,
        comment="pending (not yet accepted by the receiver), delivered, or failed (given up).",
    ),
    Column("attempts", Integer, nullable=False, comment="HTTP attempts made so far."),
    Column(
        "next_attempt_at",
        UTCDateTime,
        nullable=False,
        comment="While pending: not retried before this time (UTC; backoff or Retry-After).",
    ),
    Column(
        "last_attempt_at",
        UTCDateTime,
        comment="When the latest attempt was made (UTC); NULL before any.",
    ),
    Column(
        "last_error",
        Text,
        comment="Why the latest attempt failed, one line; never a secret.",
    ),
    Column(
        "delivered_at",
        UTCDateTime,
        comment="When the receiver accepted it (UTC); NULL unless delivered.",
    ),
    Column(
        "payload",
        RawJSON,
        nullable=False,
        comment="The notification: run id, time, counts and the changes it reports.",
    ),
    ForeignKeyConstraint(["account", "sync_run_id"], ["sync_runs.account", "sync_runs.id"]),
    UniqueConstraint("sync_run_id", "part"),
    CheckConstraint(_in("status", DeliveryStatus), name="status"),
    Index(None, "status", "next_attempt_at"),
    comment="The notification outbox: one row per webhook delivery of a sync's changes, "
    "written in the sync's transaction and delivered after it commits.",
)

#: What the no-change shortcut remembers (docs/sync.md, *Nothing to do*): per account, the
#: digest of the last answer applied. Any write to the account's ``regions`` rows, by a
#: sync or by hand, deletes its row (a trigger), so a digest here always describes the
#: regions as they are.
applied_answers = Table(
    "applied_answers",
    metadata,
    Column("account", Text, primary_key=True, comment="The account (regions.account)."),
    Column(
        "digest",
        Text,
        nullable=False,
        comment="SHA-256 of the canonical content of the last answer applied.",
    ),
    Column("sync_run_id", BigId, nullable=False, comment="The run that applied it."),
    Column("fetched", Integer, nullable=False, comment="Records that answer held."),
    Column("rejected", Integer, nullable=False, comment="Records of it that were rejected."),
    comment="Internal: the no-change shortcut's memory, one row per account whose regions "
    "have not been written since its last applied answer. Safe to empty at any time.",
)
