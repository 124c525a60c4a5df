"""Revision 0005, the fleet's task queue (docs/fleet.md, *One schema, one command*): a
database of two accounts at 0004 gains procrastinate's tables in its own schema, keeps every
row, accepts runs started by a worker, and goes back to 0004 with nothing of the queue left.
On SQLite only the runs' ``trigger`` learns ``worker``, and the views rebuilt around it answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from procrastinate import App, exceptions, jobs
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.fleet.app import QUEUE, SYNC_TASK, connector
from regionsync.fleet.dispatch import job_lock
from regionsync.settings import Settings
from regionsync.store.schema import current_revision, migrate
from regionsync.sync import run_sync
from tests.support import settings_for
from tests.support.migrations import downgrade, upgrade
from tests.support.sources import ListSource, region

T0 = datetime(2026, 11, 1, tzinfo=UTC)
ACCOUNTS = ("brand-a", "brand-b")
TABLES = ("accounts", "sync_runs", "regions", "region_history", "notification_deliveries")
QUEUE_TABLES = {
    "procrastinate_jobs",
    "procrastinate_workers",
    "procrastinate_periodic_defers",
    "procrastinate_events",
}
VIEWS = ("region_status_intervals", "active_regions", "region_changes", "sync_health")


def _at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def populate_0004(engine: Engine) -> None:
    """What syncs at 0004 leave for two accounts: x and y added, x changed, a failed and a
    skipped run each; brand-a's change was delivered to a webhook. Tables reflected, ids
    from the sequences (as a sync's are), so that syncs at head number on after them."""
    meta = sa.MetaData()
    meta.reflect(engine, only=TABLES)
    t = meta.tables
    counts = ("fetched", "added", "changed", "unchanged", "removed", "restored", "rejected")
    with engine.begin() as c:
        for number, account in enumerate(ACCOUNTS):
            c.execute(
                t["accounts"]
                .insert()
                .values(name=account, sid=f"SID{number}", pod="in", created_at=_at(0))
            )
            run_ids = []
            for hours, status, done in [
                (0, "succeeded", {"fetched": 2, "added": 2}),
                (1, "succeeded", {"fetched": 2, "changed": 1, "unchanged": 1}),
                (2, "failed", {}),
                (3, "skipped", {}),
            ]:
                row = {
                    "account": account,
                    "started_at": _at(hours + number / 10),
                    "finished_at": _at(hours + number / 10) + timedelta(seconds=2),
                    "status": status,
                    "trigger": "daemon",
                    "source": "https://rcs-api.in.kaleyra.io",
                    "error": None if status == "succeeded" else f"{status} at 0004",
                    **{name: done.get(name, 0) for name in counts},
                }
                inserted = c.execute(t["sync_runs"].insert().values(**row))
                assert inserted.inserted_primary_key is not None
                run_ids.append(inserted.inserted_primary_key[0])
            for rid, enabled in (("x", False), ("y", True)):
                c.execute(
                    t["regions"]
                    .insert()
                    .values(
                        account=account,
                        id=rid,
                        region_name=f"/v1/regions/{rid}",
                        display_name=f"Region {rid}",
                        management_type="GOOGLE_MANAGED",
                        management_type_value=2,
                        carrier_enabled=enabled,
                        hosting_region="NORTH_AMERICA",
                        raw={"id": rid},
                        first_seen_at=_at(0),
                        updated_at=_at(1 if rid == "x" else 0),
                        removed_at=None,
                    )
                )
            na, off = (True, "NORTH_AMERICA"), (False, "NORTH_AMERICA")
            for rid, run, hours, change, before, after in [
                ("x", run_ids[0], 0, "added", None, na),
                ("y", run_ids[0], 0, "added", None, na),
                ("x", run_ids[1], 1, "changed", na, off),
            ]:
                c.execute(
                    t["region_history"]
                    .insert()
                    .values(
                        account=account,
                        region_id=rid,
                        sync_run_id=run,
                        changed_at=_at(hours),
                        change=change,
                        carrier_enabled_before=None if before is None else before[0],
                        carrier_enabled_after=None if after is None else after[0],
                        hosting_region_before=None if before is None else before[1],
                        hosting_region_after=None if after is None else after[1],
                    )
                )
            if account == "brand-a":
                c.execute(t["notification_deliveries"].insert().values(**_delivery(run_ids[1])))


def _delivery(run_id: int, *, account: str = "brand-a") -> dict[str, Any]:
    return {
        "id": f"msg_0004run{run_id}",
        "account": account,
        "sync_run_id": run_id,
        "part": 1,
        "parts": 1,
        "created_at": _at(1),
        "status": "delivered",
        "attempts": 1,
        "next_attempt_at": _at(1),
        "last_attempt_at": _at(1),
        "last_error": None,
        "delivered_at": _at(1),
        "payload": {"type": "regions.changed", "data": {"run_id": run_id}},
    }


def contents(engine: Engine) -> dict[str, list[Any]]:
    """Every row of the data tables as sorted (column, value) pairs, the rows sorted."""
    found: dict[str, list[Any]] = {}
    with engine.connect() as c:
        for table in TABLES:
            rows = c.exec_driver_sql(f"SELECT * FROM {table}").mappings()
            found[table] = sorted(sorted((k, repr(v)) for k, v in row.items()) for row in rows)
    return found


def runs_by_trigger(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        rows = c.exec_driver_sql("SELECT trigger, count(*) FROM sync_runs GROUP BY trigger")
        return {row[0]: row[1] for row in rows}


def insert_run(engine: Engine, trigger: str) -> None:
    """A run row with ``trigger``, straight into the table (the CHECK's to judge)."""
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO sync_runs (account, started_at, status, trigger, source, fetched, added,"
            " changed, unchanged, removed, restored, rejected)"
            f" VALUES ('brand-b', CURRENT_TIMESTAMP, 'failed', '{trigger}', 'test',"
            " 0, 0, 0, 0, 0, 0, 0)"
        )


def worker_runs(engine: Engine) -> tuple[int, int, int]:
    """Three syncs of brand-a by a worker: one that writes history (x enabled again), one
    that writes nothing, and one that writes nothing but a (health) delivery refers to.
    Returns their run ids."""
    source = ListSource([region("x"), region("y")])
    changed = run_sync(engine, source, account="brand-a", trigger="worker")
    bare = run_sync(engine, source, account="brand-a", trigger="worker")
    delivered = run_sync(engine, source, account="brand-a", trigger="worker")
    assert changed.counts.changed > 0
    assert changed.run_id is not None
    assert bare.run_id is not None
    assert delivered.run_id is not None
    assert bare.unchanged_answer
    assert delivered.unchanged_answer
    meta = sa.MetaData()
    meta.reflect(engine, only=["notification_deliveries"])
    with engine.begin() as c:
        row = _delivery(delivered.run_id)
        c.execute(meta.tables["notification_deliveries"].insert().values(**row))
    return changed.run_id, bare.run_id, delivered.run_id


def view_counts(engine: Engine) -> dict[str, list[tuple[str, int]]]:
    """Each view's rows per account: they answer, and for both accounts."""
    with engine.connect() as c:
        return {
            view: [
                tuple(row)
                for row in c.exec_driver_sql(
                    f"SELECT account, count(*) FROM {view} GROUP BY account ORDER BY account"
                )
            ]
            for view in VIEWS
        }


# --- PostgreSQL: the queue arrives and leaves ---------------------------------------------


@pytest.fixture(params=["public", "fleet_one"], ids=["public", "own-schema"])
def pg_at_0004(request: pytest.FixtureRequest, fresh_pg_url: URL) -> Settings:
    """Settings for a fresh PostgreSQL database at 0004 with two accounts' rows, in the
    default schema or in a schema of its own (``REGIONSYNC_DB_SCHEMA``)."""
    env = {} if request.param == "public" else {"REGIONSYNC_DB_SCHEMA": request.param}
    settings = settings_for(fresh_pg_url, **env)
    engine = store.create_engine(settings)
    try:
        upgrade(engine, "0004")
        populate_0004(engine)
    finally:
        engine.dispose()
    return settings


def admin(settings: Settings) -> Engine:
    """The test database with the server's own search_path, to read every schema."""
    return sa.create_engine(settings.database_url, isolation_level="AUTOCOMMIT")


def queue_objects(settings: Settings) -> dict[str, set[tuple[str, str]]]:
    """Everything named procrastinate* in the database, any schema: (schema, name) pairs of
    relations (tables, sequences, indexes), functions, types and triggers."""
    queries = {
        "relations": "SELECT n.nspname, c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace",
        "functions": "SELECT n.nspname, p.proname FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace",
        "types": "SELECT n.nspname, t.typname FROM pg_type t"
        " JOIN pg_namespace n ON n.oid = t.typnamespace",
        "triggers": "SELECT n.nspname, g.tgname FROM pg_trigger g"
        " JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace",
    }
    engine = admin(settings)
    try:
        with engine.connect() as c:
            return {
                kind: {
                    (schema, name)
                    for schema, name in c.exec_driver_sql(query)
                    if name.startswith("procrastinate")
                }
                for kind, query in queries.items()
            }
    finally:
        engine.dispose()


def defer_and_fetch(settings: Settings) -> jobs.Job:
    """With procrastinate's own App on the fleet's connector: defer an account's sync job
    (a second one is refused by its queueing lock), fetch it as a worker, and finish it."""

    async def scenario() -> jobs.Job:
        app = App(connector=connector(settings, max_size=2), import_paths=[])

        @app.task(name=SYNC_TASK, queue=QUEUE)
        def sync_account(account: str) -> None:
            """Never run here: the job is fetched and finished by hand."""

        deferrer = sync_account.configure(
            lock=job_lock("brand-a"), queueing_lock=job_lock("brand-a")
        )
        async with app.open_async():
            job_id = await deferrer.defer_async(account="brand-a")
            with pytest.raises(exceptions.AlreadyEnqueued):
                await deferrer.defer_async(account="brand-a")
            worker = await app.job_manager.register_worker()
            job = await app.job_manager.fetch_job(queues=[QUEUE], worker_id=worker)
            assert job is not None
            assert job.id == job_id
            assert await app.job_manager.fetch_job(queues=[QUEUE], worker_id=worker) is None
            await app.job_manager.finish_job(job, status=jobs.Status.SUCCEEDED, delete_job=True)
            await app.job_manager.unregister_worker(worker)
            return job

    return asyncio.run(scenario())


def test_0004_database_gains_the_queue_in_its_schema_and_keeps_its_rows(
    pg_at_0004: Settings,
) -> None:
    settings = pg_at_0004
    engine = store.create_engine(settings)
    try:
        before = contents(engine)
        assert [len(rows) for rows in before.values()] == [2, 8, 4, 6, 1]
        assert queue_objects(settings)["relations"] == set()

        revisions = migrate(engine)

        assert revisions[0] == "0004"
        assert contents(engine) == before
        found = queue_objects(settings)
        schemas = {schema for objects in found.values() for schema, _ in objects}
        assert schemas == {settings.db_schema}  # not public, when another one is set
        assert {name for _, name in found["relations"]} >= QUEUE_TABLES
        assert {name for _, name in found["functions"]} >= {
            "procrastinate_defer_jobs_v1",
            "procrastinate_fetch_job_v2",
            "procrastinate_retry_job_v2",
        }

        job = defer_and_fetch(settings)
        assert (job.task_name, job.queue, job.task_kwargs) == (
            SYNC_TASK,
            QUEUE,
            {"account": "brand-a"},
        )
        assert (job.lock, job.queueing_lock) == ("sync:brand-a", "sync:brand-a")
        with engine.connect() as c:  # through regionsync's search_path: the same tables
            assert c.exec_driver_sql("SELECT count(*) FROM procrastinate_jobs").scalar() == 0

        worker_runs(engine)
        assert runs_by_trigger(engine) == {"daemon": 8, "worker": 3}
        with pytest.raises(sa.exc.IntegrityError, match="ck_sync_runs_trigger"):
            insert_run(engine, "cron")
    finally:
        engine.dispose()


def test_the_downgrade_to_0004_removes_the_queue_and_keeps_worker_runs_as_daemon_ones(
    pg_at_0004: Settings,
) -> None:
    settings = pg_at_0004
    engine = store.create_engine(settings)
    try:
        migrate(engine)
        changed, bare, delivered = worker_runs(engine)
        defer_and_fetch(settings)  # the queue has been used: workers and events rows
        before = contents(engine)
        with engine.connect() as c:
            history = f"SELECT count(*) FROM region_history WHERE sync_run_id = {changed}"
            assert c.exec_driver_sql(history).scalar_one() > 0

        downgrade(engine, "0004")

        assert current_revision(engine) == "0004"
        assert queue_objects(settings) == {
            "relations": set(),
            "functions": set(),
            "types": set(),
            "triggers": set(),
        }
        # The runs that history or a delivery refers to stay, as the daemon's; the one
        # that wrote nothing is gone (0004 has no word for it).
        with engine.connect() as c:
            ours = f"SELECT id, trigger FROM sync_runs WHERE id IN ({changed}, {bare}, {delivered})"
            kept = {row[0]: row[1] for row in c.exec_driver_sql(ours)}
        assert kept == {changed: "daemon", delivered: "daemon"}
        assert runs_by_trigger(engine) == {"daemon": 10}
        after = contents(engine)
        for table in ("accounts", "regions", "region_history", "notification_deliveries"):
            assert after[table] == before[table], table
        with pytest.raises(sa.exc.IntegrityError, match="ck_sync_runs_trigger"):
            insert_run(engine, "worker")

        assert migrate(engine)[0] == "0004"  # and up again
        assert {name for _, name in queue_objects(settings)["relations"]} >= QUEUE_TABLES
        assert defer_and_fetch(settings).task_kwargs == {"account": "brand-a"}
        insert_run(engine, "worker")
    finally:
        engine.dispose()


# --- SQLite: no queue, only the trigger's CHECK --------------------------------------------


@pytest.fixture
def sqlite_at_0004(tmp_path: Path) -> Iterator[Engine]:
    engine = store.create_engine(
        settings_for(URL.create("sqlite", database=str(tmp_path / "at-0004.db")))
    )
    upgrade(engine, "0004")
    populate_0004(engine)
    yield engine
    engine.dispose()


def test_sqlite_learns_the_worker_trigger_and_its_views_still_answer(
    sqlite_at_0004: Engine,
) -> None:
    engine = sqlite_at_0004
    before, views = contents(engine), view_counts(engine)
    assert views["region_changes"] == [("brand-a", 3), ("brand-b", 3)]
    with pytest.raises(sa.exc.IntegrityError, match="ck_sync_runs_trigger"):
        insert_run(engine, "worker")

    assert migrate(engine)[0] == "0004"

    assert contents(engine) == before
    assert view_counts(engine) == views
    tables = set(sa.inspect(engine).get_table_names())
    assert not {name for name in tables if name.startswith("procrastinate")}
    worker_runs(engine)
    assert runs_by_trigger(engine) == {"daemon": 8, "worker": 3}
    assert view_counts(engine)["region_changes"] == [("brand-a", 4), ("brand-b", 3)]

    downgrade(engine, "0004")

    # SQLite's downgrade keeps every worker run, as a daemon's.
    assert runs_by_trigger(engine) == {"daemon": 11}
    assert view_counts(engine)["region_changes"] == [("brand-a", 4), ("brand-b", 3)]
    assert view_counts(engine)["sync_health"] == [("brand-a", 1), ("brand-b", 1)]
    with pytest.raises(sa.exc.IntegrityError, match="ck_sync_runs_trigger"):
        insert_run(engine, "worker")

    migrate(engine)
    insert_run(engine, "worker")
    assert runs_by_trigger(engine) == {"daemon": 11, "worker": 1}
