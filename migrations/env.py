"""Alembic environment: the database comes from regionsync's settings, not alembic.ini.

So ``alembic upgrade head`` and ``regionsync migrate`` always hit the same database. When
regionsync runs a migration itself it passes its open connection in
``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from regionsync.models import Base

config = context.config
target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        run_on(given)
        return

    from regionsync import logs, store
    from regionsync.settings import Settings

    settings = Settings.from_env()
    logs.configure(level=settings.log_level, fmt="console", secrets=settings.secrets)
    engine = store.create_engine(settings)
    try:
        with engine.connect() as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("regionsync's migrations run online only: alembic upgrade head")
run_online()
