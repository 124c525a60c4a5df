"""Migrating to a given revision, which only the tests do (an operator runs
``alembic downgrade``, and ``regionsync migrate`` always goes to head)."""

from __future__ import annotations

from alembic import command
from sqlalchemy.engine import Engine

from regionsync.settings import DEFAULT_ACCOUNT
from regionsync.store.schema import alembic_config, migration_connection


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Downgrade the database to ``revision`` (``base``: no regionsync schema)."""
    config = alembic_config()
    with migration_connection(engine) as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def upgrade(engine: Engine, revision: str, *, account: str = DEFAULT_ACCOUNT) -> None:
    """Upgrade the database to ``revision`` only (``account``: as ``migrate`` passes it)."""
    config = alembic_config()
    config.attributes["account"] = account
    with migration_connection(engine) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
