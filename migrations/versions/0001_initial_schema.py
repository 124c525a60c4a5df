"""Initial schema: regions, region_history, sync_runs and the region_status_intervals view.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RAW_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

REGION_STATUS_INTERVALS = """
CREATE VIEW region_status_intervals AS
SELECT h.region_id,
       r.display_name,
       h.carrier_enabled_after AS carrier_enabled,
       h.hosting_region_after AS hosting_region,
       h.changed_at AS valid_from,
       h.valid_to
FROM (
    SELECT region_id, change, carrier_enabled_after, hosting_region_after, changed_at,
           LEAD(changed_at) OVER (PARTITION BY region_id ORDER BY changed_at, id) AS valid_to
    FROM region_history
) AS h
JOIN regions AS r ON r.id = h.region_id
WHERE h.change <> 'removed'
"""


def _count(name: str, comment: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=False, comment=comment)


def upgrade() -> None:
    op.create_table(
        "sync_runs",
        sa.Column(
            "id", BIG_ID, primary_key=True, autoincrement=True, comment="Run number, increasing."
        ),
        sa.Column("started_at", TIMESTAMP, nullable=False, comment="When the run started (UTC)."),
        sa.Column(
            "finished_at",
            TIMESTAMP,
            nullable=True,
            comment="When the run ended (UTC); NULL while running.",
        ),
        sa.Column(
            "status",
            sa.Text(),
            nullable=False,
            comment="running, succeeded, failed, or skipped (another sync held the lock).",
        ),
        sa.Column(
            "trigger",
            sa.Text(),
            nullable=False,
            comment="What started the run: cli (regionsync run) or daemon.",
        ),
        sa.Column(
            "source",
            sa.Text(),
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
        sa.Column(
            "error",
            sa.Text(),
            nullable=True,
            comment="Why the run failed or was skipped, one line; never a secret.",
        ),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed', 'skipped')",
            name=op.f("ck_sync_runs_status"),
        ),
        sa.CheckConstraint("trigger IN ('cli', 'daemon')", name=op.f("ck_sync_runs_trigger")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
        comment="One row per sync attempt: when, how it ended, and what it counted.",
    )
    op.create_index(op.f("ix_sync_runs_status_started_at"), "sync_runs", ["status", "started_at"])

    op.create_table(
        "regions",
        sa.Column("id", sa.Text(), nullable=False, comment="Kaleyra's region id."),
        sa.Column(
            "region_name",
            sa.Text(),
            nullable=True,
            comment="Google's region resource name, e.g. /v1/regions/amx-tracfone.",
        ),
        sa.Column(
            "display_name",
            sa.Text(),
            nullable=True,
            comment="Human-readable name, e.g. United States: Tracfone.",
        ),
        sa.Column(
            "management_type",
            sa.Text(),
            nullable=True,
            comment="Who manages the region, as Kaleyra sends it (e.g. GOOGLE_MANAGED).",
        ),
        sa.Column(
            "management_type_value",
            sa.Integer(),
            nullable=True,
            comment="The management type as Kaleyra's integer code.",
        ),
        sa.Column(
            "carrier_enabled",
            sa.Boolean(),
            nullable=False,
            comment="Whether the carrier is enabled for the agent in this region (tracked).",
        ),
        sa.Column(
            "hosting_region",
            sa.Text(),
            nullable=True,
            comment="Hosting region as Kaleyra sends it, e.g. NORTH_AMERICA (tracked).",
        ),
        sa.Column(
            "raw",
            RAW_JSON,
            nullable=False,
            comment="The record exactly as last received from the API.",
        ),
        sa.Column(
            "first_seen_at",
            TIMESTAMP,
            nullable=False,
            comment="When a sync first received this region (UTC).",
        ),
        sa.Column(
            "updated_at",
            TIMESTAMP,
            nullable=False,
            comment="When a stored field last changed, raw and removed_at included (UTC).",
        ),
        sa.Column(
            "removed_at",
            TIMESTAMP,
            nullable=True,
            comment="When a successful sync first missed this region; NULL while it is present.",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_regions")),
        comment="Current state of every region ever seen (rows are never deleted).",
    )
    op.create_index(op.f("ix_regions_removed_at"), "regions", ["removed_at"])

    op.create_table(
        "region_history",
        sa.Column(
            "id", BIG_ID, primary_key=True, autoincrement=True, comment="Row number, increasing."
        ),
        sa.Column(
            "region_id", sa.Text(), nullable=False, comment="The region that changed (regions.id)."
        ),
        sa.Column(
            "sync_run_id",
            BIG_ID,
            nullable=False,
            comment="The sync that saw the change (sync_runs.id).",
        ),
        sa.Column(
            "changed_at",
            TIMESTAMP,
            nullable=False,
            comment="When that sync received its snapshot (UTC); one value per run.",
        ),
        sa.Column(
            "change", sa.Text(), nullable=False, comment="added, changed, removed, or restored."
        ),
        sa.Column(
            "carrier_enabled_before",
            sa.Boolean(),
            nullable=True,
            comment="carrier_enabled before the change; NULL when the region was absent.",
        ),
        sa.Column(
            "carrier_enabled_after",
            sa.Boolean(),
            nullable=True,
            comment="carrier_enabled after the change; NULL when the region is now absent.",
        ),
        sa.Column(
            "hosting_region_before",
            sa.Text(),
            nullable=True,
            comment="hosting_region before the change; NULL when absent or unset.",
        ),
        sa.Column(
            "hosting_region_after",
            sa.Text(),
            nullable=True,
            comment="hosting_region after the change; NULL when absent or unset.",
        ),
        sa.CheckConstraint(
            "change IN ('added', 'changed', 'removed', 'restored')",
            name=op.f("ck_region_history_change"),
        ),
        sa.ForeignKeyConstraint(
            ["region_id"], ["regions.id"], name=op.f("fk_region_history_region_id_regions")
        ),
        sa.ForeignKeyConstraint(
            ["sync_run_id"], ["sync_runs.id"], name=op.f("fk_region_history_sync_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_region_history")),
        sa.UniqueConstraint(
            "region_id", "sync_run_id", name=op.f("uq_region_history_region_id_sync_run_id")
        ),
        comment=(
            "One row per region per sync in which a tracked field or the region's presence "
            "changed. Befores equal the previous row's afters; NULL means absent."
        ),
    )
    op.create_index(op.f("ix_region_history_changed_at"), "region_history", ["changed_at"])
    op.create_index(op.f("ix_region_history_sync_run_id"), "region_history", ["sync_run_id"])
    op.create_index(
        op.f("ix_region_history_region_id_changed_at"),
        "region_history",
        ["region_id", "changed_at"],
    )

    op.execute(REGION_STATUS_INTERVALS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS region_status_intervals")
    op.drop_table("region_history")
    op.drop_table("regions")
    op.drop_table("sync_runs")
