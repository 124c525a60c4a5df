"""Several Kaleyra accounts in one PostgreSQL database, one schema each (docs/operations.md,
*Several accounts in one database*): migrated, synced, locked, granted and reported apart."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from structlog.testing import capture_logs

from regionsync import store
from regionsync.source.kaleyra import KaleyraClient
from regionsync.store import lock
from regionsync.store.grants import quote_identifier
from regionsync.store.schema import head_revision
from regionsync.sync import run_sync
from regionsync.testing.fakeapi import FakeKaleyra, sample_regions
from tests.support import admin_url, clean_environ, settings_for
from tests.support.cli import Invoke, run_cli
from tests.support.docs import page, section
from tests.support.fakeapi_fixtures import API_KEY, FAST, start_fake

ROOT = Path(__file__).resolve().parents[2]
REGIONS = sample_regions()
#: Account a (an agent on the IN pod) and account b (on NA) have different regions.
ACCOUNTS = {"a": REGIONS[:7], "b": REGIONS[7:]}


def ids(regions: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in regions}


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeKaleyra]]:
    started = {schema: start_fake(regions=regions) for schema, regions in ACCOUNTS.items()}
    yield started
    for fake in started.values():
        fake.stop()


def account_env(url: URL, fake: FakeKaleyra, schema: str) -> dict[str, str]:
    return {
        "REGIONSYNC_DATABASE_URL": url.render_as_string(hide_password=False),
        "REGIONSYNC_DB_SCHEMA": schema,
        "KALEYRA_BASE_URL": fake.url,
        "KALEYRA_SID": fake.sid,
        "KALEYRA_API_KEY": API_KEY,
    }


def in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, env: dict[str, str], *argv: str
) -> tuple[int, str, str]:
    """``regionsync ARGV`` in this process, with only ``env`` as regionsync's settings."""
    with monkeypatch.context() as patch:
        done = run_cli(patch, capsys, argv, env)
    return done.returncode, done.stdout, done.stderr


def admin(url: URL) -> Engine:
    """An engine on the test database with the server's own search_path (not regionsync's)."""
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


