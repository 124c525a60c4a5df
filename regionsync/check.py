"""``regionsync check``: is this deployment ready? Every check reads, none writes.

The first thing to run in a new deployment and a container's startup probe: the settings
parse (or the CLI has already exited 2), the schedule parses, the database answers and is
at the schema this regionsync needs, Kaleyra answers the configured key, and the metrics
port and webhook settings, when set, are usable. The embedded SQLite file is opened read
only and never created; PostgreSQL is read in a read-only transaction; Kaleyra is asked
once, with a GET.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from regionsync.errors import RegionSyncError, StoreError
from regionsync.settings import Settings
from regionsync.store import translated_errors

#: One quick attempt: a probe should answer in seconds, not wait out the sync's retries.
KALEYRA_SECONDS = 20.0
#: What the daemon binds when the settings name no metrics host.
DEFAULT_METRICS_HOST = "0.0.0.0"  # noqa: S104  # the daemon's default, checked as it binds


@dataclass(frozen=True)
class Outcome:
    """One check: its name, whether it passed, and one line saying what was found."""

    name: str
    ok: bool
    detail: str


def run_checks(settings: Settings) -> Iterator[Outcome]:
    """Each check in turn; the database checks stop at the first that fails."""
    source = "embedded SQLite" if settings.embedded_database else settings.database_display
    yield Outcome("settings", True, f"all valid (database: {source})")
    yield _schedule(settings)
    yield from _database(settings)
    yield _kaleyra(settings)
    if settings.metrics_port is not None:
        yield _metrics(settings)
    if settings.notifications.enabled:
        yield _webhook(settings)


def _guarded(name: str, check: Callable[[], Outcome]) -> Outcome:
    try:
        return check()
    except RegionSyncError as error:
        return Outcome(name, False, str(error))


def _schedule(settings: Settings) -> Outcome:
    from regionsync.schedule import load_schedule

    return _guarded(
        "schedule", lambda: Outcome("schedule", True, load_schedule(settings).describe())
    )


def _database(settings: Settings) -> Iterator[Outcome]:
    shown = settings.database_display
    if settings.database_url.get_backend_name() == "sqlite":
        path = Path(settings.database_url.database or "").expanduser()
        if not path.is_file():
            yield Outcome("database", False, f"{path} does not exist yet: run `regionsync migrate`")
            return
    try:
        with translated_errors(shown), _read_only(settings) as connection:
            server = _server_version(connection)
            current = MigrationContext.configure(connection).get_current_revision()
    except StoreError as error:
        yield Outcome("database", False, str(error))
        return
    yield Outcome("database", True, f"{shown} answers ({server})")
    yield _revision(current)


def _revision(current: str | None) -> Outcome:
    from regionsync.schema import head_revision

    try:
        head = head_revision()
    except RegionSyncError as error:
        return Outcome("schema", False, str(error))
    if current == head:
        return Outcome("schema", True, f"revision {current}, the latest")
    if current is None:
        return Outcome(
            "schema", False, f"no regionsync schema: run `regionsync migrate` (to {head})"
        )
    return Outcome(
        "schema",
        False,
        f"revision {current}, this regionsync needs {head}: run `regionsync migrate`",
    )


@contextmanager
def _read_only(settings: Settings) -> Iterator[sa.Connection]:
    """A connection that cannot write: SQLite opened with ``mode=ro``, PostgreSQL in a
    read-only transaction."""
    url = settings.database_url
    engine: Engine
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "").expanduser().resolve()
        engine = sa.create_engine(
            "sqlite://", creator=lambda: _sqlite_read_only(path), poolclass=sa.pool.NullPool
        )
    else:
        from regionsync.store import create_engine

        engine = create_engine(settings).execution_options(postgresql_readonly=True)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            yield connection
            transaction.rollback()
    finally:
        engine.dispose()


def _sqlite_read_only(path: Path) -> Any:
    """Read only, creating no file: a reader of a WAL database makes ``-wal`` and ``-shm``
    files unless they exist. Without them every commit is in the main file, which is then
    safe to read as ``immutable``."""
    import sqlite3

    in_use = path.with_name(path.name + "-wal").exists()
    query = "mode=ro" if in_use else "mode=ro&immutable=1"
    return sqlite3.connect(f"{path.as_uri()}?{query}", uri=True, check_same_thread=False)


def _server_version(connection: sa.Connection) -> str:
    if connection.dialect.name == "sqlite":
        version = connection.exec_driver_sql("SELECT sqlite_version()").scalar_one()
        return f"SQLite {version}"
    version = connection.exec_driver_sql("SHOW server_version").scalar_one()
    return f"PostgreSQL {version}"


def _kaleyra(settings: Settings) -> Outcome:
    def ask() -> Outcome:
        config = settings.require_kaleyra()
        from regionsync.kaleyra import KaleyraClient, RetryPolicy

        policy = RetryPolicy(
            attempts=1, total_seconds=KALEYRA_SECONDS, connect_timeout=5.0, read_timeout=15.0
        )
        snapshot = KaleyraClient(config, retry=policy).fetch()
        rejected = f", {snapshot.rejected_count} rejected" if snapshot.rejected_count else ""
        return Outcome(
            "kaleyra",
            True,
            f"{config.regions_url} answers the key: {len(snapshot.records)} regions{rejected}",
        )

    return _guarded("kaleyra", ask)


def _metrics(settings: Settings) -> Outcome:
    host = getattr(settings, "metrics_host", None) or DEFAULT_METRICS_HOST
    port = settings.metrics_port
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon binds
            probe.bind((host, port))
    except OSError as error:
        reason = error.strerror or str(error)
        hint = " (is a daemon already running?)" if error.errno == 98 else ""
        return Outcome("metrics", False, f"cannot listen on {host}:{port}: {reason}{hint}")
    return Outcome("metrics", True, f"{host}:{port} is free for /healthz and /metrics")


def _webhook(settings: Settings) -> Outcome:
    """The webhook settings were validated when read: say what will be sent, and where
    (scheme and host only, a Slack URL's path being its token). Nothing is posted."""
    notifications = settings.notifications
    signed = "signed" if notifications.webhook_secret is not None else "unsigned"
    on = ", ".join(sorted(notifications.notify_on))
    return Outcome(
        "webhook",
        True,
        f"{notifications.webhook_format} to {notifications.webhook_display}, {signed}, on {on}",
    )


__all__ = ["Outcome", "run_checks"]
