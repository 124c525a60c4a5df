"""Migrations shipped inside the package, and the check that the schema is current."""

from __future__ import annotations

import importlib.util
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from regionsync.errors import SchemaError
from regionsync.store import translated_errors


def migrations_directory() -> Path:
    """Where the Alembic scripts are, however regionsync was imported.

    Installed (plain or editable), they are the package ``regionsync.migrations``. Imported
    from a checkout's source tree (``python -m regionsync`` at the repository's root, which
    shadows an installed copy), that package does not exist: the scripts are the
    repository's ``migrations/``, beside the ``regionsync/`` folder.
    """
    try:
        found = importlib.util.find_spec("regionsync.migrations") is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return Path(str(files("regionsync.migrations")))
    checkout = Path(__file__).resolve().parent.parent / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise SchemaError(
        f"regionsync's migrations are missing: neither the package regionsync.migrations nor "
        f"{checkout} exists; reinstall regionsync"
    )


def alembic_config() -> Config:
    """An Alembic config pointing at the migrations (see :func:`migrations_directory`)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
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
