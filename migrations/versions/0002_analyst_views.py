"""Views for analysts and BI tools, and a data dictionary of comments on every view.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

``active_regions``, ``region_changes`` and ``sync_health`` on both databases;
``region_status_daily`` on PostgreSQL only (it needs ``generate_series`` and LATERAL).
Comments are PostgreSQL only: SQLite has no ``COMMENT ON``. Two indexes serve the views on
a long history: one on when regions (re)appeared, and one on each region's rows in order,
replacing 0001's ``(region_id, changed_at)``.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTIVE_REGIONS = """
CREATE VIEW active_regions AS
SELECT r.id AS region_id,
       r.region_name,
       r.display_name,
       r.management_type,
       r.management_type_value,
       r.carrier_enabled,
       r.hosting_region,
       (SELECT max(h.changed_at) FROM region_history AS h
         WHERE h.region_id = r.id AND h.change IN ('added', 'restored')) AS present_since,
       r.first_seen_at,
       r.updated_at
FROM regions AS r
WHERE r.removed_at IS NULL
"""

REGION_CHANGES = """
CREATE VIEW region_changes AS
SELECT h.id AS history_id,
       h.changed_at,
       h.region_id,
       r.display_name,
       r.region_name,
       h.change,
       h.carrier_enabled_before,
       h.carrier_enabled_after,
       h.hosting_region_before,
       h.hosting_region_after,
       h.sync_run_id,
       s.trigger AS sync_trigger,
       s.source AS sync_source,
       s.started_at AS sync_started_at
FROM region_history AS h
JOIN regions AS r ON r.id = h.region_id
JOIN sync_runs AS s ON s.id = h.sync_run_id
ORDER BY h.changed_at DESC, h.id DESC
"""

SYNC_HEALTH = """
CREATE VIEW sync_health AS
SELECT last_run.id AS last_run_id,
       last_run.status AS last_run_status,
       last_run.started_at AS last_run_started_at,
       last_run.finished_at AS last_run_finished_at,
       last_run.error AS last_run_error,
       success.finished_at AS last_success_at,
       {age} AS last_success_age_seconds,
       (SELECT count(*) FROM sync_runs AS f
         WHERE f.status = 'failed'
           AND f.id > coalesce((SELECT max(id) FROM sync_runs WHERE status = 'succeeded'), 0)
       ) AS consecutive_failures,
       (SELECT count(*) FROM regions WHERE removed_at IS NULL) AS active_regions,
       (SELECT count(*) FROM regions WHERE removed_at IS NOT NULL) AS removed_regions
FROM (SELECT 1 AS one) AS anchor
LEFT JOIN sync_runs AS last_run ON last_run.id = (SELECT max(id) FROM sync_runs)
LEFT JOIN sync_runs AS success
       ON success.id = (SELECT max(id) FROM sync_runs WHERE status = 'succeeded')
"""
AGE = {
    "postgresql": "CAST(extract(epoch FROM now() - success.finished_at) AS double precision)",
    "sqlite": "(julianday('now') - julianday(success.finished_at)) * 86400.0",
}

# Each history row is the end-of-day state from the day of its change (UTC) to the day
# before the region's next change, or to today: one pass over the history, which is much
# cheaper than looking up every (region, day) pair, and exact at midnight.
REGION_STATUS_DAILY = """
CREATE VIEW region_status_daily AS
SELECT h.first_day + d.n AS day,
       h.region_id,
       r.display_name,
       h.change <> 'removed' AS present,
       h.carrier_enabled_after AS carrier_enabled,
       h.hosting_region_after AS hosting_region
