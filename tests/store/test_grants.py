"""grant-readonly: a role that reads every table and view, present and future, and writes nothing.

Each test has a database of its own, migrated by an owner role that is not a superuser, as
in production; roles are cluster-wide, so their names are unique and they are dropped after.
The reader's name needs quoting, so every statement is run with a name that would break
string-pasted SQL.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.errors import ConfigError, SchemaError
from regionsync.source.saved import FileSource
from regionsync.store.grants import (
    Relation,
    account_grants,
    account_policy_name,
    grant_readonly,
    quote_identifier,
    readable_by,
    readonly_grants,
)
from regionsync.store.schema import migrate
from regionsync.store.tables import accounts as accounts_table
from regionsync.store.tables import applied_answers, notification_deliveries, sync_runs
from regionsync.sync import Guard, run_sync
from regionsync.testing.fakeapi import sample_regions, success_body
from tests.support import MakeRole, admin_url, create_pg_database, drop_pg_database, settings_for
from tests.support.cli import Invoke, assert_one_line_error, url_env
from tests.support.seed import NAMES, seed

TABLES = [
    "accounts",
    "alembic_version",
    "applied_answers",
    "notification_deliveries",
    "region_history",
    "regions",
    "sync_runs",
]
#: The fleet's task queue (procrastinate's tables, revision 0005): readable, as every table.
QUEUE_TABLES = [
    "procrastinate_events",
    "procrastinate_jobs",
    "procrastinate_periodic_defers",
    "procrastinate_workers",
]
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
        names = sorted([*TABLES, *QUEUE_TABLES, *VIEWS])
        assert granted == (
            f"granted role {quote_identifier(reader)} read access to {len(names)} tables and "
            f'views in schema "public" of database "{database.url.database}", and to those '
            "later migrations add"
        )
        assert can_read == f"{quote_identifier(reader)} can now read: {', '.join(names)}"
        assert "GRANT" not in done.stdout
    finally:
        as_reader.dispose()


# grant-readonly ROLE --account NAME: row-level security ----------------------------------

#: The column that names a row's account (docs/analysts.md, *A read-only role*).
ACCOUNT_COLUMN = {"accounts": "name"}
#: Every table and view of the schema, as PostgreSQL lists them: nothing can be forgotten.
RELATIONS = sa.text(
    "SELECT c.relname, c.relkind, EXISTS (SELECT 1 FROM pg_attribute AS a"
    "  WHERE a.attrelid = c.oid AND a.attname = 'account' AND NOT a.attisdropped)"
    " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1"
)
POLICIES = sa.text(
    "SELECT tablename, policyname, permissive, roles, cmd, qual, with_check FROM pg_policies"
    " WHERE schemaname = 'public' ORDER BY 1, 2"
)


def relations(engine: Engine) -> dict[str, str | None]:
    """Every table and view: the column naming each row's account, None if it has none."""
    with engine.connect() as c:
        found = c.execute(RELATIONS).all()
    return {
        name: ACCOUNT_COLUMN.get(name, "account" if has_account else None)
        for name, _kind, has_account in found
    }


def accounts_seen(engine: Engine, name: str, column: str) -> Counter[str] | None:
    """How many rows of each account ``engine``'s role reads in ``name``; None: not allowed."""
    try:
        with engine.connect() as c:
            return Counter(c.exec_driver_sql(f"SELECT {column} FROM {name}").scalars())
    except sa.exc.ProgrammingError as error:
        if "permission denied" not in str(error):
            raise
        return None


