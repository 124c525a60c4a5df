"""Migrations: up, down and up again on both databases; models and migrations agree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Engine

from regionsync.errors import SchemaError
from regionsync.store.models import Base
from regionsync.store.schema import (
    HEAD,
    alembic_config,
    current_revision,
    head_revision,
    migrate,
    require_current,
)
from tests.support.migrations import downgrade

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
        context = MigrationContext.configure(connection, opts={"compare_type": True})
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
