"""Accounts as rows: the ``accounts`` table, an ``account`` column everywhere, and the
no-change shortcut's memory.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

Existing rows go to the account the settings name (``REGIONSYNC_ACCOUNT``, default
``default``), passed in by ``regionsync migrate`` (``config.attributes["account"]``).
``regions`` is keyed by (account, id) and history and runs reference it by both, so the
views are rebuilt with an ``account`` column. SQLite cannot change a primary key in place:
its tables are rebuilt (Alembic's batch mode), with foreign keys checked before commit
instead of statement by statement (``regionsync.store.schema.migration_connection``).

``applied_answers`` is what the no-change shortcut remembers; triggers delete an account's
row whenever its regions are written, by a sync or by hand (docs/sync.md, *Nothing to do*).
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ACCOUNT_NAME = re.compile(r"[a-z0-9_-]{1,63}")
TABLES = ("sync_runs", "regions", "region_history", "notification_deliveries")
VIEWS = (
    "region_status_intervals",
    "active_regions",
    "region_changes",
    "sync_health",
    "region_status_daily",
)
ACCOUNT_COMMENTS = {
    "sync_runs": "The account synced (accounts.name, or the one account the settings name).",
    "regions": "The account the region is seen by; regions are keyed by (account, id).",
    "region_history": "The account whose region changed; with region_id, a row of regions.",
    "notification_deliveries": "The account whose sync this delivery reports.",
}

REGION_STATUS_INTERVALS = """
CREATE VIEW region_status_intervals AS
SELECT h.account,
       h.region_id,
       r.display_name,
       h.carrier_enabled_after AS carrier_enabled,
       h.hosting_region_after AS hosting_region,
       h.changed_at AS valid_from,
       h.valid_to
FROM (
    SELECT account, region_id, change, carrier_enabled_after, hosting_region_after, changed_at,
           LEAD(changed_at) OVER (PARTITION BY account, region_id ORDER BY changed_at, id)
             AS valid_to
    FROM region_history
) AS h
JOIN regions AS r ON r.account = h.account AND r.id = h.region_id
WHERE h.change <> 'removed'
"""

ACTIVE_REGIONS = """
CREATE VIEW active_regions AS
SELECT r.account,
       r.id AS region_id,
       r.region_name,
       r.display_name,
       r.management_type,
       r.management_type_value,
       r.carrier_enabled,
       r.hosting_region,
       (SELECT max(h.changed_at) FROM region_history AS h
         WHERE h.account = r.account AND h.region_id = r.id
           AND h.change IN ('added', 'restored')) AS present_since,
       r.first_seen_at,
       r.updated_at
FROM regions AS r
WHERE r.removed_at IS NULL
"""

REGION_CHANGES = """
CREATE VIEW region_changes AS
SELECT h.account,
       h.id AS history_id,
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
JOIN regions AS r ON r.account = h.account AND r.id = h.region_id
JOIN sync_runs AS s ON s.account = h.account AND s.id = h.sync_run_id
ORDER BY h.changed_at DESC, h.id DESC
"""

# One row per account: those in the accounts table, or, while it is empty, those that ran
# (the one account of a deployment configured by its settings). Every lookup is by account
# on an index, so the view costs the same per account however long sync_runs grows.
SYNC_HEALTH = """
CREATE VIEW sync_health AS
SELECT a.account,
       acc.paused_at,
       last_run.id AS last_run_id,
       last_run.status AS last_run_status,
       last_run.started_at AS last_run_started_at,
       last_run.finished_at AS last_run_finished_at,
       last_run.error AS last_run_error,
       success.finished_at AS last_success_at,
       {age} AS last_success_age_seconds,
       (SELECT count(*) FROM sync_runs AS f
         WHERE f.account = a.account AND f.status = 'failed'
           AND f.id > coalesce((SELECT max(id) FROM sync_runs AS s
                                 WHERE s.account = a.account AND s.status = 'succeeded'), 0)
       ) AS consecutive_failures,
       (SELECT count(*) FROM regions AS r
         WHERE r.account = a.account AND r.removed_at IS NULL) AS active_regions,
       (SELECT count(*) FROM regions AS r
         WHERE r.account = a.account AND r.removed_at IS NOT NULL) AS removed_regions