FROM (
    SELECT region_id, change, carrier_enabled_after, hosting_region_after,
           (changed_at AT TIME ZONE 'UTC')::date AS first_day,
           (LEAD(changed_at) OVER (PARTITION BY region_id ORDER BY changed_at, id)
                AT TIME ZONE 'UTC')::date - 1 AS last_day
    FROM region_history
) AS h
JOIN regions AS r ON r.id = h.region_id
CROSS JOIN LATERAL generate_series(
    0, coalesce(h.last_day, (now() AT TIME ZONE 'UTC')::date) - h.first_day
) AS d(n)
"""

COMMENTS = {
    "alembic_version": (
        "Alembic's record of the schema revision; `regionsync migrate` maintains it.",
        {"version_num": "The schema revision this database is at."},
    ),
    "region_status_intervals": (
        "One row per period in which a present region had fixed tracked values. Removals "
        "end an interval, restorations start one; a region's intervals never overlap.",
        {
            "region_id": "The region (regions.id).",
            "display_name": "The region's current display name.",
            "carrier_enabled": "Whether the carrier was enabled during the interval.",
            "hosting_region": "The hosting region during the interval.",
            "valid_from": "Start of the interval (UTC): when a sync received the change.",
            "valid_to": "End of the interval (UTC), exclusive; NULL while it is current.",
        },
    ),
    "active_regions": (
        "Regions present in the last successful sync, with their current values.",
        {
            "region_id": "Kaleyra's region id (regions.id).",
            "region_name": "Google's region resource name.",
            "display_name": "Human-readable name.",
            "management_type": "Who manages the region, as Kaleyra sends it.",
            "management_type_value": "The management type as Kaleyra's integer code.",
            "carrier_enabled": "Whether the carrier is enabled for the agent in this region.",
            "hosting_region": "Hosting region as Kaleyra sends it.",
            "present_since": "When the region last appeared (added or restored), UTC.",
            "first_seen_at": "When a sync first received this region (UTC).",
            "updated_at": "When a stored field last changed (UTC).",
        },
    ),
    "region_changes": (
        "region_history made readable: one row per change with the region's names and the "
        "sync it came from, newest first (order explicitly in your own queries).",
        {
            "history_id": "region_history.id; increases with time.",
            "changed_at": "When the sync received the change (UTC).",
            "region_id": "The region that changed.",
            "display_name": "The region's current display name.",
            "region_name": "The region's current resource name.",
            "change": "added, changed, removed, or restored.",
            "carrier_enabled_before": "carrier_enabled before; NULL when the region was absent.",
            "carrier_enabled_after": "carrier_enabled after; NULL when it is now absent.",
            "hosting_region_before": "hosting_region before; NULL when absent or unset.",
            "hosting_region_after": "hosting_region after; NULL when absent or unset.",
            "sync_run_id": "The sync that saw the change (sync_runs.id).",
            "sync_trigger": "What started that sync: cli or daemon.",
            "sync_source": "Where that sync's data came from (API URL or file).",
            "sync_started_at": "When that sync started (UTC).",
        },
    ),
    "sync_health": (
        "Exactly one row: the state of syncing, for a dashboard tile or an alert.",
        {
            "last_run_id": "The latest sync attempt (sync_runs.id); NULL before any.",
            "last_run_status": "Its status: running, succeeded, failed, or skipped.",
            "last_run_started_at": "When it started (UTC).",
            "last_run_finished_at": "When it finished (UTC); NULL while running.",
            "last_run_error": "Why it failed or was skipped; NULL otherwise.",
            "last_success_at": "When the latest successful sync finished (UTC); NULL if none.",
            "last_success_age_seconds": "Seconds since then: how fresh the data is.",
            "consecutive_failures": "Failed runs since the last success (skipped ones not counted).",
            "active_regions": "Regions present in the last successful sync.",
            "removed_regions": "Regions absent since a successful sync.",
        },
    ),
    "region_status_daily": (
        "One row per region per UTC day, from the day it was first seen to today, with its "
        "state at the end of that day (today: now). For time-series charts.",
        {
            "day": "The UTC calendar day.",
            "region_id": "The region (regions.id).",
            "display_name": "The region's current display name.",
            "present": "Whether the region was present in the API at the end of the day.",
            "carrier_enabled": "carrier_enabled at the end of the day; NULL when absent.",
            "hosting_region": "hosting_region at the end of the day; NULL when absent.",
        },
    ),
}

ANALYST_VIEWS = ("active_regions", "region_changes", "sync_health", "region_status_daily")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


APPEARANCES_INDEX = (
    "CREATE INDEX ix_region_history_appearances ON region_history (region_id, changed_at)"
    " WHERE change IN ('added', 'restored')"
)
# Replaces 0001's (region_id, changed_at): the same prefix, in the exact order of the views'
# windows, and on PostgreSQL covering what they read, so a region-ordered pass over the
# history is an index-only scan instead of a random read of every heap page.
REGION_ORDER_INDEX = (
    "CREATE INDEX ix_region_history_region_id_changed_at_id"
    " ON region_history (region_id, changed_at, id)"
)
REGION_ORDER_INCLUDE = " INCLUDE (change, carrier_enabled_after, hosting_region_after)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(APPEARANCES_INDEX)
    op.execute(REGION_ORDER_INDEX + (REGION_ORDER_INCLUDE if dialect == "postgresql" else ""))
    op.execute("DROP INDEX ix_region_history_region_id_changed_at")
    op.execute(ACTIVE_REGIONS)
    op.execute(REGION_CHANGES)
    op.execute(SYNC_HEALTH.format(age=AGE[dialect]))
    if dialect != "postgresql":
        return
    op.execute(REGION_STATUS_DAILY)
    for name, (comment, columns) in COMMENTS.items():
        kind = "TABLE" if name == "alembic_version" else "VIEW"
        op.execute(f"COMMENT ON {kind} {name} IS {_quote(comment)}")
        for column, text in columns.items():
            op.execute(f"COMMENT ON COLUMN {name}.{column} IS {_quote(text)}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name in reversed(ANALYST_VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute("DROP INDEX ix_region_history_appearances")
    op.execute(
        "CREATE INDEX ix_region_history_region_id_changed_at"
        " ON region_history (region_id, changed_at)"
    )
    op.execute("DROP INDEX ix_region_history_region_id_changed_at_id")
    if dialect == "postgresql":
        op.execute("COMMENT ON TABLE alembic_version IS NULL")
        op.execute("COMMENT ON COLUMN alembic_version.version_num IS NULL")
        op.execute("COMMENT ON VIEW region_status_intervals IS NULL")
        for column in COMMENTS["region_status_intervals"][1]:
            op.execute(f"COMMENT ON COLUMN region_status_intervals.{column} IS NULL")