def rows(url: URL, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = admin(url)
    try:
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def execute(url: URL, sql: str) -> None:
    engine = admin(url)
    try:
        with engine.connect() as c:
            c.exec_driver_sql(sql)
    finally:
        engine.dispose()


def tables_in(url: URL, schema: str) -> set[str]:
    found = rows(
        url,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = :s AND c.relkind IN ('r', 'v')",
        s=schema,
    )
    return {name for (name,) in found}


def migrate_both(url: URL, fakes: dict[str, FakeKaleyra], monkeypatch: Any, capsys: Any) -> None:
    for schema, fake in fakes.items():
        code, out, err = in_process(monkeypatch, capsys, account_env(url, fake, schema), "migrate")
        assert code == 0, err
        assert f" schema {schema} migrated: empty -> {head_revision()}" in out


def test_two_accounts_migrate_and_sync_into_their_own_schemas(
    fresh_pg_url: URL, fakes: dict[str, FakeKaleyra], monkeypatch: Any, capsys: Any
) -> None:
    url = fresh_pg_url
    migrate_both(url, fakes, monkeypatch, capsys)
    for schema, fake in fakes.items():
        env = account_env(url, fake, schema)
        code, out, err = in_process(monkeypatch, capsys, env, "run")
        assert code == 0, err
        assert "succeeded" in out
        code, out, err = in_process(monkeypatch, capsys, env, "status", "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["active_regions"] == len(ACCOUNTS[schema])
        assert [r["status"] for r in report["recent_runs"]] == ["succeeded"]

    expected = {"regions", "region_history", "sync_runs", "alembic_version", "sync_health"}
    expected |= {"region_status_intervals", "notification_deliveries"}
    for schema, regions in ACCOUNTS.items():
        assert expected <= tables_in(url, schema)
        stored = rows(url, f"SELECT id FROM {schema}.regions")
        assert {i for (i,) in stored} == ids(regions)
        assert rows(url, f"SELECT version_num FROM {schema}.alembic_version") == [
            (head_revision(),)
        ]
        history = rows(url, f"SELECT DISTINCT region_id FROM {schema}.region_history")
        assert {i for (i,) in history} == ids(regions)
    assert tables_in(url, "public") == set()

    again = in_process(monkeypatch, capsys, account_env(url, fakes["a"], "a"), "migrate")
    assert again[0] == 0
    assert "up to date" in again[1]


def test_a_schema_not_migrated_yet_says_to_migrate_while_the_other_works(
    fresh_pg_url: URL, fakes: dict[str, FakeKaleyra], monkeypatch: Any, capsys: Any
) -> None:
    env_a = account_env(fresh_pg_url, fakes["a"], "a")
    assert in_process(monkeypatch, capsys, env_a, "migrate")[0] == 0
    code, _out, err = in_process(
        monkeypatch, capsys, account_env(fresh_pg_url, fakes["b"], "b"), "run"
    )
    assert code == 2
    assert "run `regionsync migrate`" in err
    assert len(err.strip().splitlines()) == 1
    assert in_process(monkeypatch, capsys, env_a, "run")[0] == 0


def run_subprocess(env: dict[str, str]) -> subprocess.Popen[str]:
    base = clean_environ()
    return subprocess.Popen(
        [sys.executable, "-m", "regionsync", "run"],
        env={**base, **env, "REGIONSYNC_LOG_FORMAT": "json"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_accounts_sync_at_the_same_time_without_blocking_each_other(
    fresh_pg_url: URL, fakes: dict[str, FakeKaleyra], monkeypatch: Any, capsys: Any
) -> None:
    url = fresh_pg_url
    migrate_both(url, fakes, monkeypatch, capsys)
    for fake in fakes.values():
        fake.fail("slow:2", times=1)  # each run holds its lock for two seconds at least
    procs = {s: run_subprocess(account_env(url, fake, s)) for s, fake in fakes.items()}
    outputs = {s: p.communicate(timeout=120) for s, p in procs.items()}

    for schema, (out, err) in outputs.items():
        assert procs[schema].returncode == 0, err
        assert "succeeded" in out, (out, err)
        runs = rows(url, f"SELECT status, started_at, finished_at FROM {schema}.sync_runs")
        assert [status for status, *_ in runs] == ["succeeded"]
        stored = rows(url, f"SELECT id FROM {schema}.regions")
        assert {i for (i,) in stored} == ids(ACCOUNTS[schema])
    [(_, a_start, a_end)] = rows(url, "SELECT status, started_at, finished_at FROM a.sync_runs")
    [(_, b_start, b_end)] = rows(url, "SELECT status, started_at, finished_at FROM b.sync_runs")
    assert a_start < b_end, "the two runs did not overlap"
    assert b_start < a_end, "the two runs did not overlap"


def test_a_lock_held_in_one_schema_skips_only_that_schemas_sync(
    fresh_pg_url: URL, fakes: dict[str, FakeKaleyra], monkeypatch: Any, capsys: Any
) -> None:
    """The keys themselves are checked in test_lock."""
    migrate_both(fresh_pg_url, fakes, monkeypatch, capsys)
    holder = admin(fresh_pg_url)
    try:
        with holder.connect() as c:
            c.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": lock.advisory_lock_key("a")})
            results = {}
            for schema, fake in fakes.items():
                settings = settings_for(fresh_pg_url, **account_env(fresh_pg_url, fake, schema))
                engine = store.create_engine(settings)
                try:
                    results[schema] = run_sync(
                        engine, KaleyraClient(settings.require_kaleyra(), retry=FAST)
                    ).status
                finally:
                    engine.dispose()
    finally:
        holder.dispose()
    assert results == {"a": "skipped", "b": "succeeded"}


def test_notify_payload_names_the_schema(
    fresh_pg_url: URL, fakes: dict[str, FakeKaleyra], monkeypatch: Any, capsys: Any
) -> None:
    migrate_both(fresh_pg_url, fakes, monkeypatch, capsys)
    dsn = fresh_pg_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN regionsync_changes")
        env = account_env(fresh_pg_url, fakes["b"], "b")
        assert in_process(monkeypatch, capsys, env, "run")[0] == 0
        [notice] = list(listener.notifies(timeout=10, stop_after=1))
    payload = json.loads(notice.payload)
    assert payload["schema"] == "b"
    assert payload["added"] == len(ACCOUNTS["b"])


@pytest.fixture
def reader(fresh_pg_url: URL) -> Iterator[str]:
    """A LOGIN role, dropped with its grants in the test database."""
    name = f"reader_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with server.connect() as c:
        c.exec_driver_sql(f"CREATE ROLE {quote_identifier(name)} LOGIN")
    yield name
    execute(fresh_pg_url, f"DROP OWNED BY {quote_identifier(name)}")
    with server.connect() as c:
        c.exec_driver_sql(f"DROP ROLE IF EXISTS {quote_identifier(name)}")
    server.dispose()


def test_grant_readonly_grants_one_schema_only(
    fresh_pg_url: URL,
    fakes: dict[str, FakeKaleyra],
    reader: str,
    monkeypatch: Any,
    capsys: Any,
) -> None:
    url = fresh_pg_url
    migrate_both(url, fakes, monkeypatch, capsys)
    code, out, err = in_process(
        monkeypatch, capsys, account_env(url, fakes["a"], "a"), "grant-readonly", reader
    )
    assert code == 0, err
    # 7 tables, 4 of the fleet's task queue, 5 views
    assert 'read access to 16 tables and views in schema "a" of database' in out
    assert '"b"' not in out
    assert '"public"' not in out
    execute(url, "CREATE TABLE a.added_later (x int)")  # as the tables' owner, like a migration

    as_reader = sa.create_engine(url.set(username=reader, password=None))
    readable: dict[str, bool] = {}
    try:
        for name in ("a.regions", "a.region_status_intervals", "a.added_later", "b.regions"):
            try:
                with as_reader.connect() as c:
                    c.exec_driver_sql(f"SELECT * FROM {name} LIMIT 1").all()
                readable[name] = True
            except sa.exc.ProgrammingError:
                readable[name] = False
        with pytest.raises(sa.exc.ProgrammingError), as_reader.begin() as c:
            c.exec_driver_sql("DELETE FROM a.regions")
    finally:
        as_reader.dispose()
    assert readable == {
        "a.regions": True,
        "a.region_status_intervals": True,
        "a.added_later": True,
        "b.regions": False,
    }


def documented_cross_schema_query() -> str:
    text = section(page("operations.md"), "Several accounts in one database")
    return text.partition("```sql\n")[2].partition("```")[0]


def test_the_documented_query_across_both_schemas_runs(
    fresh_pg_url: URL, fakes: dict[str, FakeKaleyra], monkeypatch: Any, capsys: Any
) -> None:
    migrate_both(fresh_pg_url, fakes, monkeypatch, capsys)
    for schema, fake in fakes.items():
        in_process(monkeypatch, capsys, account_env(fresh_pg_url, fake, schema), "run")
    sql = documented_cross_schema_query()
    assert "a.region_status_intervals" in sql
    assert "b.region_status_intervals" in sql
    found = rows(fresh_pg_url, sql)
    per_account: dict[str, int] = {}
    for row in found:
        per_account[row[0]] = per_account.get(row[0], 0) + 1
    assert per_account == {schema: len(regions) for schema, regions in ACCOUNTS.items()}


@pytest.mark.parametrize(
    "name", ["Account_A", "1st", "pg_temp", "a-b", "a b", "a;drop", "münchen", "x" * 64]
)
def test_an_unsafe_schema_name_is_a_bad_setting(
    name: str, pg_url: URL, monkeypatch: Any, capsys: Any
) -> None:
    env = {
        "REGIONSYNC_DATABASE_URL": pg_url.render_as_string(hide_password=False),
        "REGIONSYNC_DB_SCHEMA": name,
    }
    code, out, err = in_process(monkeypatch, capsys, env, "status")
    assert code == 2
    assert out == ""
    [line] = err.strip().splitlines()
    assert "REGIONSYNC_DB_SCHEMA" in line


@pytest.mark.parametrize("name", ["information_schema", "pg_catalog", "pg_regionsync"])
def test_migrate_refuses_a_system_schema_and_writes_nothing(
    name: str, fresh_pg_url: URL, monkeypatch: Any, capsys: Any
) -> None:
    env = {
        "REGIONSYNC_DATABASE_URL": fresh_pg_url.render_as_string(hide_password=False),
        "REGIONSYNC_DB_SCHEMA": name,
    }
    code, out, err = in_process(monkeypatch, capsys, env, "migrate")
    assert code == 2
    assert out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("regionsync: error: REGIONSYNC_DB_SCHEMA: ")
    assert "PostgreSQL's own" in line
    created = rows(
        fresh_pg_url,
        "SELECT c.relname FROM pg_class c WHERE c.relname IN ('regions', 'alembic_version')",
    )
    assert created == []


@pytest.mark.parametrize("command", ["status", "regions", "daemon", "check", "grant-readonly"])
def test_an_unmigrated_schema_is_named_with_its_database(
    command: str, fresh_pg_url: URL, fakes: dict[str, FakeKaleyra], monkeypatch: Any, capsys: Any
) -> None:
    url = fresh_pg_url.set(password="hunter2-pw")  # trust auth: any password connects
    env = account_env(url, fakes["a"], "acct_x")
    argv = (command, "reader") if command == "grant-readonly" else (command,)
    code, out, err = in_process(monkeypatch, capsys, env, *argv)
    assert code == (1 if command == "check" else 2), err
    [line] = [
        line
        for line in (out + err).splitlines()
        if "no regionsync schema: run `regionsync migrate`" in line
    ]
    where = f"{url.host}:{url.port or 5432}/{url.database}"
    assert where in line
    assert "schema acct_x (REGIONSYNC_DB_SCHEMA)" in line
    assert "hunter2-pw" not in out + err


def test_the_longest_schema_name_postgresql_allows_works(fresh_pg_url: URL) -> None:
    name = "x" * 63
    engine = store.create_engine(settings_for(fresh_pg_url, REGIONSYNC_DB_SCHEMA=name))
    try:
        from regionsync.store.schema import migrate

        migrate(engine)
    finally:
        engine.dispose()
    assert "regions" in tables_in(fresh_pg_url, name)


def test_the_default_schema_is_public() -> None:
    assert settings_for("postgresql://u@h/db").db_schema == "public"


def test_sqlite_ignores_the_schema_with_a_warning(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    settings = settings_for(url, REGIONSYNC_DB_SCHEMA="a")
    with capture_logs() as logs:
        engine = store.create_engine(settings)
    engine.dispose()
    assert [e["log_level"] for e in logs if e["event"] == "settings.db_schema_ignored"] == [
        "warning"
    ]
    with capture_logs() as quiet:
        store.create_engine(settings_for(url)).dispose()
    assert not [e for e in quiet if e["event"] == "settings.db_schema_ignored"]


def test_sqlite_commands_still_work_with_the_setting(tmp_path: Path, invoke: Invoke) -> None:
    sample = ROOT / "regionsync" / "samples" / "regions.json"
    env = {
        "REGIONSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'one.db'}",
        "REGIONSYNC_DB_SCHEMA": "a",
        "REGIONSYNC_LOG_FORMAT": "json",
    }
    for argv in (["migrate"], ["run", "--from-file", str(sample)]):
        done = invoke(*argv, env=env)
        assert done.returncode == 0, done.stderr
        assert "settings.db_schema_ignored" in done.stderr


@pytest.mark.slow
def test_alembic_itself_migrates_and_checks_a_schema(fresh_pg_url: URL) -> None:
    env = {
        **clean_environ(),
        "REGIONSYNC_DATABASE_URL": fresh_pg_url.render_as_string(hide_password=False),
        "REGIONSYNC_DB_SCHEMA": "a",
    }
    for command in (["upgrade", "head"], ["check"]):
        done = subprocess.run(
            [sys.executable, "-m", "alembic", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    assert rows(fresh_pg_url, "SELECT version_num FROM a.alembic_version") == [(head_revision(),)]
    assert tables_in(fresh_pg_url, "public") == set()


def same(left: list[tuple[Any, ...]], right: list[tuple[Any, ...]]) -> bool:
    """Equal rows, but for ages measured up to now(), which run on between two queries."""

    def close(x: Any, y: Any) -> bool:
        if isinstance(x, timedelta) and isinstance(y, timedelta):
            return abs(x - y) < timedelta(seconds=5)
        if isinstance(x, float) and isinstance(y, float):
            return abs(x - y) < 5
        return bool(x == y)

    return len(left) == len(right) and all(
        len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
        for a, b in zip(left, right, strict=True)
    )


def test_the_example_queries_and_views_answer_per_schema(
    fresh_pg_url: URL, pg_engine: Engine
) -> None:
    """Seeded alike, schema a answers every example query as a one-account database does,
    and the empty schema b beside it answers none of that."""
    from regionsync.store.schema import migrate
    from tests.store.test_queries import QUERIES, run
    from tests.support.seed import seed

    now = datetime.now(UTC).replace(microsecond=0)
    engines = {
        s: store.create_engine(settings_for(fresh_pg_url, REGIONSYNC_DB_SCHEMA=s)) for s in "ab"
    }
    try:
        for engine in engines.values():
            migrate(engine)
        seed(engines["a"], now)
        seed(pg_engine, now)
        params = {"region_id": "a", "as_of": now - timedelta(days=5), "date": now.date()}
        for name in QUERIES:
            alone = run(pg_engine, name, **params)
            assert alone, name
            assert same(run(engines["a"], name, **params), alone), name
            assert not same(run(engines["b"], name, **params), alone), name
        for schema, engine in engines.items():
            with engine.connect() as c:
                health = c.execute(sa.text("SELECT account, active_regions FROM sync_health"))
                found = [tuple(row) for row in health]
            # One row per account: the seeded default account in a, none in the empty b.
            assert found == ([("default", 2)] if schema == "a" else []), schema
    finally:
        for engine in engines.values():
            engine.dispose()
