"""Migrations shipped inside the package, and the check that the schema is current."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from regionsync.errors import SchemaError
from regionsync.store import translated_errors


def alembic_config() -> Config:
    """An Alembic config pointing at the migrations inside the installed package."""
    config = Config()
    config.set_main_option("script_location", str(files("regionsync.migrations")))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with translated_errors("reading the schema revision"), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Upgrade to head (idempotent); returns the revisions before and after."""
    before = current_revision(engine)
    config = alembic_config()
    with translated_errors("migrating the database"), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return before, head_revision()


def downgrade(engine: Engine, revision: str = "base") -> None:
    config = alembic_config()
    with translated_errors("downgrading the database"), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def require_current(engine: Engine) -> None:
    """Raise :class:`SchemaError` unless the database is migrated to head."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        state = "has no regionsync schema"
    else:
        state = f"is at schema revision {current}, this regionsync needs {head}"
    raise SchemaError(f"the database {state}: run `regionsync migrate`")