def policies(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as c:
        return [tuple(row) for row in c.execute(POLICIES)]


@dataclass(frozen=True)
class Accounts:
    """Accounts ``default`` (the database fixture's), ``a`` and ``b``, each with rows in every
    table, and reader roles: ``a`` limited to account a, ``b`` to b, ``every`` unlimited."""

    database: Database
    readers: dict[str, str]


@pytest.fixture
def accounts(database: Database, make_role: MakeRole) -> Accounts:
    as_owner = database.engine_as(database.owner)
    now = datetime.now(UTC)
    try:
        for number, name in enumerate(["a", "b"], start=1):
            seed(as_owner, now, account=name, first_run=number * 100)
        with as_owner.begin() as c:
            for name in ("default", "a", "b"):
                c.execute(
                    accounts_table.insert().values(
                        name=name, sid=f"SID-{name}", pod="in", created_at=now
                    )
                )
                run = c.execute(
                    sa.select(sa.func.max(sync_runs.c.id)).where(sync_runs.c.account == name)
                ).scalar_one()
                c.execute(
                    applied_answers.insert().values(
                        account=name, digest="0" * 64, sync_run_id=run, fetched=3, rejected=0
                    )
                )
                c.execute(
                    notification_deliveries.insert().values(
                        id=f"msg_{name}",
                        account=name,
                        sync_run_id=run,
                        part=1,
                        parts=1,
                        created_at=now,
                        status="pending",
                        attempts=0,
                        next_attempt_at=now,
                        payload={"account": name},
                    )
                )
            c.exec_driver_sql(  # the seed numbers its runs itself
                "SELECT setval(pg_get_serial_sequence('sync_runs', 'id'), max(id)) FROM sync_runs"
            )
    finally:
        as_owner.dispose()
    readers = {key: make_role(f'reader "{key}"') for key in ("a", "b", "every")}
    admin = database.engine_as()
    try:
        grant_readonly(admin, readers["a"], account="a")
        grant_readonly(admin, readers["b"], account="b")
        grant_readonly(admin, readers["every"])
    finally:
        admin.dispose()
    return Accounts(database, readers)


def test_a_role_limited_to_an_account_reads_only_its_rows_in_every_table_and_view(
    accounts: Accounts,
) -> None:
    db = accounts.database
    as_owner = db.engine_as(db.owner)
    try:
        found = relations(as_owner)
        assert set(TABLES + VIEWS) <= set(found)
        everything = {
            name: accounts_seen(as_owner, name, col) for name, col in found.items() if col
        }
    finally:
        as_owner.dispose()
    unscoped = [name for name, column in found.items() if column is None]
    assert sorted(unscoped) == ["alembic_version", *QUEUE_TABLES]
    for counts in everything.values():
        assert counts is not None
        assert {"a", "b"} <= set(counts)
    for key, role in accounts.readers.items():
        engine = db.engine_as(role)
        try:
            for name, column in found.items():
                if column is None:  # no account's rows: not granted to a limited role
                    seen = accounts_seen(engine, name, "*")
                    assert (seen is None) is (key != "every"), (key, name)
                    continue
                seen = accounts_seen(engine, name, column)
                expected = (
                    everything[name] if key == "every" else Counter({key: everything[name][key]})
                )
                assert seen == expected, (key, name)
                assert seen[key if key != "every" else "a"] >= 1, (key, name)
        finally:
            engine.dispose()


def test_no_reader_writes_and_the_owners_sync_still_writes_after_the_grants(
    accounts: Accounts, tmp_path: Path
) -> None:
    db = accounts.database
    for role in accounts.readers.values():
        engine = db.engine_as(role)
        try:
            for statement in WRITES:
                with engine.connect() as c, pytest.raises(sa.exc.ProgrammingError) as caught:
                    c.exec_driver_sql(statement)
                assert "permission denied" in str(caught.value) or "must be owner" in str(
                    caught.value
                ), (role, statement)
        finally:
            engine.dispose()

    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps(success_body(sample_regions())))
    replace_all = Guard(allow_mass_removal=True)  # the seeded regions are not in the answer
    as_owner = store.create_engine(settings_for(db.url.set(username=db.owner, password=None)))
    as_a = db.engine_as(accounts.readers["a"])
    try:
        before = accounts_seen(as_a, "sync_runs", "account")
        result = run_sync(as_owner, FileSource(answer), account="a", guard=replace_all)
        assert result.status == "succeeded"
        assert result.counts.added == len(sample_regions())
        after = accounts_seen(as_a, "sync_runs", "account")
        assert before is not None
        assert after == Counter({"a": before["a"] + 1})
        active = accounts_seen(as_a, "active_regions", "account")
        assert active == Counter({"a": len(sample_regions())})
        synced_b = run_sync(as_owner, FileSource(answer), account="b", guard=replace_all)
        assert synced_b.status == "succeeded"
        assert accounts_seen(as_a, "sync_runs", "account") == after
    finally:
        as_owner.dispose()
        as_a.dispose()


