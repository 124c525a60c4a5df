"""Migrating down, which only the tests do (an operator runs ``alembic downgrade``)."""

from __future__ import annotations

from alembic import command
from sqlalchemy.engine import Engine

from regionsync.store.schema import alembic_config


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Downgrade the database to ``revision`` (``base``: no regionsync schema)."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
