"""The sync lock (regionsync/store/lock.py): one holder at a time, on a real PostgreSQL
advisory lock and a real SQLite lock file; who holds it; one lock per schema."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from regionsync import store
from regionsync.store.lock import (
    ADVISORY_LOCK_KEY,
    advisory_lock_key,
    exclusive,
    lock_holder,
    sync_lock,
)
from tests.support import settings_for


def test_a_second_holder_is_refused_until_the_first_lets_go(engine: Engine) -> None:
    with sync_lock(engine) as first:
        assert first is not None
        with sync_lock(engine) as second:
            assert second is None
    with sync_lock(engine) as again:
        assert again is not None


def test_a_holder_that_fails_lets_go(engine: Engine) -> None:
    def fail_while_holding() -> None:
        with sync_lock(engine) as held:
            assert held is not None
            raise RuntimeError("the sync failed")

    with pytest.raises(RuntimeError):
        fail_while_holding()
    with sync_lock(engine) as again:
        assert again is not None


def test_the_holder_gets_a_connection_with_no_transaction_open(engine: Engine) -> None:
    with sync_lock(engine) as held:
        assert held is not None
        assert not held.in_transaction()
        assert held.execute(sa.text("SELECT 1")).scalar_one() == 1


def test_another_exclusive_lock_does_not_block_the_sync_lock(engine: Engine) -> None:
    def other() -> AbstractContextManager[Connection | None]:
        return exclusive(engine, key=ADVISORY_LOCK_KEY + 1, suffix=".other")

    with other() as first, sync_lock(engine) as sync:
        assert first is not None
        assert sync is not None
        with other() as second:
            assert second is None


def test_lock_holder_reports_the_pid_and_user_of_the_session_holding_it(
    pg_engine: Engine, pg_url: URL
) -> None:
    with pg_engine.connect() as looking:
        assert lock_holder(looking) is None
        with sync_lock(pg_engine) as held:
            assert held is not None
            pid = held.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
            time.sleep(0.3)  # idle while holding it: "held at least" counts from going idle
            holder = lock_holder(looking)
        assert holder is not None
        assert holder.pid == pid
        assert holder.user == pg_url.username
        assert holder.state == "idle"
        assert holder.held_at_least >= timedelta(seconds=0.25)
        assert not holder.is_stuck()
        assert holder.is_stuck(after=timedelta(seconds=0.1))
        assert holder.application == "regionsync"
        assert holder.client is not None  # over TCP: the address the server sees
        assert holder.describe() == (
            f"pid {pid}, user {pg_url.username}, application 'regionsync', from {holder.client},"
            f" idle, held at least {holder.held_at_least}"
        )
        assert holder.as_json()["pid"] == pid
        assert lock_holder(looking) is None


def test_lock_holder_is_none_on_sqlite(sqlite_engine: Engine) -> None:
    with sync_lock(sqlite_engine) as held:
        assert held is not None
        assert lock_holder(held) is None


def test_each_schema_has_its_own_key_and_public_keeps_the_old_one() -> None:
    assert advisory_lock_key("public") == int.from_bytes(b"regionsy", "big", signed=True)
    assert advisory_lock_key(None) == advisory_lock_key("public") == ADVISORY_LOCK_KEY
    assert len({advisory_lock_key(s) for s in ("public", "a", "b")}) == 3
    assert advisory_lock_key("a") == advisory_lock_key("a")
    assert advisory_lock_key("a", ADVISORY_LOCK_KEY + 1) != advisory_lock_key("a")


@pytest.fixture
def schema_engines(pg_url: URL) -> Iterator[dict[str, Engine]]:
    """Engines on the session database working in the schemas ``a``, ``b`` and ``public``."""
    engines = {
        schema: store.create_engine(settings_for(pg_url, REGIONSYNC_DB_SCHEMA=schema))
        for schema in ("a", "b", "public")
    }
    yield engines
    for engine in engines.values():
        engine.dispose()


def test_schemas_in_one_database_lock_apart(schema_engines: dict[str, Engine]) -> None:
    a, b, public = schema_engines["a"], schema_engines["b"], schema_engines["public"]
    with sync_lock(a) as held_a:
        assert held_a is not None
        with sync_lock(a) as second_a:
            assert second_a is None
        with sync_lock(b) as held_b, sync_lock(public) as held_public:
            assert held_b is not None
            assert held_public is not None
        with b.connect() as looking_b, a.connect() as looking_a:
            assert lock_holder(looking_b) is None
            holder = lock_holder(looking_a)
            assert holder is not None
            assert holder.pid == held_a.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