def test_a_role_that_writes_without_owning_the_tables_still_writes(
    accounts: Accounts, make_role: MakeRole
) -> None:
    """Row-level security on the tables changes nothing for roles not limited to accounts:
    the permissive policy is for every command, not only reads."""
    writer = make_role("writer")
    admin = accounts.database.engine_as()
    as_writer = accounts.database.engine_as(writer)
    try:
        with admin.begin() as c:
            who = quote_identifier(writer)
            c.exec_driver_sql(f"GRANT SELECT, UPDATE ON regions TO {who}")
            c.exec_driver_sql(f"GRANT SELECT, DELETE ON applied_answers TO {who}")  # the trigger
        with as_writer.begin() as c:
            changed = c.exec_driver_sql("UPDATE regions SET display_name = 'x'").rowcount
        assert changed == 3 * len(NAMES)
        with admin.connect() as c:  # the trigger forgot every account's answer, as the writer
            assert c.exec_driver_sql("SELECT count(*) FROM applied_answers").scalar_one() == 0
            names = c.exec_driver_sql("SELECT DISTINCT display_name FROM regions").scalars()
            assert list(names) == ["x"]
    finally:
        admin.dispose()
        as_writer.dispose()


def test_a_second_account_adds_to_the_first_and_a_grant_run_again_changes_nothing(
    accounts: Accounts,
) -> None:
    db = accounts.database
    reader = accounts.readers["a"]
    admin, as_reader = db.engine_as(), db.engine_as(reader)
    try:
        once = policies(admin)
        again = grant_readonly(admin, reader, account="a")
        assert policies(admin) == once
        assert not [s for s in again if "POLICY" in s or "ROW LEVEL SECURITY" in s], again

        grant_readonly(admin, reader, account="b")
        assert accounts_seen(as_reader, "regions", "account") == Counter({"a": 3, "b": 3})
        mine = [row for row in policies(admin) if row[3] == [reader]]
        assert {row[0] for row in mine} == {
            name for name, column in relations(admin).items() if column
        } - set(VIEWS)
        assert all(row[2] == "RESTRICTIVE" and row[4] == "SELECT" for row in mine)
        assert len({row[1] for row in mine}) == 1, "one policy per role, the same name on each"
        assert readable_by(admin, reader).accounts == ["a", "b"]
        assert readable_by(admin, accounts.readers["every"]).accounts is None
        assert grant_readonly(admin, reader, account="b", execute=False) == [
            s for s in again if "POLICY" not in s
        ]
    finally:
        admin.dispose()
        as_reader.dispose()


def test_the_account_sql_quotes_the_role_and_the_accounts() -> None:
    tables = [
        Relation("regions", "r", False, True, False),
        Relation("accounts", "r", True, False, False),
        Relation("alembic_version", "r", False, False, False),
        Relation("sync_health", "v", False, True, True),
        Relation("by_hand", "v", False, True, False),
    ]
    role = 'x"; DROP TABLE regions; --'
    policy = account_policy_name(role)
    assert policy == account_policy_name(role) != account_policy_name("x")
    assert len(policy) <= 63
    assert account_grants(role, ["b", "a", "a"], "public", tables) == [
        'GRANT USAGE ON SCHEMA "public" TO "x""; DROP TABLE regions; --"',
        'CREATE POLICY regionsync_every_row ON "public"."regions" AS PERMISSIVE FOR ALL TO PUBLIC'
        " USING (true) WITH CHECK (true)",
        f'CREATE POLICY {policy} ON "public"."regions" AS RESTRICTIVE FOR SELECT TO'
        ' "x""; DROP TABLE regions; --" USING ("account" = ANY (ARRAY[\'a\', \'b\']::text[]))',
        'ALTER TABLE "public"."regions" ENABLE ROW LEVEL SECURITY',
        'GRANT SELECT ON "public"."regions" TO "x""; DROP TABLE regions; --"',
        'CREATE POLICY regionsync_every_row ON "public"."accounts" AS PERMISSIVE FOR ALL TO'
        " PUBLIC USING (true) WITH CHECK (true)",
        f'CREATE POLICY {policy} ON "public"."accounts" AS RESTRICTIVE FOR SELECT TO'
        ' "x""; DROP TABLE regions; --" USING ("name" = ANY (ARRAY[\'a\', \'b\']::text[]))',
        'GRANT SELECT ON "public"."accounts" TO "x""; DROP TABLE regions; --"',
        'GRANT SELECT ON "public"."sync_health" TO "x""; DROP TABLE regions; --"',
    ]
    with pytest.raises(ConfigError, match='--account: "a\'b" is not an account name'):
        account_grants("x", ["a'b"], "public", tables)


