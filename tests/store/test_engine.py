"""The database boundary: an engine that names its setting when it cannot connect, and
still lets the pool replace a connection the server dropped."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import URL

from regionsync import store
from regionsync.errors import StoreError
from tests.support import admin_url, settings_for


def test_a_pooled_connection_the_server_killed_is_replaced_silently(pg_url: URL) -> None:
    engine = store.create_engine(settings_for(pg_url))
    admin = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            pid = c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with admin.connect() as c:
            c.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        with engine.connect() as c:  # the pool's pre-ping notices, and reconnects
            assert c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
    finally:
        engine.dispose()
        admin.dispose()


def test_a_failure_to_connect_says_what_was_tried(pg_url: URL) -> None:
    settings = settings_for(pg_url.set(port=1, password="pw"))
    engine = store.create_engine(settings)
    try:
        with store.translated_errors("connecting"), engine.connect():
            raise AssertionError("connected to port 1")
    except StoreError as error:
        message, cause = str(error), error.__cause__
    finally:
        engine.dispose()
    assert isinstance(cause, sa.exc.OperationalError), "the original is kept as the cause"
    assert message.startswith(f"connecting: cannot connect to {pg_url.host}:1/{pg_url.database}")
    assert "(from REGIONSYNC_DATABASE_URL=postgresql+psycopg://" in message
    assert ":***@" in message
    assert "pw" not in message.replace("psycopg", "")
