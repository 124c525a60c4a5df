"""The database: engines built from settings, and database errors turned into ours.

No engine is created at import time; callers build one from :class:`Settings` and pass it in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine

from regionsync.errors import StoreError
from regionsync.models import canonical_json
from regionsync.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def create_engine(settings: Settings) -> Engine:
    """An engine for the configured database (the embedded SQLite file by default)."""
    _warn_if_schema_ignored(settings)
    url = settings.database_url
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    engine = sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        json_serializer=canonical_json,
        connect_args={"connect_timeout": 10, "application_name": "regionsync"},
    )
    return _in_schema(engine, settings.db_schema)


def _sqlite_engine(url: sa.URL) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, json_serializer=canonical_json)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (SQLAlchemy's
        # documented recipe), so DDL and savepoints are transactional too.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def sqlite_path(engine: Engine) -> Path | None:
    """The embedded database's file, or None for PostgreSQL."""
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return None
    return Path(engine.url.database).expanduser()


def describe_db_error(error: exc.SQLAlchemyError) -> str:
    """One line saying what went wrong, without the SQL or its parameters."""
    original = getattr(error, "orig", None)
    text = str(original if original is not None else error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return f"database error: {first}"


@contextmanager
def translated_errors(action: str) -> Iterator[None]:
    """Turn SQLAlchemy/DBAPI errors met while doing ``action`` into :class:`StoreError`."""
    try:
        yield
    except exc.SQLAlchemyError as error:
        raise StoreError(f"{action}: {describe_db_error(error)}") from None


# Several accounts in one database (see README, *Several accounts in one database*) ------

_SCHEMA_INFO = "regionsync_schema"


def _in_schema(engine: Engine, schema: str) -> Engine:
    """Every connection works in ``schema`` alone: the models, the frozen migrations, the views
    and the example queries name their objects unqualified, so they all land and look there.

    SQLAlchemy's recipe for an alternate search path: set on connect, before the dialect's own
    first-connect queries (``insert=True``), in autocommit so no transaction is left open.
    """

    @event.listens_for(engine, "connect", insert=True)
    def _set_search_path(dbapi_connection: Any, record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f'SET search_path TO "{schema}"')  # a checked name: see settings
        dbapi_connection.autocommit = autocommit
        record.info[_SCHEMA_INFO] = schema

    return engine


def _warn_if_schema_ignored(settings: Settings) -> None:
    """SQLite has no schemas: one account per file. A warning, not a refusal, so that a
    ``.env`` shared with PostgreSQL deployments still works for a local trial."""
    if settings.db_schema_ignored:
        structlog.get_logger("regionsync").warning(
            "settings.db_schema_ignored", setting="REGIONSYNC_DB_SCHEMA", database="sqlite"
        )


def connection_schema(connection: Connection) -> str | None:
    """The PostgreSQL schema a connection works in; None on SQLite."""
    schema: str | None = connection.info.get(_SCHEMA_INFO)
    return schema
