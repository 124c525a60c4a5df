"""Alembic environment: the database comes from regionsync's settings, not alembic.ini.

So ``alembic upgrade head`` and ``regionsync migrate`` always hit the same database. When
regionsync runs a migration itself it passes its open connection in
``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from regionsync.store.engine import connection_schema
from regionsync.store.models import Base
from regionsync.store.schema import ours

config = context.config
target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    schema = create_schema(connection)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=ours,
        compare_type=True,
        # Spelled out only where it is not the default schema anyway (the search_path is the
        # schema alone): autogenerate reflects default-schema tables unqualified.
        version_table_schema=None if schema == connection.dialect.default_schema_name else schema,
    )
    with context.begin_transaction():
        context.run_migrations()


def create_schema(connection: Connection) -> str | None:
    """Create the account's schema if missing (see docs/operations.md, *Several accounts in
    one database*). Checked first: ``IF NOT EXISTS`` still needs CREATE on the database."""
    schema = connection_schema(connection)
    if schema is None:
        return None
    found = connection.execute(
        text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
    ).first()
    if found is None:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    return schema


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        run_on(given)
        return

    from regionsync import logs, store
    from regionsync.settings import Settings

    settings = Settings.from_env()
    logs.configure(level=settings.log_level, fmt="console", secrets=settings.secrets)
    from regionsync.store.schema import migration_connection

    config.attributes.setdefault("account", settings.account)
    engine = store.create_engine(settings)
    try:
        with migration_connection(engine) as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("regionsync's migrations run online only: alembic upgrade head")
run_online()
