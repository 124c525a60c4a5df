"""Shared fixtures: a throwaway PostgreSQL database per test session, and SQLite files.

PostgreSQL comes from REGIONSYNC_TEST_DATABASE_URL (default: the local server as postgres).
If it cannot be reached the run fails with a message saying how to start it; it never skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.schema import migrate
from regionsync.settings import normalise_database_url
from tests.support import settings_for

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START_HINT = (
    "PostgreSQL is not reachable at {url}. Start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "or point REGIONSYNC_TEST_DATABASE_URL at a server where the user may create databases."
)
TABLES = ("region_history", "regions", "sync_runs")


def admin_url() -> URL:
    return normalise_database_url(os.environ.get("REGIONSYNC_TEST_DATABASE_URL", DEFAULT_ADMIN_URL))


def _admin_engine() -> Engine:
    return sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")


def create_pg_database() -> URL:
    name = f"regionsync_test_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as error:
        pytest.exit(START_HINT.format(url=admin_url().render_as_string()) + f"\n{error.orig}", 3)
    finally:
        engine.dispose()
    return admin_url().set(database=name)


def drop_pg_database(url: URL) -> None:
    engine = _admin_engine()
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    finally:
        engine.dispose()


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


@pytest.fixture
def sqlite_engine(sqlite_url: URL) -> Iterator[Engine]:
    engine = store.create_engine(settings_for(sqlite_url))
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """A migrated, empty database of each kind."""
    fixture = "pg_engine" if request.param == "postgresql" else "sqlite_engine"
    result: Engine = request.getfixturevalue(fixture)
    return result


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


EngineFactory = Callable[[URL], Engine]
