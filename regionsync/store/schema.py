"""Migrations shipped inside the package, and the check that the schema is current.

Alembic (with Mako and its templates) is imported only to migrate: the check every ``run``
makes reads ``alembic_version`` itself and compares it with :data:`HEAD`, which
``tests/store/test_migrations.py`` keeps equal to the newest migration's revision.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from regionsync.errors import SchemaError
from regionsync.store.engine import connection_schema, database_place, translated_errors

if TYPE_CHECKING:
    from alembic.config import Config

HEAD = "0005"
"""The revision of the newest migration in ``migrations/versions``: the schema this code needs."""
VERSION_TABLE = "alembic_version"


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
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise SchemaError(
        f"regionsync's migrations are missing: neither the package regionsync.migrations nor "
        f"{checkout} exists; reinstall regionsync"
    )


def alembic_config() -> Config:
    """An Alembic config pointing at the migrations (see :func:`migrations_directory`)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    config.set_main_option("path_separator", "os")
    return config


def ours(name: str | None, type_: str, parent_names: object) -> bool:
    """What Alembic compares with the models: not the task queue's tables (procrastinate's,
    installed by revision 0005 from its own SQL)."""
    return not (type_ == "table" and (name or "").startswith("procrastinate"))


def head_revision() -> str:
    """The schema revision this code needs (the newest migration's)."""
    return HEAD


def current_revision(engine: Engine) -> str | None:
    """The revision in ``alembic_version`` (None: not migrated), found through the search
    path as Alembic finds it."""
    with engine.connect() as connection:
        if not _has_version_table(connection):
            return None
        found = connection.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").all()
    if len(found) > 1:
        heads = ", ".join(sorted(row[0] for row in found))
        raise SchemaError(
            f"the database has several schema revisions ({heads}); fix {VERSION_TABLE}"
        )
    return found[0][0] if found else None


@translated_errors("migrating the database")
def migrate(engine: Engine, *, account: str = "default") -> tuple[str | None, str]:
    """Upgrade to head (idempotent); returns the revisions before and after.

    ``account`` names the account that rows written before accounts existed belong to
    (``REGIONSYNC_ACCOUNT``), should the upgrade pass revision 0004.
    """
    from alembic import command

    before = current_revision(engine)
    config = alembic_config()
    config.attributes["account"] = account
    with migration_connection(engine) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    after = current_revision(engine)
    assert after is not None
    return before, after


@contextmanager
def migration_connection(engine: Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction for migrating, committed at the end of the block.

    SQLite rebuilds a table to change its keys, which foreign keys checked statement by
    statement forbid: as SQLite's own procedure for altering tables says, they are turned
    off for the transaction and checked once before it commits.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # outside any transaction, where SQLite honours it
            connection.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").first()
                    if broken is not None:
                        raise SchemaError(
                            f"the migration left a row of {broken[0]} without its {broken[2]} "
                            "row; nothing was changed"
                        )
        finally:
            if sqlite and not connection.invalidated:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys = ON")  # type: ignore[union-attr]


def _has_version_table(connection: sa.Connection) -> bool:
    """Whether ``alembic_version`` is visible (one catalog query, not a reflection)."""
    if connection.dialect.name == "postgresql":
        found = connection.exec_driver_sql(f"SELECT to_regclass('{VERSION_TABLE}')").scalar()
    else:
        found = connection.exec_driver_sql(
            f"SELECT name FROM sqlite_master WHERE type = 'table' AND name = '{VERSION_TABLE}'"
        ).scalar()
    return found is not None


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
    with engine.connect() as connection:
        place = database_place(engine.url, connection_schema(connection))
    raise SchemaError(f"the database {place} {state}: run `regionsync migrate`")
