"""One sync at a time, across processes and hosts.

PostgreSQL: a session-level advisory lock on the very connection that applies the sync, so
if that connection dies the lock and the transaction die together. SQLite: an exclusive
``flock`` on a file beside the database (SQLite itself only locks per transaction, and a
run spans several).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from regionsync.store import connection_schema, sqlite_path, translated_errors

#: The advisory lock key: "regionsy" as a 64-bit integer, so other apps are unlikely to clash.
ADVISORY_LOCK_KEY = int.from_bytes(b"regionsy", "big", signed=True)


@contextmanager
def sync_lock(engine: Engine) -> Iterator[Connection | None]:
    """Hold the sync lock; yields the connection to run the sync on, or None when it is held.

    The yielded connection has no transaction open; the caller begins and commits its own.
    """
    path = sqlite_path(engine)
    if path is not None:
        with _file_lock(path.with_name(path.name + ".lock")) as acquired:
            if not acquired:
                yield None
                return
            with engine.connect() as connection:
                yield connection
        return

    with translated_errors("connecting to the database"):
        connection = engine.connect()
    key = advisory_lock_key(connection_schema(connection))
    try:
        with translated_errors("taking the sync lock"):
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


def _release_advisory(connection: Connection, key: int) -> None:
    if connection.closed or connection.invalidated:
        return
    try:
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        connection.commit()
    except SQLAlchemyError:
        # A dead connection has released its session's lock already; drop it from the pool.
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
