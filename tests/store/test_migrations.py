"""Migrations: up, down and up again on both databases; models and migrations agree; a
one-account database of revision 0003 becomes an account's rows at 0004, and back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Engine

from regionsync.errors import ConfigError, SchemaError
from regionsync.settings import check_account_name
from regionsync.store.models import Base
from regionsync.store.schema import (
    HEAD,
    alembic_config,
    current_revision,
    head_revision,
    migrate,
    ours,
    require_current,
)
from regionsync.store.tables import accounts
from regionsync.sync import run_sync
from tests.support.migrations import downgrade, upgrade
from tests.support.seed import seed
from tests.support.sources import ListSource, region

REPO = Path(__file__).resolve().parents[2]
TABLES = {"regions", "region_history", "sync_runs", "notification_deliveries"}
VIEWS = {"region_status_intervals"}


def _names(engine: Engine) -> tuple[set[str], set[str]]:
    inspector = sa.inspect(engine)
    return set(inspector.get_table_names()), set(inspector.get_view_names())


def test_migrate_up_down_up(empty_engine: Engine) -> None:
    with pytest.raises(SchemaError, match="run `regionsync migrate`"):
        require_current(empty_engine)
    assert migrate(empty_engine) == (None, head_revision())
    tables, views = _names(empty_engine)
    assert tables >= TABLES | {"alembic_version"}
    assert views >= VIEWS
    require_current(empty_engine)

    assert migrate(empty_engine) == (head_revision(), head_revision())

    downgrade(empty_engine, "base")
    tables, views = _names(empty_engine)
    assert not tables & TABLES
    assert not views
    assert current_revision(empty_engine) is None

    migrate(empty_engine)
    assert current_revision(empty_engine) == head_revision()


def test_head_is_the_newest_migration() -> None:
    # The schema check reads HEAD instead of loading Alembic: a new migration must bump it.
    script_head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert script_head == HEAD == head_revision()


def test_several_revisions_in_alembic_version_are_refused(empty_engine: Engine) -> None:
    migrate(empty_engine)
    with empty_engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO alembic_version VALUES ('0000')")
    with pytest.raises(SchemaError, match=rf"several schema revisions \(0000, {HEAD}\)"):
        current_revision(empty_engine)


def test_models_match_migrations(engine: Engine) -> None:
    with engine.connect() as connection:
        opts = {"compare_type": True, "include_name": ours}
        context = MigrationContext.configure(connection, opts=opts)
        assert compare_metadata(context, Base.metadata) == []


def test_check_constraints_allow_what_the_migrations_allow(engine: Engine) -> None:
    """The models generate their CHECK text from Literal types; ``alembic check`` does not
    compare CHECK constraints, so compare the values each one allows, in order."""
    inspector = sa.inspect(engine)
    for table in Base.metadata.sorted_tables:
        modelled = {
            str(check.name): re.findall(r"'(\w+)'", str(check.sqltext))
            for check in table.constraints
            if isinstance(check, sa.CheckConstraint)
        }
        migrated = {
            str(check["name"]): re.findall(r"'(\w+)'", check["sqltext"])
            for check in inspector.get_check_constraints(table.name)
        }
        assert migrated == modelled, table.name


def test_out_of_date_schema_says_to_migrate(empty_engine: Engine) -> None:
    migrate(empty_engine)
    with empty_engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    with pytest.raises(SchemaError) as caught:
        require_current(empty_engine)
    assert "0000" in str(caught.value)
    assert "run `regionsync migrate`" in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.slow
def test_alembic_cli_uses_regionsync_settings(fresh_pg_url: URL) -> None:
    env = {
        **os.environ,
        "REGIONSYNC_DATABASE_URL": fresh_pg_url.render_as_string(hide_password=False),
    }
    alembic = [sys.executable, "-m", "alembic"]
    for command in (["upgrade", "head"], ["check"], ["downgrade", "base"], ["upgrade", "head"]):
        done = subprocess.run(
            [*alembic, *command], cwd=REPO, env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
    assert (
        "No new upgrade operations detected"
        in subprocess.run(
            [*alembic, "check"], cwd=REPO, env=env, capture_output=True, text=True, check=True
        ).stdout
    )


# --- 0003 -> 0004: the one account's rows get its name ---------------------------------------

T0 = datetime(2026, 11, 1, tzinfo=UTC)
OLD_TABLES = ("sync_runs", "regions", "region_history", "notification_deliveries")
NEW_TABLES = (*OLD_TABLES, "accounts", "applied_answers")


def _at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def _run(hours: int, status: str, **counts: int) -> dict[str, Any]:
    """A run's row; its id comes from the table's sequence, as a sync's does."""
    names = ("fetched", "added", "changed", "unchanged", "removed", "restored", "rejected")
    return {
        "started_at": _at(hours),
        "finished_at": _at(hours) + timedelta(seconds=3),
        "status": status,
        "trigger": "daemon",
        "source": "https://api.in.kaleyra.io",
        "error": None if status == "succeeded" else f"{status} at 0003",
        **{name: counts.get(name, 0) for name in names},
    }


