"""One sync at a time, across processes and hosts.

PostgreSQL: a session-level advisory lock on the very connection that applies the sync, so
if that connection dies the lock and the transaction die together. SQLite: an exclusive
``flock`` on a file beside the database (SQLite itself only locks per transaction, and a
run spans several).

Any role that can connect can take the same advisory lock and keep every run ``skipped``:
:func:`lock_holder` names who holds it (``pg_locks`` and ``pg_stat_activity``) so that
``status``, ``/healthz`` and ``/metrics`` can flag a lock held longer than a run can take.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from regionsync.store import connection_schema, sqlite_path

#: The advisory lock key: "regionsy" as a 64-bit integer, so other apps are unlikely to clash.
ADVISORY_LOCK_KEY = int.from_bytes(b"regionsy", "big", signed=True)
#: A run is its fetch (90 s at most) and an apply of seconds; a lock held this long is stuck.
STUCK_AFTER = timedelta(minutes=15)
_IDLE_STATES = ("idle", "idle in transaction", "idle in transaction (aborted)")

_HOLDER = text(
    """
    SELECT l.pid, a.usename, a.application_name, host(a.client_addr) AS client_addr,
           a.backend_start, a.state, a.state_change, clock_timestamp() AS checked_at
    FROM pg_locks AS l
    LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.classid::bigint = :high AND l.objid::bigint = :low
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    LIMIT 1
    """
)


@dataclass(frozen=True)
class LockHolder:
    """The session holding the sync lock, as PostgreSQL shows it (columns it hides are None).

    ``held_at_least`` is a lower bound: PostgreSQL does not record when a lock was taken,
    but an idle session took its locks before it last went idle (``state_change``).
    """

    pid: int
    user: str | None
    application: str | None
    client: str | None
    backend_start: datetime | None
    state: str | None
    checked_at: datetime
    held_at_least: timedelta

    def is_stuck(self, after: timedelta = STUCK_AFTER) -> bool:
        return self.held_at_least > after

    def describe(self) -> str:
        """One line naming the holder, for ``status`` and logs."""
        who = f"pid {self.pid}, user {self.user or 'unknown'}"
        if self.application:
            who += f", application {self.application!r}"
        if self.client:
            who += f", from {self.client}"
        return f"{who}, {self.state or 'state hidden'}, held at least {self.held_at_least}"

    def as_json(self, after: timedelta = STUCK_AFTER) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "user": self.user,
            "application": self.application,
            "client": self.client,
            "backend_start": self.backend_start.isoformat() if self.backend_start else None,
            "state": self.state,
            "held_at_least_seconds": round(self.held_at_least.total_seconds(), 3),
            "stuck": self.is_stuck(after),
            "stuck_after_seconds": after.total_seconds(),
        }


@contextmanager
def sync_lock(engine: Engine) -> Iterator[Connection | None]:
    """Hold the sync lock; yields the connection to run the sync on, or None when it is held.

    The yielded connection has no transaction open; the caller begins and commits its own.
    """
    with exclusive(engine, key=ADVISORY_LOCK_KEY, suffix=".lock") as connection:
        yield connection


@contextmanager
def exclusive(engine: Engine, *, key: int, suffix: str) -> Iterator[Connection | None]:
    """One holder at a time of the lock ``key`` (per schema), or of the file ``<db>{suffix}``
    on SQLite; yields a connection without a transaction, or None when it is held.

    Database errors pass through as SQLAlchemy's: the caller's entry point translates them.
    """
    path = sqlite_path(engine)
    if path is not None:
        with _file_lock(path.with_name(path.name + suffix)) as acquired:
            if not acquired:
                yield None
                return
            with engine.connect() as connection:
                yield connection
        return

    connection = engine.connect()
    key = advisory_lock_key(connection_schema(connection), key)
    try:
        acquired = connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
        ).scalar_one()
        connection.commit()
        if not acquired:
            yield None
            return
        try:
            yield connection
        finally:
            _release_advisory(connection, key)
    finally:
        connection.close()


def lock_holder(connection: Connection) -> LockHolder | None:
    """Who holds the sync lock now; None when nobody does, or on SQLite (``flock``)."""
    if connection.dialect.name != "postgresql":
        return None
    key = advisory_lock_key(connection_schema(connection)) & 0xFFFFFFFFFFFFFFFF
    row = (
        connection.execute(_HOLDER, {"high": key >> 32, "low": key & 0xFFFFFFFF}).mappings().first()
    )
    if row is None:
        return None
    checked_at: datetime = row["checked_at"]
    held = timedelta(0)
    if row["state"] in _IDLE_STATES and row["state_change"] is not None:
        held = max(held, checked_at - row["state_change"])
    return LockHolder(
        pid=row["pid"],
        user=row["usename"],
        application=row["application_name"] or None,
        client=row["client_addr"],
        backend_start=row["backend_start"],
        state=row["state"],
        checked_at=checked_at,
        held_at_least=held,
    )


def _release_advisory(connection: Connection, key: int) -> None:
    if connection.closed or connection.invalidated:
        return
    try:
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        connection.commit()
    except SQLAlchemyError:
        # Deliberate, not a translation: a dead connection has released its session's lock
        # already, so there is nothing to report; drop it from the pool.
        connection.invalidate()


@contextmanager
def _file_lock(path: os.PathLike[str]) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def advisory_lock_key(schema: str | None, base: int = ADVISORY_LOCK_KEY) -> int:
    """``base``, made one lock per schema so that two accounts in one database never wait on
    each other (see README, *Several accounts in one database*); ``public`` keeps ``base``,
    the key older versions take, so an upgrade in place still excludes them."""
    if schema is None or schema == "public":
        return base
    seed = base.to_bytes(8, "big", signed=True) + schema.encode()
    digest = hashlib.blake2b(seed, digest_size=8, person=b"regionsync").digest()
    return int.from_bytes(digest, "big", signed=True)
