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

from regionsync.settings import DEFAULT_ACCOUNT
from regionsync.store.engine import connection_schema, sqlite_path

#: The advisory lock key: "regionsy" as a 64-bit integer, so other apps are unlikely to clash.
ADVISORY_LOCK_KEY = int.from_bytes(b"regionsy", "big", signed=True)
#: A run is its fetch (90 s at most) and an apply of seconds; a lock held this long is stuck.
STUCK_AFTER = timedelta(minutes=15)
_IDLE_STATES = ("idle", "idle in transaction", "idle in transaction (aborted)")

_HOLDER = text(
    """
    SELECT l.pid, a.usename, a.application_name, host(a.client_addr) AS client_addr,
           a.backend_start, a.state, a.state_change, clock_timestamp() AS checked_at,
           (SELECT min(w.waitstart) FROM pg_locks AS w WHERE w.pid = l.pid AND NOT w.granted)
             AS waiting_since,
           pg_blocking_pids(l.pid) AS blockers,
           EXTRACT(epoch FROM current_setting('lock_timeout')::interval) AS wait_limit
    FROM pg_locks AS l
    LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.classid::bigint = :high AND l.objid::bigint = :low
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    LIMIT 1
    """
)
_BLOCKERS = text(
    """
    SELECT pid, usename, application_name, host(client_addr) AS client_addr, state,
           clock_timestamp() - xact_start AS in_transaction_for
    FROM pg_stat_activity WHERE pid = ANY(:pids) ORDER BY pid LIMIT 5
    """
)


@dataclass(frozen=True)
class Blocker:
    """A session that the lock holder waits for (columns PostgreSQL hides are None)."""

    pid: int
    user: str | None
    application: str | None
    client: str | None
    state: str | None
    in_transaction_for: timedelta | None

    def describe(self) -> str:
        who = f"pid {self.pid}, user {self.user or 'unknown'}"
        if self.application:
            who += f", application {self.application!r}"
        if self.client:
            who += f", from {self.client}"
        if self.in_transaction_for is not None:
            return f"{who}, {self.state or 'state hidden'} for {self.in_transaction_for}"
        return f"{who}, {self.state or 'state hidden'}"

    def as_json(self) -> dict[str, Any]:
        since = self.in_transaction_for
        return {
            "pid": self.pid,
            "user": self.user,
            "application": self.application,
            "client": self.client,
            "state": self.state,
            "in_transaction_seconds": None if since is None else round(since.total_seconds(), 3),
        }


@dataclass(frozen=True)
class LockHolder:
    """The session holding the sync lock, as PostgreSQL shows it (columns it hides are None).

    ``held_at_least`` is a lower bound: PostgreSQL does not record when a lock was taken,
    but an idle session took its locks before it last went idle (``state_change``).
    ``waiting_for`` is how long the holder has been waiting for another lock (a row or a
    table that ``blocked_by`` hold), None when it is not waiting; a regionsync run gives
    up after ``wait_limit`` (``REGIONSYNC_LOCK_TIMEOUT``), so a holder waiting longer is
    stuck however recently it took the sync lock.
    """

    pid: int
    user: str | None
    application: str | None
    client: str | None
    backend_start: datetime | None
    state: str | None
    checked_at: datetime
    held_at_least: timedelta
    waiting_for: timedelta | None = None
    blocked_by: tuple[Blocker, ...] = ()
    wait_limit: timedelta | None = None

    def waits_too_long(self) -> bool:
        """Whether it has waited for a lock longer than a regionsync run ever waits."""
        if self.waiting_for is None:
            return False
        return self.waiting_for > (self.wait_limit or STUCK_AFTER)

    def is_stuck(self, after: timedelta = STUCK_AFTER) -> bool:
        return self.held_at_least > after or self.waits_too_long()

    def describe(self) -> str:
        """One line naming the holder (and whom it waits for), for ``status`` and logs."""
        who = f"pid {self.pid}, user {self.user or 'unknown'}"
        if self.application:
            who += f", application {self.application!r}"
        if self.client:
            who += f", from {self.client}"
        line = f"{who}, {self.state or 'state hidden'}, held at least {self.held_at_least}"
        if self.waiting_for is not None:
            blockers = "; ".join(blocker.describe() for blocker in self.blocked_by)
            line += f"; waiting {self.waiting_for} for a lock held by {blockers or 'unknown'}"
        return line

    def as_json(self, after: timedelta = STUCK_AFTER) -> dict[str, Any]:
        waiting = self.waiting_for
        return {
            "pid": self.pid,
            "user": self.user,
            "application": self.application,
            "client": self.client,
            "backend_start": self.backend_start.isoformat() if self.backend_start else None,
            "state": self.state,
            "held_at_least_seconds": round(self.held_at_least.total_seconds(), 3),
            "waiting_for_lock_seconds": None
            if waiting is None
            else round(waiting.total_seconds(), 3),
            "blocked_by": [blocker.as_json() for blocker in self.blocked_by],
            "stuck": self.is_stuck(after),
            "stuck_after_seconds": after.total_seconds(),
        }