def _region(
    rid: str, enabled: bool, hosting: str, *, updated: int, removed: int | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "region_name": f"/v1/regions/{rid}",
        "display_name": f"Region {rid}",
        "management_type": "GOOGLE_MANAGED",
        "management_type_value": 2,
        "carrier_enabled": enabled,
        "hosting_region": hosting,
        "raw": {"id": rid},
        "first_seen_at": _at(0),
        "updated_at": _at(updated),
        "removed_at": None if removed is None else _at(removed),
    }


def _change(rid: str, run: int, hours: int, change: str, before: Any, after: Any) -> dict[str, Any]:
    return {
        "region_id": rid,
        "sync_run_id": run,
        "changed_at": _at(hours),
        "change": change,
        "carrier_enabled_before": None if before is None else before[0],
        "carrier_enabled_after": None if after is None else after[0],
        "hosting_region_before": None if before is None else before[1],
        "hosting_region_after": None if after is None else after[1],
    }


def populate_0003(engine: Engine) -> None:
    """What syncs at 0003 leave: a, b, c added; a changed and b removed; a failed run; b
    restored and d added then removed; a skipped run; one delivered notification."""
    meta = sa.MetaData()
    meta.reflect(engine, only=OLD_TABLES)
    t = meta.tables
    na, eu = (True, "NORTH_AMERICA"), (False, "EUROPE")
    runs = [
        _run(0, "succeeded", fetched=3, added=3),
        _run(1, "succeeded", fetched=2, changed=1, unchanged=1, removed=1),
        _run(2, "failed"),
        _run(3, "succeeded", fetched=4, added=1, unchanged=2, restored=1),
        _run(4, "succeeded", fetched=3, unchanged=3, removed=1),
        _run(5, "skipped"),
    ]
    with engine.begin() as c:
        for run in runs:
            c.execute(t["sync_runs"].insert().values(**run))
        ids = c.execute(sa.select(t["sync_runs"].c.id).order_by(t["sync_runs"].c.id)).scalars()
        assert list(ids) == [1, 2, 3, 4, 5, 6]
        c.execute(
            t["regions"].insert(),
            [
                _region("a", False, "EUROPE", updated=1),
                _region("b", True, "NORTH_AMERICA", updated=3),
                _region("c", True, "NORTH_AMERICA", updated=0),
                {**_region("d", True, "EUROPE", updated=4, removed=4), "first_seen_at": _at(3)},
            ],
        )
        c.execute(
            t["region_history"].insert(),
            [
                _change("a", 1, 0, "added", None, na),
                _change("b", 1, 0, "added", None, na),
                _change("c", 1, 0, "added", None, na),
                _change("a", 2, 1, "changed", na, eu),
                _change("b", 2, 1, "removed", na, None),
                _change("b", 4, 3, "restored", None, na),
                _change("d", 4, 3, "added", None, (True, "EUROPE")),
                _change("d", 5, 4, "removed", (True, "EUROPE"), None),
            ],
        )
        c.execute(
            t["notification_deliveries"].insert(),
            [
                {
                    "id": "msg_0003delivery",
                    "sync_run_id": 2,
                    "part": 1,
                    "parts": 1,
                    "created_at": _at(1),
                    "status": "delivered",
                    "attempts": 1,
                    "next_attempt_at": _at(1),
                    "last_attempt_at": _at(1),
                    "last_error": None,
                    "delivered_at": _at(1),
                    "payload": {"type": "regions.changed", "data": {"run_id": 2}},
                }
            ],
        )


def _contents(engine: Engine, tables: tuple[str, ...] = OLD_TABLES) -> dict[str, list[Any]]:
    """Every row of ``tables`` as (column, value) pairs without ``account``, in key order."""
    found: dict[str, list[Any]] = {}
    with engine.connect() as c:
        for table in tables:
            rows = c.exec_driver_sql(f"SELECT * FROM {table} ORDER BY id").mappings()
            found[table] = [
                sorted((k, v) for k, v in row.items() if k != "account") for row in rows
            ]
    return found


def _accounts_of(engine: Engine) -> dict[str, list[str]]:
    with engine.connect() as c:
        return {
            table: [r[0] for r in c.exec_driver_sql(f"SELECT DISTINCT account FROM {table}")]
            for table in OLD_TABLES
        }


def _scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as c:
        return c.exec_driver_sql(sql).scalar_one()


