"""Shared fixtures: a throwaway PostgreSQL database per test session, and SQLite files.

PostgreSQL comes from REGIONSYNC_TEST_DATABASE_URL (default: the local server as postgres).
If it cannot be reached the run fails with a message saying how to start it; it never skips.
Under pytest-xdist each worker is a session of its own, with its own databases.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.store.grants import quote_identifier
from regionsync.store.schema import migrate
from tests.support import (
    TABLES,
    MakeRole,
    admin_url,
    create_pg_database,
    drop_pg_database,
    require_postgresql,
    settings_for,
)
from tests.support.cli import invoke as invoke  # the in-process CLI fixture
from tests.support.daemon import start_daemon as start_daemon  # a real daemon process
from tests.support.fakeapi_fixtures import fake as fake  # the fake Kaleyra API
from tests.support.fakeapi_fixtures import fake_options as fake_options
from tests.support.fleet import start_worker as start_worker  # real worker processes


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than there are CPUs, as a test spends much of its time
    waiting for PostgreSQL, a loopback server or a child process."""
    return (os.cpu_count() or 1) + 1


def pytest_sessionstart(session: pytest.Session) -> None:
    """With xdist workers, find PostgreSQL down here, before they start: a worker that stops
    the run crashes it instead, without the message that says how to start PostgreSQL."""
    config = session.config
    if not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no":
        require_postgresql()


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


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session (per xdist worker), for tests to copy."""
    path = tmp_path_factory.mktemp("migrated") / "regionsync.db"
    engine = store.create_engine(settings_for(URL.create("sqlite", database=str(path))))
    try:
        migrate(engine)
    finally:
        engine.dispose()  # the last connection to close folds the WAL back into the file
    return path


@pytest.fixture
def sqlite_engine(sqlite_url: URL, migrated_sqlite_file: Path) -> Iterator[Engine]:
    """A migrated SQLite database of this test's own: a copy of the session's migrated file."""
    assert sqlite_url.database is not None
    shutil.copyfile(migrated_sqlite_file, sqlite_url.database)
    engine = store.create_engine(settings_for(sqlite_url))
    yield engine
    engine.dispose()


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


@pytest.fixture
def make_role() -> Iterator[MakeRole]:
    """Creates LOGIN roles with unique names; drops them once their databases are gone."""
    admin = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix} {uuid.uuid4().hex[:8]}"
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE ROLE {quote_identifier(name)} LOGIN")
        made.append(name)
        return name

    yield make
    with admin.connect() as c:
        for name in reversed(made):
            c.exec_driver_sql(f"DROP ROLE IF EXISTS {quote_identifier(name)}")
    admin.dispose()