@contextmanager
def sync_lock(engine: Engine, account: str = DEFAULT_ACCOUNT) -> Iterator[Connection | None]:
    """Hold ``account``'s sync lock; yields the connection to run the sync on, or None when
    another session holds it. Two accounts never wait on each other.

    The yielded connection has no transaction open; the caller begins and commits its own.
    """
    key, suffix = account_lock(account)
    with exclusive(engine, key=key, suffix=suffix) as connection:
        yield connection


def account_lock(account: str) -> tuple[int, str]:
    """The advisory lock key and SQLite lock-file suffix of ``account``'s syncs; the default
    account keeps the ones of versions before accounts existed."""
    if account == DEFAULT_ACCOUNT:
        return ADVISORY_LOCK_KEY, ".lock"
    return derived_key(ADVISORY_LOCK_KEY, f"account:{account}"), f".{account}.lock"


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


def lock_holder(connection: Connection, account: str = DEFAULT_ACCOUNT) -> LockHolder | None:
    """Who holds ``account``'s sync lock now; None when nobody does, or on SQLite
    (``flock``)."""
    if connection.dialect.name != "postgresql":
        return None
    base, _suffix = account_lock(account)
    key = advisory_lock_key(connection_schema(connection), base) & 0xFFFFFFFFFFFFFFFF
    row = (
        connection.execute(_HOLDER, {"high": key >> 32, "low": key & 0xFFFFFFFF}).mappings().first()
    )
    if row is None:
        return None
    checked_at: datetime = row["checked_at"]
    held = timedelta(0)
    if row["state"] in _IDLE_STATES and row["state_change"] is not None:
        held = max(held, checked_at - row["state_change"])
    waiting_since: datetime | None = row["waiting_since"]
    limit = float(row["wait_limit"] or 0)
    return LockHolder(
        pid=row["pid"],
        user=row["usename"],
        application=row["application_name"] or None,
        client=row["client_addr"],
        backend_start=row["backend_start"],
        state=row["state"],
        checked_at=checked_at,
        held_at_least=held,
        waiting_for=None if waiting_since is None else checked_at - waiting_since,
        blocked_by=_blockers(connection, row["blockers"] or []),
        wait_limit=timedelta(seconds=limit) if limit else None,
    )


def _blockers(connection: Connection, pids: list[int]) -> tuple[Blocker, ...]:
    if not pids:
        return ()
    found = connection.execute(_BLOCKERS, {"pids": pids}).mappings()
    return tuple(
        Blocker(
            pid=row["pid"],
            user=row["usename"],
            application=row["application_name"] or None,
            client=row["client_addr"],
            state=row["state"],
            in_transaction_for=row["in_transaction_for"],
        )
        for row in found
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
    each other (see docs/operations.md, *Several accounts in one database*); ``public`` keeps
    ``base``, the key older versions take, so an upgrade in place still excludes them."""
    if schema is None or schema == "public":
        return base
    return derived_key(base, schema)


def derived_key(base: int, name: str) -> int:
    seed = base.to_bytes(8, "big", signed=True) + name.encode()
    digest = hashlib.blake2b(seed, digest_size=8, person=b"regionsync").digest()
    return int.from_bytes(digest, "big", signed=True)
