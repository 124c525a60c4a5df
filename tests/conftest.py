"""Shared fixtures: a throwaway PostgreSQL database per test session, and SQLite files.

PostgreSQL comes from REGIONSYNC_TEST_DATABASE_URL (default: the local server as postgres).
If it cannot be reached the run fails with a message saying how to start it; it never skips.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.store.schema import migrate
from tests.support import TABLES, create_pg_database, drop_pg_database, settings_for
from tests.support.cli import invoke as invoke  # the in-process CLI fixture
from tests.support.daemon import start_daemon as start_daemon  # a real daemon process
from tests.support.fakeapi_fixtures import fake as fake  # the fake Kaleyra API
from tests.support.fakeapi_fixtures import fake_options as fake_options


@pytest.fixture(scope="session")
def pg_url() -> Iterator[URL]:
    """A migrated PostgreSQL database for the whole session."""
    url = create_pg_database()
    engine = store.create_engine(settings_for(url))
    try:
        migrate(engine)
    finally:
        engine.dispose()
    yield url
    drop_pg_database(url)


@pytest.fixture
def fresh_pg_url() -> Iterator[URL]:
    """An empty PostgreSQL database of this test's own (for migration tests)."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture
def pg_engine(pg_url: URL) -> Iterator[Engine]:
    """The session database, emptied before the test."""
    engine = store.create_engine(settings_for(pg_url))
    with engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> URL:
    return URL.create("sqlite", database=str(tmp_path / "regionsync.db"))


def _migrated_engine(url: URL) -> Iterator[Engine]:
    """An engine on ``url``, migrated; disposed when the test ends."""
    engine = store.create_engine(settings_for(url))
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: URL) -> Iterator[Engine]:
    yield from _migrated_engine(sqlite_url)


@pytest.fixture
def fresh_pg_engine(fresh_pg_url: URL) -> Iterator[Engine]:
    """A migrated PostgreSQL database of this test's own (for tests that alter its schema)."""
    yield from _migrated_engine(fresh_pg_url)


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """A migrated, empty database of each kind."""
    fixture = "pg_engine" if request.param == "postgresql" else "sqlite_engine"
    result: Engine = request.getfixturevalue(fixture)
    return result


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty, unmigrated database of each kind (for migration tests)."""
    if request.param == "postgresql":
        url: URL = request.getfixturevalue("fresh_pg_url")
    else:
        url = URL.create("sqlite", database=str(tmp_path / "fresh.db"))
    engine = store.create_engine(settings_for(url))
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> URL:
    """The URL of a migrated, empty database of each kind (for subprocess tests)."""
    if request.param == "postgresql":
        request.getfixturevalue("pg_engine")
        result: URL = request.getfixturevalue("pg_url")
        return result
    request.getfixturevalue("sqlite_engine")
    sqlite: URL = request.getfixturevalue("sqlite_url")
    return sqlite