FROM (
    SELECT name AS account FROM accounts
    UNION
    SELECT DISTINCT account FROM sync_runs WHERE NOT EXISTS (SELECT 1 FROM accounts)
) AS a
LEFT JOIN accounts AS acc ON acc.name = a.account
LEFT JOIN sync_runs AS last_run
       ON last_run.id = (SELECT max(id) FROM sync_runs WHERE account = a.account)
LEFT JOIN sync_runs AS success
       ON success.id = (SELECT max(id) FROM sync_runs
                         WHERE account = a.account AND status = 'succeeded')
"""
AGE = {
    "postgresql": "CAST(extract(epoch FROM now() - success.finished_at) AS double precision)",
    "sqlite": "(julianday('now') - julianday(success.finished_at)) * 86400.0",
}

REGION_STATUS_DAILY = """
CREATE VIEW region_status_daily AS
SELECT h.account,
       h.first_day + d.n AS day,
       h.region_id,
       r.display_name,
       h.change <> 'removed' AS present,
       h.carrier_enabled_after AS carrier_enabled,
       h.hosting_region_after AS hosting_region
FROM (
    SELECT account, region_id, change, carrier_enabled_after, hosting_region_after,
           (changed_at AT TIME ZONE 'UTC')::date AS first_day,
           (LEAD(changed_at) OVER (PARTITION BY account, region_id ORDER BY changed_at, id)
                AT TIME ZONE 'UTC')::date - 1 AS last_day
    FROM region_history
) AS h
JOIN regions AS r ON r.account = h.account AND r.id = h.region_id
CROSS JOIN LATERAL generate_series(
    0, coalesce(h.last_day, (now() AT TIME ZONE 'UTC')::date) - h.first_day
) AS d(n)
"""

ACCOUNT = "The account (accounts.name); GROUP BY it to compare accounts."
VIEW_COMMENTS = {
    "region_status_intervals": (
        "One row per period in which a present region of an account had fixed tracked "
        "values. Removals end an interval, restorations start one; a region's intervals "
        "never overlap.",
        {
            "account": ACCOUNT,
            "region_id": "The region (regions.id).",
            "display_name": "The region's current display name.",
            "carrier_enabled": "Whether the carrier was enabled during the interval.",
            "hosting_region": "The hosting region during the interval.",
            "valid_from": "Start of the interval (UTC): when a sync received the change.",
            "valid_to": "End of the interval (UTC), exclusive; NULL while it is current.",
        },
    ),
    "active_regions": (
        "Regions present in each account's last successful sync, with their current values.",
        {
            "account": ACCOUNT,
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
            "account": ACCOUNT,
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
        "One row per account (those in accounts; while it is empty, those that have run): "
        "the state of its syncing, for a dashboard tile or an alert.",
        {
            "account": ACCOUNT,
            "paused_at": "When the account was paused (UTC); NULL while it is active.",
            "last_run_id": "The account's latest sync attempt (sync_runs.id); NULL before any.",
            "last_run_status": "Its status: running, succeeded, failed, or skipped.",
            "last_run_started_at": "When it started (UTC).",
            "last_run_finished_at": "When it finished (UTC); NULL while running.",
            "last_run_error": "Why it failed or was skipped; NULL otherwise.",
            "last_success_at": "When the latest successful sync finished (UTC); NULL if none.",
            "last_success_age_seconds": "Seconds since then: how fresh the data is.",
            "consecutive_failures": "Failed runs since the last success (skipped ones not counted).",
            "active_regions": "Regions present in the account's last successful sync.",
            "removed_regions": "Regions absent since a successful sync.",
        },
    ),
    "region_status_daily": (
        "One row per region per account per UTC day, from the day it was first seen to "
        "today, with its state at the end of that day (today: now). For time-series charts.",
        {
            "account": ACCOUNT,
            "day": "The UTC calendar day.",
            "region_id": "The region (regions.id).",
            "display_name": "The region's current display name.",
            "present": "Whether the region was present in the API at the end of the day.",
            "carrier_enabled": "carrier_enabled at the end of the day; NULL when absent.",
            "hosting_region": "hosting_region at the end of the day; NULL when absent.",
        },
    ),
}

# The no-change shortcut's memory is forgotten by any write to the account's regions.
PG_FORGET = """
CREATE FUNCTION regionsync_forget_applied_answer() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM applied_answers;
    ELSIF TG_OP = 'DELETE' THEN
        DELETE FROM applied_answers WHERE account IN (SELECT account FROM old_rows);
    ELSIF TG_OP = 'INSERT' THEN
        DELETE FROM applied_answers WHERE account IN (SELECT account FROM new_rows);
    ELSE
        DELETE FROM applied_answers
         WHERE account IN (SELECT account FROM old_rows UNION SELECT account FROM new_rows);
    END IF;
    RETURN NULL;