def test_0003_rows_become_the_named_accounts_rows_at_head(empty_engine: Engine) -> None:
    upgrade(empty_engine, "0003")
    assert current_revision(empty_engine) == "0003"
    populate_0003(empty_engine)
    before = _contents(empty_engine)
    assert [len(rows) for rows in before.values()] == [6, 4, 8, 1]

    assert migrate(empty_engine, account="brand-a") == ("0003", HEAD)

    assert _contents(empty_engine) == before  # every row kept, every value as it was
    assert _accounts_of(empty_engine) == {table: ["brand-a"] for table in OLD_TABLES}
    tables, _views = _names(empty_engine)
    assert set(NEW_TABLES) <= tables
    assert _scalar(empty_engine, "SELECT count(*) FROM accounts") == 0
    joined = (
        "SELECT count(*) FROM region_history h"
        " JOIN regions r ON r.account = h.account AND r.id = h.region_id"
        " JOIN sync_runs s ON s.account = h.account AND s.id = h.sync_run_id"
    )
    assert _scalar(empty_engine, joined) == 8
    delivered = (
        "SELECT count(*) FROM notification_deliveries d"
        " JOIN sync_runs s ON s.account = d.account AND s.id = d.sync_run_id"
    )
    assert _scalar(empty_engine, delivered) == 1

    views = ["region_status_intervals", "active_regions", "region_changes", "sync_health"]
    if empty_engine.dialect.name == "postgresql":
        views.append("region_status_daily")
    with empty_engine.connect() as c:
        for view in views:
            found = c.exec_driver_sql(f"SELECT DISTINCT account FROM {view}").scalars()
            assert list(found) == ["brand-a"], view
        assert c.exec_driver_sql("SELECT count(*) FROM region_changes").scalar_one() == 8
        assert c.exec_driver_sql("SELECT count(*) FROM region_status_intervals").scalar_one() == 6
        active = c.exec_driver_sql("SELECT region_id FROM active_regions ORDER BY region_id")
        assert [r[0] for r in active] == ["a", "b", "c"]
        health = c.exec_driver_sql(
            "SELECT account, last_run_id, last_run_status, consecutive_failures,"
            " active_regions, removed_regions FROM sync_health"
        ).all()
    assert [tuple(row) for row in health] == [("brand-a", 6, "skipped", 0, 3, 1)]

    # The account syncs on from its old rows: nothing is new to it, and another account's
    # first sync beside it adds its own copy of the same ids.
    same = ListSource([region("a", enabled=False, hosting="EUROPE"), region("b"), region("c")])
    assert run_sync(empty_engine, same, account="brand-a").counts.added == 0
    assert run_sync(empty_engine, same, account="brand-b").counts.added == 3
    assert _scalar(empty_engine, "SELECT count(*) FROM regions") == 7


def test_the_downgrade_to_0003_keeps_one_accounts_rows(empty_engine: Engine) -> None:
    upgrade(empty_engine, "0003")
    populate_0003(empty_engine)
    before = _contents(empty_engine)
    migrate(empty_engine, account="brand-a")

    downgrade(empty_engine, "0003")

    assert current_revision(empty_engine) == "0003"
    assert _contents(empty_engine) == before
    inspector = sa.inspect(empty_engine)
    assert "accounts" not in inspector.get_table_names()
    assert "applied_answers" not in inspector.get_table_names()
    for table in OLD_TABLES:
        assert "account" not in {c["name"] for c in inspector.get_columns(table)}, table
    assert inspector.get_pk_constraint("regions")["constrained_columns"] == ["id"]
    assert "account" not in {c["name"] for c in inspector.get_columns("sync_health")}
    assert _scalar(empty_engine, "SELECT count(*) FROM sync_health") == 1
    assert _scalar(empty_engine, "SELECT count(*) FROM region_changes") == 8

    migrate(empty_engine, account="brand-a")
    assert _contents(empty_engine) == before
    assert _accounts_of(empty_engine) == {table: ["brand-a"] for table in OLD_TABLES}


def test_the_downgrade_to_0003_is_refused_with_two_accounts(empty_engine: Engine) -> None:
    migrate(empty_engine)
    now = datetime.now(UTC).replace(microsecond=0)
    seed(empty_engine, now, account="brand-a")
    seed(empty_engine, now, account="brand-b", first_run=11)
    before = _contents(empty_engine)

    with pytest.raises(RuntimeError, match=r"cannot downgrade below 0004: 2 accounts have rows"):
        downgrade(empty_engine, "0003")

    assert current_revision(empty_engine) == HEAD
    assert _contents(empty_engine) == before
    assert sorted(_accounts_of(empty_engine)["regions"]) == ["brand-a", "brand-b"]


# --- the accounts table ---------------------------------------------------------------------

NAMES = ["default", "brand-a", "brand_b", "0", "x" * 63, "", "A", "a b", "a.b", "a\n", "münchen"]


def _valid(name: str) -> bool:
    try:
        check_account_name(name)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("name", [*NAMES, "x" * 64, "a;drop", "-"])
def test_the_database_refuses_the_account_names_the_settings_refuse(
    engine: Engine, name: str
) -> None:
    """The migration spells the name pattern per dialect (a regex, a GLOB): both agree with
    the settings' check."""
    row = {"name": name, "sid": "SID", "pod": "in", "created_at": datetime.now(UTC)}
    try:
        with engine.begin() as c:
            c.execute(accounts.insert().values(**row))
        stored = True
    except sa.exc.IntegrityError:
        stored = False
    assert stored == _valid(name)
