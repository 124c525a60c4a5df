"""Helpers shared by the tests, the benchmark and the fixtures in conftest.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync.settings import CA_BUNDLE_VARIABLES, Settings, normalise_database_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START_HINT = (
    "PostgreSQL is not reachable at {url}. Start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "or point REGIONSYNC_TEST_DATABASE_URL at a server where the user may create databases."
)
#: The ``make_role`` fixture: makes a LOGIN role named from a prefix, returns its name.
MakeRole = Callable[[str], str]
#: What the fixtures empty before each test (notification_deliveries goes with sync_runs).
TABLES = ("region_history", "regions", "sync_runs", "applied_answers", "accounts")
#: What regionsync reads as its settings; a test passes exactly the ones it means. The CA
#: bundle variables count too: one set in the developer's shell would have every command load
#: that bundle, and decide which CA a TLS test trusts.
SETTING_PREFIXES = ("KALEYRA_", "REGIONSYNC_")
SETTING_NAMES = ("DATABASE_URL", *CA_BUNDLE_VARIABLES)


def is_setting(name: str) -> bool:
    return name.startswith(SETTING_PREFIXES) or name in SETTING_NAMES


def clean_environ() -> dict[str, str]:
    """This process's environment without any regionsync setting: the base for a subprocess."""
    return {name: value for name, value in os.environ.items() if not is_setting(name)}


def scrub_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every regionsync setting from this process's environment until the test ends."""
    for name in list(os.environ):
        if is_setting(name):
            monkeypatch.delenv(name)


def settings_for(url: URL | str, **env: str) -> Settings:
    """Settings for a test database, plus any other variables."""
    raw = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    return Settings.from_env({"REGIONSYNC_DATABASE_URL": raw, **env})


def admin_url() -> URL:
    """The server the tests make their databases on (REGIONSYNC_TEST_DATABASE_URL)."""
    return normalise_database_url(os.environ.get("REGIONSYNC_TEST_DATABASE_URL", DEFAULT_ADMIN_URL))


def _admin_engine() -> Engine:
    return sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")


def _stop_the_run(error: sa.exc.OperationalError) -> NoReturn:
    pytest.exit(START_HINT.format(url=admin_url().render_as_string()) + f"\n{error.orig}", 3)


def require_postgresql() -> None:
    """Stop the whole run, saying how to start PostgreSQL, if it cannot be reached."""
    engine = _admin_engine()
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as error:
        _stop_the_run(error)
    finally:
        engine.dispose()


def create_pg_database() -> URL:
    """A new empty database; stops the whole run, saying how to start PostgreSQL, if down."""
    name = f"regionsync_test_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as error:
        _stop_the_run(error)
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


def as_utc(value: Any) -> datetime | None:
    """A timestamp read through a view: SQLite hands back text, PostgreSQL a datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
