"""The fleet's task queue: procrastinate's schema, and runs started by a worker.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

``regionsync worker`` replicas share the accounts through procrastinate, a task queue kept
in PostgreSQL (docs/fleet.md). Its tables, types and functions (``procrastinate_*``) are
installed here, in the regionsync schema, from the SQL of the procrastinate version
regionsync pins (pyproject.toml: ``procrastinate>=3.10,<3.11``): upgrading procrastinate
past that range comes with a migration applying its own migration scripts in between.
SQLite has no fleet: there, only ``sync_runs.trigger`` learns ``worker``.
"""

from __future__ import annotations

from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TRIGGERS = "trigger IN ('cli', 'daemon', 'worker')"
OLD_TRIGGERS = "trigger IN ('cli', 'daemon')"
TRIGGER_COMMENT = "What started the run: cli (regionsync run), daemon, or worker (a fleet replica)."


def _set_triggers(check: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(op.f("ck_sync_runs_trigger"), "sync_runs", "check")
        op.create_check_constraint(op.f("ck_sync_runs_trigger"), "sync_runs", check)
        return
    # SQLite rebuilds the table: the views that read it go first and come back after,
    # as revision 0004 defines them.
    views = context.script.get_revision("0004").module  # type: ignore[union-attr]
    for view in ("sync_health", "region_changes"):
        op.execute(f"DROP VIEW {view}")
    with op.batch_alter_table("sync_runs", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_sync_runs_trigger"), "check")
        batch.create_check_constraint(op.f("ck_sync_runs_trigger"), check)
    op.execute(views.REGION_CHANGES)
    op.execute(views.SYNC_HEALTH.format(age=views.AGE["sqlite"]))


def upgrade() -> None:
    _set_triggers(TRIGGERS)
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute(f"COMMENT ON COLUMN sync_runs.trigger IS '{TRIGGER_COMMENT}'")
    from procrastinate.schema import SchemaManager

    # Its own SQL, as `procrastinate schema --apply` runs it (% doubled, as it does there:
    # the driver reads a lone % as a placeholder).
    bind.exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))
    # The data dictionary says whose they are (their columns are procrastinate's to document).
    for (table,) in bind.exec_driver_sql(
        "SELECT tablename FROM pg_tables"
        " WHERE schemaname = current_schema() AND tablename LIKE 'procrastinate%%'"
    ).all():
        op.execute(
            f"COMMENT ON TABLE {table} IS 'The fleet''s task queue (procrastinate''s own table;"
            " regionsync worker, docs/fleet.md). Not analytics data.'"
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            "DELETE FROM sync_runs WHERE trigger = 'worker'"
            " AND NOT EXISTS (SELECT 1 FROM region_history h WHERE h.sync_run_id = sync_runs.id)"
            " AND NOT EXISTS (SELECT 1 FROM notification_deliveries d"
            " WHERE d.sync_run_id = sync_runs.id)"
        )
        op.execute("UPDATE sync_runs SET trigger = 'daemon' WHERE trigger = 'worker'")
        for kind, names in _procrastinate_objects(bind).items():
            for name in names:
                op.execute(f"DROP {kind} IF EXISTS {name} CASCADE")
        op.execute(
            "COMMENT ON COLUMN sync_runs.trigger IS "
            "'What started the run: cli (regionsync run) or daemon.'"
        )
    else:
        op.execute("UPDATE sync_runs SET trigger = 'daemon' WHERE trigger = 'worker'")
    _set_triggers(OLD_TRIGGERS)


def _procrastinate_objects(bind: object) -> dict[str, list[str]]:
    """procrastinate's tables, functions and types in this schema, found in the catalogs."""
    run = bind.exec_driver_sql  # type: ignore[attr-defined]
    tables = run(
        "SELECT quote_ident(tablename) FROM pg_tables"
        " WHERE schemaname = current_schema() AND tablename LIKE 'procrastinate%%'"
    ).scalars()
    functions = run(
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate%%'"
    ).scalars()
    types = run(
        "SELECT quote_ident(t.typname) FROM pg_type t"
        " JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE n.nspname = current_schema() AND t.typname LIKE 'procrastinate%%'"
        " AND t.typtype IN ('e', 'c') AND NOT EXISTS"
        " (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid AND c.relkind <> 'c')"
    ).scalars()
    return {"TABLE": list(tables), "FUNCTION": list(functions), "TYPE": list(types)}
