"""The database: engines built from settings, and database errors turned into ours.

No engine is created at import time; callers build one from :class:`Settings` and pass it in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine

from regionsync.errors import ConfigError, StoreError
from regionsync.records import canonical_json
from regionsync.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: PostgreSQL's SQLSTATE for a statement that gave up waiting for a lock (``lock_timeout``).
LOCK_NOT_AVAILABLE = "55P03"


class DatabaseUnreachable(exc.OperationalError):
    """Connecting failed; ``where`` says what was tried and which setting to fix."""

    def __init__(self, error: exc.DBAPIError, where: str) -> None:
        super().__init__(
            error.statement,
            error.params,
            error.orig or error,
            connection_invalidated=error.connection_invalidated,
        )
        self.where = where


def create_engine(settings: Settings, *, pool_size: int = 2) -> Engine:
    """An engine for the configured database (the embedded SQLite file by default);
    ``pool_size`` connections kept open on PostgreSQL (a worker runs syncs side by side)."""
    _warn_if_schema_ignored(settings)
    url = settings.database_url
    if url.get_backend_name() == "sqlite":
        _make_parent(settings)
        engine = _sqlite_engine(url)
    else:
        engine = sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            json_serializer=canonical_json,
            connect_args={"connect_timeout": 10, "application_name": "regionsync"},
        )
        engine = _session_settings(engine, settings.db_schema, settings.lock_timeout)
    where = connection_target(settings)

    @event.listens_for(engine, "handle_error", retval=True)
    def _name_the_setting(context: sa.engine.ExceptionContext) -> BaseException | None:
        # Only a failure to connect; a failed pre-ping is the pool's to handle (it reconnects).
        failed = context.sqlalchemy_exception
        if context.is_pre_ping or context.connection is not None:
            return None
        if isinstance(failed, exc.OperationalError):
            return DatabaseUnreachable(failed, where)
        return None

    return engine


def connection_target(settings: Settings) -> str:
    """What connecting tries, for messages: host:port/db (or the file) and its setting,
    the password masked."""
    url = settings.database_url
    if url.get_backend_name() == "sqlite":
        target = f"the SQLite file {url.database}"
    else:
        target = f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"
    if settings.database_setting is None:
        return f"{target} (the embedded default: neither REGIONSYNC_DATABASE_URL nor DATABASE_URL)"
    return f"{target} (from {settings.database_setting}={settings.database_display})"


def _make_parent(settings: Settings) -> None:
    """Create the SQLite file's directory; failing, name the setting that chose it."""
    database = settings.database_url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    parent = Path(database).expanduser().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        setting = settings.database_setting or "XDG_DATA_HOME"
        raise ConfigError(setting, f"cannot create {parent}: {error.strerror}") from None


def _sqlite_engine(url: sa.URL) -> Engine:
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
        # ``sqlite_immediate``: a transaction that reads then writes takes the write lock
        # first, waiting for it (busy_timeout) rather than failing on another's commit.
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

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
    if isinstance(error, DatabaseUnreachable):
        reason = first.rpartition("failed: ")[2].removeprefix("FATAL:").strip()
        return f"cannot connect to {error.where}: {reason}"
    if getattr(original, "sqlstate", None) == LOCK_NOT_AVAILABLE:
        return (
            "gave up waiting for a lock that another session holds (REGIONSYNC_LOCK_TIMEOUT): "
            "a session idle in a transaction that wrote to these tables, a migration or a "
            "LOCK TABLE; while a run waits, `regionsync status` names the session"
        )
    return f"database error: {first}"


@contextmanager
def translated_errors(action: str) -> Iterator[None]:
    """Turn SQLAlchemy/DBAPI errors met while doing ``action`` into :class:`StoreError`,
    the original kept as its cause.

    Used once per public entry point (``run_sync``, ``preview``, ``migrate``, ``gather``,
    ``grant_readonly``, the browse reads, the notification passes, ``check``), so the code
    below them deals in SQLAlchemy's errors and needs no catch of its own.
    """
    try:
        yield
    except exc.SQLAlchemyError as error:
        raise StoreError(f"{action}: {describe_db_error(error)}") from error


# Several accounts in one database (see docs/operations.md) ------------------------------

_SCHEMA_INFO = "regionsync_schema"


def _session_settings(engine: Engine, schema: str, lock_timeout: timedelta) -> Engine:
    """Every connection works in ``schema`` alone, and waits for a lock at most
    ``lock_timeout``.

    The schema: the models, the frozen migrations, the views and the example queries name
    their objects unqualified, so they all land and look there. The lock timeout: no
    statement of a sync, a migration or a read waits without a bound on a session that an
    analyst left idle in a transaction (docs/reliability.md, *Readers beside the sync*).

    SQLAlchemy's recipe for an alternate search path: set on connect, before the dialect's own
    first-connect queries (``insert=True``), in autocommit so no transaction is left open.
    """
    milliseconds = max(1, int(lock_timeout.total_seconds() * 1000))

    @event.listens_for(engine, "connect", insert=True)
    def _set_session(dbapi_connection: Any, record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f'SET search_path TO "{schema}"')  # a checked name: see settings
            cursor.execute(f"SET lock_timeout = {milliseconds}")
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


def database_place(url: sa.URL, schema: str | None) -> str:
    """Which tables a message is about, never with the password: ``host:port/db in schema S
    (REGIONSYNC_DB_SCHEMA)`` on PostgreSQL, ``PATH (SQLite)`` for the embedded file."""
    if url.get_backend_name() == "sqlite":
        return f"{url.database} (SQLite)"
    place = f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"
    return place if schema is None else f"{place} in schema {schema} (REGIONSYNC_DB_SCHEMA)"
