"""grant-readonly: a role that reads every table and view, present and future, and writes nothing.

Each test has a database of its own, migrated by an owner role that is not a superuser, as
in production; roles are cluster-wide, so their names are unique and they are dropped after.
The reader's name needs quoting, so every statement is run with a name that would break
string-pasted SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.errors import ConfigError, SchemaError
from regionsync.store.grants import grant_readonly, quote_identifier, readonly_grants
from regionsync.store.schema import migrate
from tests.support import MakeRole, admin_url, create_pg_database, drop_pg_database, settings_for
from tests.support.cli import Invoke, url_env
from tests.support.seed import seed

TABLES = ["regions", "region_history", "sync_runs", "alembic_version"]
VIEWS = [
    "region_status_intervals",
    "active_regions",
    "region_changes",
    "sync_health",
    "region_status_daily",
]
WRITES = [
    "INSERT INTO sync_runs (started_at, status, trigger, source, fetched, added, changed,"
    " unchanged, removed, restored, rejected) VALUES (now(), 'running', 'cli', 'x',"
    " 0, 0, 0, 0, 0, 0, 0)",
    "UPDATE regions SET display_name = 'x'",
    "DELETE FROM region_history",
    "TRUNCATE sync_runs",
    "UPDATE alembic_version SET version_num = 'x'",
    "CREATE TABLE mine (x int)",
    "CREATE VIEW mine AS SELECT 1 AS one",
    "DROP VIEW sync_health",
    "ALTER TABLE regions ADD COLUMN x int",
    "COMMENT ON TABLE regions IS 'x'",
    "CREATE SCHEMA mine",
]


@dataclass(frozen=True)
class Database:
    url: URL
    owner: str

    def engine_as(self, role: str | None = None) -> Engine:
        """An engine connected as ``role`` (trust authentication), or as the admin."""
        if role is None:
            return store.create_engine(settings_for(self.url))
        return sa.create_engine(self.url.set(username=role, password=None))


@pytest.fixture
def database(make_role: MakeRole) -> Iterator[Database]:
    """A database owned by a plain role, which ran the migrations and holds some history."""
    owner = make_role('regionsync "owner"')
    url = create_pg_database()
    admin = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'ALTER DATABASE "{url.database}" OWNER TO {quote_identifier(owner)}')
    admin.dispose()
    db = Database(url, owner)
    as_owner = db.engine_as(owner)
    try:
        migrate(as_owner)
        seed(as_owner, datetime.now(UTC))
    finally:
        as_owner.dispose()
    yield db
    drop_pg_database(url)


def readable(engine: Engine, names: list[str]) -> dict[str, bool]:
    result = {}
    for name in names:
        try:
            with engine.connect() as c:
                c.exec_driver_sql(f"SELECT * FROM {name} LIMIT 1").all()
            result[name] = True
        except sa.exc.ProgrammingError:
            result[name] = False
    return result


def test_reader_reads_every_table_and_view_and_writes_nothing(
    database: Database, make_role: MakeRole
) -> None:
    reader = make_role('Reader "BI"')
    admin = database.engine_as()
    as_reader = database.engine_as(reader)
    try:
        assert not any(readable(as_reader, TABLES + VIEWS).values())
        statements = grant_readonly(admin, reader)
        assert readable(as_reader, TABLES + VIEWS) == dict.fromkeys(TABLES + VIEWS, True)
        for statement in WRITES:
            with as_reader.connect() as c, pytest.raises(sa.exc.ProgrammingError) as caught:
                c.exec_driver_sql(statement)
            assert "permission denied" in str(caught.value) or "must be owner" in str(
                caught.value
            ), statement
        assert statements == readonly_grants(
            reader, "public", owner=database.owner, database=database.url.database
        )
    finally:
        as_reader.dispose()
        admin.dispose()


def test_tables_and_views_added_later_by_the_owner_are_readable_too(
    database: Database, make_role: MakeRole
) -> None:
    reader = make_role("reader")
    admin, as_owner, as_reader = (
        database.engine_as(),
        database.engine_as(database.owner),
        database.engine_as(reader),
    )
    try:
        grant_readonly(admin, reader)  # a superuser grants; the owner creates later
        with as_owner.begin() as c:  # what a later migration would add
            c.exec_driver_sql("CREATE TABLE later_table (x int)")
            c.exec_driver_sql("CREATE VIEW later_view AS SELECT x FROM later_table")
        assert readable(as_reader, ["later_table", "later_view"]) == {
            "later_table": True,
            "later_view": True,
        }
    finally:
        for engine in (admin, as_owner, as_reader):
            engine.dispose()


def test_print_mode_works_out_the_sql_and_grants_nothing(
    database: Database, make_role: MakeRole
) -> None:
    reader = make_role("reader")
    admin, as_reader = database.engine_as(), database.engine_as(reader)
    try:
        planned = grant_readonly(admin, reader, execute=False)
        assert readable(as_reader, ["regions"]) == {"regions": False}
        assert grant_readonly(admin, "not created yet", execute=False)[-1].endswith(
            'TO "not created yet"'
        )
        assert grant_readonly(admin, reader) == planned
    finally:
        admin.dispose()
        as_reader.dispose()


def test_the_sql_names_database_schema_and_owner_quoted() -> None:
    assert readonly_grants("metabase", "public", owner="regionsync", database="regionsync") == [
        'GRANT CONNECT ON DATABASE "regionsync" TO "metabase"',
        'GRANT USAGE ON SCHEMA "public" TO "metabase"',
        'GRANT SELECT ON ALL TABLES IN SCHEMA "public" TO "metabase"',
        'ALTER DEFAULT PRIVILEGES FOR ROLE "regionsync" IN SCHEMA "public"'
        ' GRANT SELECT ON TABLES TO "metabase"',
    ]
    assert readonly_grants('x"; DROP TABLE regions; --')[0] == (
        'GRANT USAGE ON SCHEMA "public" TO "x""; DROP TABLE regions; --"'
    )
    with pytest.raises(ConfigError, match="ROLE"):
        readonly_grants("")


def test_unknown_roles_are_refused_as_usage_errors(database: Database) -> None:
    admin = database.engine_as()
    try:
        with pytest.raises(ConfigError, match="no PostgreSQL role named 'nobody at all'") as caught:
            grant_readonly(admin, "nobody at all")
        assert caught.value.exit_code == 2
    finally:
        admin.dispose()


def test_a_user_who_does_not_own_the_tables_is_told_who_does(
    database: Database, make_role: MakeRole
) -> None:
    reader, stranger = make_role("reader"), make_role("stranger")
    as_stranger = database.engine_as(stranger)
    try:
        with pytest.raises(ConfigError, match="must connect as") as caught:
            grant_readonly(as_stranger, reader)
        assert database.owner in str(caught.value)
        assert caught.value.exit_code == 2
    finally:
        as_stranger.dispose()


def test_an_unmigrated_database_says_to_migrate(fresh_pg_url: URL) -> None:
    engine = store.create_engine(settings_for(fresh_pg_url))
    try:
        with pytest.raises(SchemaError, match="run `regionsync migrate`"):
            grant_readonly(engine, "anyone")
    finally:
        engine.dispose()


def test_sqlite_has_no_roles(sqlite_engine: Engine) -> None:
    with pytest.raises(ConfigError, match="needs PostgreSQL") as caught:
        grant_readonly(sqlite_engine, "anyone")
    assert caught.value.exit_code == 2


def test_a_superuser_or_the_owner_is_refused_because_it_would_stay_writable(
    database: Database, make_role: MakeRole
) -> None:
    heir = make_role("owner's heir")
    admin = database.engine_as()
    try:
        with admin.begin() as c:
            c.exec_driver_sql(
                f"GRANT {quote_identifier(database.owner)} TO {quote_identifier(heir)}"
            )
        superuser = admin.url.username
        assert superuser is not None
        for role, says in [
            (superuser, "is a superuser"),
            (database.owner, "is the owner of the tables"),
            (heir, "is the owner of the tables"),
        ]:
            with pytest.raises(ConfigError, match="would not make it read-only") as caught:
                grant_readonly(admin, role)
            assert says in str(caught.value), role
            assert caught.value.exit_code == 2
    finally:
        admin.dispose()


def test_the_command_says_what_it_granted_and_print_says_it_ran_nothing(
    invoke: Invoke, database: Database, make_role: MakeRole
) -> None:
    reader = make_role("reader")
    env = url_env(database.url)
    as_reader = database.engine_as(reader)
    try:
        printed = invoke("grant-readonly", reader, "--print", env=env)
        assert printed.returncode == 0, printed.stderr
        assert readable(as_reader, ["regions"]) == {"regions": False}
        header, *sql = printed.stdout.splitlines()
        assert header == "-- NOT EXECUTED: the SQL `regionsync grant-readonly` would run"
        assert sql == [
            f"{statement};"
            for statement in readonly_grants(
                reader, "public", owner=database.owner, database=database.url.database
            )
        ]

        done = invoke("grant-readonly", reader, env=env)
        assert done.returncode == 0, done.stderr
        assert readable(as_reader, ["regions"]) == {"regions": True}
        granted, can_read = done.stdout.splitlines()
        names = sorted([*TABLES, "notification_deliveries", *VIEWS])
        assert granted == (
            f"granted role {quote_identifier(reader)} read access to {len(names)} tables and "
            f'views in schema "public" of database "{database.url.database}", and to those '
            "later migrations add"
        )
        assert can_read == f"{quote_identifier(reader)} can now read: {', '.join(names)}"
        assert "GRANT" not in done.stdout
    finally:
        as_reader.dispose()
