"""Migrations: up, down and up again on both databases; models and migrations agree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL, Engine

from regionsync.errors import SchemaError
from regionsync.models import Base
from regionsync.runs import Counts
from regionsync.schema import (
    HEAD,
    current_revision,
    downgrade,
    head_revision,
    migrate,
    require_current,
    script_head,
)
from regionsync.tables import region_history, regions, sync_runs
from tests.support import as_utc

REPO = Path(__file__).resolve().parents[1]
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
    assert script_head() == HEAD == head_revision()


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


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _seed_history(engine: Engine, rows: list[tuple[int, str, bool | None, str | None]]) -> None:
    """rows: (day, change, carrier_enabled_after, hosting_region_after) for region "r1"."""
    with engine.begin() as c:
        c.execute(
            regions.insert().values(
                id="r1",
                display_name="Region One",
                carrier_enabled=True,
                raw={},
                first_seen_at=T0,
                updated_at=T0,
            )
        )
        before: tuple[bool | None, str | None] = (None, None)
        for run, (day, change, enabled, hosting) in enumerate(rows, start=1):
            at = T0 + timedelta(days=day)
            c.execute(
                sync_runs.insert().values(
                    id=run,
                    started_at=at,
                    status="succeeded",
                    trigger="cli",
                    source="test",
                    **Counts().as_dict(),
                )
            )
            c.execute(
                region_history.insert().values(
                    region_id="r1",
                    sync_run_id=run,
                    changed_at=at,
                    change=change,
                    carrier_enabled_before=before[0],
                    carrier_enabled_after=enabled,
                    hosting_region_before=before[1],
                    hosting_region_after=hosting,
                )
            )
            before = (enabled, hosting)


def test_status_intervals_view_on_a_hand_made_history(engine: Engine) -> None:
    _seed_history(
        engine,
        [
            (0, "added", True, "EUROPE"),
            (2, "changed", False, "EUROPE"),
            (5, "removed", None, None),
            (9, "restored", False, "NORTH_AMERICA"),
        ],
    )
    with engine.connect() as c:
        rows = c.exec_driver_sql(
            "SELECT region_id, display_name, carrier_enabled, hosting_region, valid_from, valid_to"
            " FROM region_status_intervals ORDER BY valid_from"
        ).all()
    got = [(r[0], r[1], bool(r[2]), r[3], as_utc(r[4]), as_utc(r[5])) for r in rows]
    day = lambda n: T0 + timedelta(days=n)  # noqa: E731
    assert got == [
        ("r1", "Region One", True, "EUROPE", day(0), day(2)),
        ("r1", "Region One", False, "EUROPE", day(2), day(5)),
        ("r1", "Region One", False, "NORTH_AMERICA", day(9), None),
    ]
