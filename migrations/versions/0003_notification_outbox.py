"""The notification outbox: one row per webhook delivery, written in the sync's transaction.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

A run's pending deliveries commit (or roll back) with its history, so a notification is
never sent for a change that rolled back and never lost for one that committed; delivery
happens after commit and is retried from this table (see docs/notifications.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PAYLOAD_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "notification_deliveries",
        sa.Column(
            "id",
            sa.Text(),
            nullable=False,
            comment="The delivery's stable id, sent as webhook-id on every attempt (msg_...).",
        ),
        sa.Column(
            "sync_run_id",
            BIG_ID,
            nullable=False,
            comment="The sync whose changes this delivery reports (sync_runs.id).",
        ),
        sa.Column(
            "part",
            sa.Integer(),
            nullable=False,
            comment="Which part of the run's changes, from 1; a run is split only past a size limit.",
        ),
        sa.Column(
            "parts",
            sa.Integer(),
            nullable=False,
            comment="How many deliveries the run's changes were split into (usually 1).",
        ),
        sa.Column(
            "created_at",
            TIMESTAMP,
            nullable=False,
            comment="When the sync's transaction wrote it, or an operator last retried it (UTC).",
        ),
        sa.Column(
            "status",
            sa.Text(),
            nullable=False,
            comment="pending (not yet accepted by the receiver), delivered, or failed (given up).",
        ),
        sa.Column(
            "attempts",
            sa.Integer(),
            nullable=False,
            comment="HTTP attempts made so far.",
        ),
        sa.Column(
            "next_attempt_at",
            TIMESTAMP,
            nullable=False,
            comment="While pending: not retried before this time (UTC; backoff or Retry-After).",
        ),
        sa.Column(
            "last_attempt_at",
            TIMESTAMP,
            nullable=True,
            comment="When the latest attempt was made (UTC); NULL before any.",
        ),
        sa.Column(
            "last_error",
            sa.Text(),
            nullable=True,
            comment="Why the latest attempt failed, one line; never a secret.",
        ),
        sa.Column(
            "delivered_at",
            TIMESTAMP,
            nullable=True,
            comment="When the receiver accepted it (UTC); NULL unless delivered.",
        ),
        sa.Column(
            "payload",
            PAYLOAD_JSON,
            nullable=False,
            comment="The notification: run id, time, counts and the changes it reports.",
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_notification_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["sync_run_id"],
            ["sync_runs.id"],
            name=op.f("fk_notification_deliveries_sync_run_id_sync_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_deliveries")),
        sa.UniqueConstraint(
            "sync_run_id", "part", name=op.f("uq_notification_deliveries_sync_run_id_part")
        ),
        comment=(
            "The notification outbox: one row per webhook delivery of a sync's changes, "
            "written in the sync's transaction and delivered after it commits."
        ),
    )
    op.create_index(
        op.f("ix_notification_deliveries_status_next_attempt_at"),
        "notification_deliveries",
        ["status", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_notification_deliveries_status_next_attempt_at"),
        table_name="notification_deliveries",
    )
    op.drop_table("notification_deliveries")