END
$$
"""
PG_TRIGGERS = {
    "insert": "AFTER INSERT ON regions REFERENCING NEW TABLE AS new_rows",
    "update": "AFTER UPDATE ON regions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "AFTER DELETE ON regions REFERENCING OLD TABLE AS old_rows",
    "truncate": "AFTER TRUNCATE ON regions",
}
SQLITE_TRIGGERS = {
    "insert": "AFTER INSERT ON regions BEGIN "
    "DELETE FROM applied_answers WHERE account = NEW.account; END",
    "update": "AFTER UPDATE ON regions BEGIN "
    "DELETE FROM applied_answers WHERE account IN (OLD.account, NEW.account); END",
    "delete": "AFTER DELETE ON regions BEGIN "
    "DELETE FROM applied_answers WHERE account = OLD.account; END",
}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _existing_account() -> str:
    """The name existing rows go to: ``regionsync migrate`` passes REGIONSYNC_ACCOUNT."""
    name = context.config.attributes.get("account", "default")
    if not isinstance(name, str) or ACCOUNT_NAME.fullmatch(name) is None:
        raise ValueError(f"not an account name: {name!r}")
    return name


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    account = _existing_account()
    _create_accounts(dialect)
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    for table in TABLES:
        op.add_column(
            table,
            sa.Column(
                "account",
                sa.Text(),
                nullable=False,
                server_default=account,
                comment=ACCOUNT_COMMENTS[table],
            ),
        )
    if dialect == "postgresql":
        _rekey_postgresql()
    else:
        _rekey_sqlite()
    _create_applied_answers(dialect)
    op.execute(REGION_STATUS_INTERVALS)
    op.execute(ACTIVE_REGIONS)
    op.execute(REGION_CHANGES)
    op.execute(SYNC_HEALTH.format(age=AGE[dialect]))
    if dialect != "postgresql":
        return
    op.execute(REGION_STATUS_DAILY)
    for view in VIEWS:
        # Read with the reader's rights, so that row-level security (grant-readonly
        # --account) limits a view as it limits the tables under it.
        op.execute(f"ALTER VIEW {view} SET (security_invoker = true)")
    for name, (comment, columns) in VIEW_COMMENTS.items():
        op.execute(f"COMMENT ON VIEW {name} IS {_quote(comment)}")
        for column, text in columns.items():
            op.execute(f"COMMENT ON COLUMN {name}.{column} IS {_quote(text)}")
    op.execute("COMMENT ON COLUMN sync_runs.id IS 'Run number, increasing (across accounts).'")
    op.execute(
        "COMMENT ON TABLE sync_runs IS 'One row per sync attempt of an account: when, how it "
        "ended, and what it counted.'"
    )
    op.execute(
        "COMMENT ON TABLE regions IS 'Current state of every region ever seen, per account "
        "(rows are never deleted).'"
    )
    op.execute(
        "COMMENT ON COLUMN region_history.region_id IS "
        "'The region that changed (regions.id, of the same account).'"
    )


def _create_accounts(dialect: str) -> None:
    name_pattern = (
        "name ~ '^[a-z0-9_-]{1,63}$'"
        if dialect == "postgresql"
        else "name NOT GLOB '*[^a-z0-9_-]*' AND length(name) BETWEEN 1 AND 63"
    )
    op.create_table(
        "accounts",
        sa.Column(
            "name",
            sa.Text(),
            nullable=False,
            comment="The account's name: lowercase letters, digits, - and _, at most 63; the "
            "account column of every other table and view.",
        ),
        sa.Column("sid", sa.Text(), nullable=False, comment="Kaleyra's account id (SID)."),
        sa.Column("pod", sa.Text(), comment="Kaleyra's pod, in or na; NULL when base_url is set."),
        sa.Column(
            "base_url", sa.Text(), comment="The API's base URL, instead of a pod; NULL otherwise."
        ),
        sa.Column(
            "api_key_env",
            sa.Text(),
            comment="The environment variable holding the API key (the key itself is never "
            "stored).",
        ),
        sa.Column(
            "api_key_file",
            sa.Text(),
            comment="The file holding the API key; with api_key_env NULL too, the key is the "
            "file named after the account in REGIONSYNC_API_KEYS_DIR.",
        ),
        sa.Column(
            "schedule",
            sa.Text(),
            comment="The account's own schedule (as REGIONSYNC_SCHEDULE); NULL: the deployment's.",
        ),
        sa.Column(
            "paused_at",
            TIMESTAMP,
            comment="When the account was paused (UTC): not synced until resumed; NULL: active.",
        ),
        sa.Column(
            "created_at", TIMESTAMP, nullable=False, comment="When the account was added (UTC)."
        ),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 63", name=op.f("ck_accounts_name_length")),
        sa.CheckConstraint(name_pattern, name=op.f("ck_accounts_name_pattern")),
        sa.CheckConstraint("pod IN ('in', 'na')", name=op.f("ck_accounts_pod")),
        sa.CheckConstraint(
            "(pod IS NULL) <> (base_url IS NULL)", name=op.f("ck_accounts_one_endpoint")
        ),
        sa.CheckConstraint(
            "api_key_env IS NULL OR api_key_file IS NULL",
            name=op.f("ck_accounts_one_key_source"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_accounts")),
        comment="The Kaleyra accounts this deployment syncs, one row each; empty: the "
        "KALEYRA_* settings are the one account, named by REGIONSYNC_ACCOUNT (default: "
        "default).",
    )


def _rekey_postgresql() -> None:
    for table in TABLES:
        op.alter_column(table, "account", server_default=None)
    op.drop_constraint("fk_region_history_region_id_regions", "region_history", "foreignkey")
    op.drop_constraint("fk_region_history_sync_run_id_sync_runs", "region_history", "foreignkey")
    op.drop_constraint(
        "fk_notification_deliveries_sync_run_id_sync_runs",
        "notification_deliveries",
        "foreignkey",
    )
    op.drop_constraint("pk_regions", "regions", "primary")
    op.create_primary_key("pk_regions", "regions", ["account", "id"])
    op.create_unique_constraint("uq_sync_runs_account_id", "sync_runs", ["account", "id"])
    _foreign_keys(op)
    op.drop_index("ix_regions_removed_at", table_name="regions")
    op.drop_index("ix_region_history_region_id_changed_at_id", table_name="region_history")
    op.drop_index("ix_region_history_appearances", table_name="region_history")
    _indexes(op, include=True)


def _rekey_sqlite() -> None:
    """SQLite: rebuild each table with its new keys (the copy keeps every row)."""
    with op.batch_alter_table("sync_runs", recreate="always") as batch:
        batch.alter_column("account", server_default=None)
        batch.create_unique_constraint("uq_sync_runs_account_id", ["account", "id"])
    with op.batch_alter_table("regions", recreate="always") as batch:
        batch.alter_column("account", server_default=None)
        batch.drop_constraint("pk_regions", "primary")
        batch.create_primary_key("pk_regions", ["account", "id"])
        batch.drop_index("ix_regions_removed_at")
    for table, old_keys in (
        (
            "region_history",
            ("fk_region_history_region_id_regions", "fk_region_history_sync_run_id_sync_runs"),
        ),
        ("notification_deliveries", ("fk_notification_deliveries_sync_run_id_sync_runs",)),
    ):
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.alter_column("account", server_default=None)
            for key in old_keys:
                batch.drop_constraint(key, "foreignkey")
            if table == "region_history":
                batch.drop_index("ix_region_history_region_id_changed_at_id")
                batch.drop_index("ix_region_history_appearances")
    for table in ("region_history", "notification_deliveries"):
        with op.batch_alter_table(table, recreate="always") as batch:
            _foreign_keys(batch, table)
    _indexes(op, include=False)


def _foreign_keys(target: object, only: str | None = None) -> None:
    """History and deliveries reference regions and runs by account too."""
    keys = (
        ("fk_region_history_account_regions", "region_history", "regions", "region_id"),
        ("fk_region_history_account_sync_runs", "region_history", "sync_runs", "sync_run_id"),
        (
            "fk_notification_deliveries_account_sync_runs",
            "notification_deliveries",
            "sync_runs",
            "sync_run_id",
        ),
    )
    for name, table, referred, column in keys:
        if only is None:
            op.create_foreign_key(name, table, referred, ["account", column], ["account", "id"])
        elif table == only:
            target.create_foreign_key(name, referred, ["account", column], ["account", "id"])  # type: ignore[attr-defined]


def _indexes(target: object, *, include: bool) -> None:
    op.create_index("ix_regions_account_removed_at", "regions", ["account", "removed_at"])
    op.create_index("ix_sync_runs_account_status_id", "sync_runs", ["account", "status", "id"])
    covering = " INCLUDE (change, carrier_enabled_after, hosting_region_after)" if include else ""
    op.execute(
        "CREATE INDEX ix_region_history_account_region_id_changed_at_id"
        " ON region_history (account, region_id, changed_at, id)" + covering
    )
    op.execute(
        "CREATE INDEX ix_region_history_appearances"
        " ON region_history (account, region_id, changed_at)"
        " WHERE change IN ('added', 'restored')"
    )


def _create_applied_answers(dialect: str) -> None:
    op.create_table(
        "applied_answers",
        sa.Column("account", sa.Text(), nullable=False, comment="The account (regions.account)."),
        sa.Column(
            "digest",
            sa.Text(),
            nullable=False,
            comment="SHA-256 of the canonical content of the last answer applied.",
        ),
        sa.Column("sync_run_id", BIG_ID, nullable=False, comment="The run that applied it."),
        sa.Column("fetched", sa.Integer(), nullable=False, comment="Records that answer held."),
        sa.Column(
            "rejected", sa.Integer(), nullable=False, comment="Records of it that were rejected."
        ),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_applied_answers")),
        comment="Internal: the no-change shortcut's memory, one row per account whose regions "
        "have not been written since its last applied answer. Safe to empty at any time.",
    )
    if dialect == "postgresql":
        op.execute(PG_FORGET)
        for event, when in PG_TRIGGERS.items():
            level = "STATEMENT"
            op.execute(
                f"CREATE TRIGGER regionsync_forget_answer_on_{event} {when} "
                f"FOR EACH {level} EXECUTE FUNCTION regionsync_forget_applied_answer()"
            )
    else:
        for event, body in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER regionsync_forget_answer_on_{event} {body}")


def downgrade() -> None:
    """Back to one account per schema: refused while two accounts have rows."""
    bind = op.get_bind()
    dialect = bind.dialect.name
    found = bind.exec_driver_sql(
        "SELECT count(*) FROM (SELECT account FROM sync_runs UNION SELECT account FROM regions)"
        " AS a"
    ).scalar_one()
    if found > 1:
        raise RuntimeError(
            f"cannot downgrade below 0004: {found} accounts have rows, and 0003 keeps one"
        )
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    if dialect == "postgresql":
        # grant-readonly --account's row-level security depends on the account columns.
        policies = bind.exec_driver_sql(
            "SELECT policyname, tablename FROM pg_policies"
            " WHERE schemaname = current_schema() AND policyname LIKE 'regionsync%%'"
        ).all()
        for policy, table in policies:
            op.execute(f'DROP POLICY "{policy}" ON "{table}"')
        for table in (*TABLES, "accounts", "applied_answers"):
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for event in (*SQLITE_TRIGGERS, *PG_TRIGGERS):
        op.execute(
            f"DROP TRIGGER IF EXISTS regionsync_forget_answer_on_{event}"
            + (" ON regions" if dialect == "postgresql" else "")
        )
    if dialect == "postgresql":
        op.execute("DROP FUNCTION regionsync_forget_applied_answer()")
    op.drop_table("applied_answers")
    for index, table in (
        ("ix_region_history_appearances", "region_history"),
        ("ix_region_history_account_region_id_changed_at_id", "region_history"),
        ("ix_sync_runs_account_status_id", "sync_runs"),
        ("ix_regions_account_removed_at", "regions"),
    ):
        op.drop_index(index, table_name=table)
    old = context.script.get_revision("0002").module  # type: ignore[union-attr]
    initial = context.script.get_revision("0001").module  # type: ignore[union-attr]
    if dialect == "postgresql":
        for name, table in (
            ("fk_region_history_account_regions", "region_history"),
            ("fk_region_history_account_sync_runs", "region_history"),
            ("fk_notification_deliveries_account_sync_runs", "notification_deliveries"),
        ):
            op.drop_constraint(name, table, "foreignkey")
        op.drop_constraint("uq_sync_runs_account_id", "sync_runs", "unique")
        op.drop_constraint("pk_regions", "regions", "primary")
        for table in TABLES:
            op.drop_column(table, "account")
        op.create_primary_key("pk_regions", "regions", ["id"])
        _old_foreign_keys(None)
    else:
        for table in ("region_history", "notification_deliveries"):
            with op.batch_alter_table(table, recreate="always") as batch:
                for name, owner, *_ in _OLD_KEYS:
                    if owner == table:
                        batch.drop_constraint(
                            name.replace("_sync_run_id_", "_account_").replace(
                                "_region_id_", "_account_"
                            ),
                            "foreignkey",
                        )
                batch.drop_column("account")
        with op.batch_alter_table("sync_runs", recreate="always") as batch:
            batch.drop_constraint("uq_sync_runs_account_id", "unique")
            batch.drop_column("account")
        with op.batch_alter_table("regions", recreate="always") as batch:
            batch.drop_constraint("pk_regions", "primary")
            batch.drop_column("account")
            batch.create_primary_key("pk_regions", ["id"])
        for table in ("region_history", "notification_deliveries"):
            with op.batch_alter_table(table, recreate="always") as batch:
                _old_foreign_keys(batch, table)
    op.drop_table("accounts")
    op.create_index("ix_regions_removed_at", "regions", ["removed_at"])
    op.execute(old.APPEARANCES_INDEX)
    op.execute(
        old.REGION_ORDER_INDEX + (old.REGION_ORDER_INCLUDE if dialect == "postgresql" else "")
    )
    op.execute(initial.REGION_STATUS_INTERVALS)
    op.execute(old.ACTIVE_REGIONS)
    op.execute(old.REGION_CHANGES)
    op.execute(old.SYNC_HEALTH.format(age=old.AGE[dialect]))
    if dialect == "postgresql":
        op.execute(old.REGION_STATUS_DAILY)
        for name, (comment, columns) in old.COMMENTS.items():
            if name == "alembic_version":
                continue
            op.execute(f"COMMENT ON VIEW {name} IS {_quote(comment)}")
            for column, text in columns.items():
                op.execute(f"COMMENT ON COLUMN {name}.{column} IS {_quote(text)}")


_OLD_KEYS = (
    ("fk_region_history_region_id_regions", "region_history", "regions", "region_id"),
    ("fk_region_history_sync_run_id_sync_runs", "region_history", "sync_runs", "sync_run_id"),
    (
        "fk_notification_deliveries_sync_run_id_sync_runs",
        "notification_deliveries",
        "sync_runs",
        "sync_run_id",
    ),
)


def _old_foreign_keys(batch: object, only: str | None = None) -> None:
    for name, table, referred, column in _OLD_KEYS:
        if batch is None:
            op.create_foreign_key(name, table, referred, [column], ["id"])
        elif table == only:
            batch.create_foreign_key(name, referred, [column], ["id"])  # type: ignore[attr-defined]