def test_the_command_limits_a_role_to_an_account_and_print_runs_nothing(
    invoke: Invoke, database: Database, make_role: MakeRole
) -> None:
    reader = make_role("reader")
    env = url_env(database.url)
    as_reader = database.engine_as(reader)
    admin = database.engine_as()
    try:
        printed = invoke("grant-readonly", reader, "--account", "default", "--print", env=env)
        assert printed.returncode == 0, printed.stderr
        assert policies(admin) == []
        assert readable(as_reader, ["regions"]) == {"regions": False}
        header, *sql = printed.stdout.splitlines()
        assert header == "-- NOT EXECUTED: the SQL `regionsync grant-readonly` would run"
        planned = grant_readonly(admin, reader, account="default", execute=False)
        assert sql == [f"{statement};" for statement in planned]
        assert any("CREATE POLICY" in line for line in sql)

        done = invoke("grant-readonly", reader, "--account", "default", env=env)
        assert done.returncode == 0, done.stderr
        granted, can_read = done.stdout.splitlines()
        names = sorted(set(TABLES + VIEWS) - {"alembic_version"})
        assert granted == (
            f"granted role {quote_identifier(reader)} read access to {len(names)} tables and "
            f'views in schema "public" of database "{database.url.database}", limited to the '
            "rows of account(s) default by row-level security; run it again after a migration "
            "to cover what the migration adds"
        )
        assert can_read == f"{quote_identifier(reader)} can now read: {', '.join(names)}"
        assert accounts_seen(as_reader, "regions", "account") == Counter({"default": 3})
    finally:
        as_reader.dispose()
        admin.dispose()


def test_a_role_reads_every_account_or_only_some_and_a_grant_does_not_change_which(
    invoke: Invoke, accounts: Accounts
) -> None:
    env = url_env(accounts.database.url)
    limited, unlimited = accounts.readers["a"], accounts.readers["every"]
    widen = invoke("grant-readonly", limited, env=env)
    assert_one_line_error(
        widen, 2, "ROLE", "reads only the rows of account(s) a", "would not widen"
    )
    narrow = invoke("grant-readonly", unlimited, "--account", "a", env=env)
    assert_one_line_error(narrow, 2, "ROLE", "already reads every account's rows")
    bad = invoke("grant-readonly", limited, "--account", "Not/A name", env=env)
    assert_one_line_error(bad, 2, "--account", "is not an account name")
    as_limited = accounts.database.engine_as(limited)
    try:
        assert accounts_seen(as_limited, "regions", "account") == Counter({"a": 3})
    finally:
        as_limited.dispose()


def test_what_a_migration_adds_is_readable_to_a_limited_role_only_once_granted_again(
    accounts: Accounts,
) -> None:
    """A view that reads with its owner's rights would show every account: never granted."""
    db = accounts.database
    reader = accounts.readers["a"]
    admin, as_owner, as_reader = db.engine_as(), db.engine_as(db.owner), db.engine_as(reader)
    later = {"later_table": "account", "later_view": "account", "later_invoker": "account"}
    try:
        with as_owner.begin() as c:
            c.exec_driver_sql("CREATE TABLE later_table (account text NOT NULL)")
            c.exec_driver_sql("INSERT INTO later_table VALUES ('a'), ('b'), ('b')")
            c.exec_driver_sql("CREATE VIEW later_view AS SELECT account FROM regions")
            c.exec_driver_sql(
                "CREATE VIEW later_invoker WITH (security_invoker = true)"
                " AS SELECT account FROM later_table"
            )
        assert {n: accounts_seen(as_reader, n, c) for n, c in later.items()} == dict.fromkeys(later)
        grant_readonly(admin, reader, account="a")
        assert {n: accounts_seen(as_reader, n, c) for n, c in later.items()} == {
            "later_table": Counter({"a": 1}),
            "later_view": None,
            "later_invoker": Counter({"a": 1}),
        }
        assert "later_view" not in readable_by(admin, reader).relations
    finally:
        for engine in (admin, as_owner, as_reader):
            engine.dispose()
