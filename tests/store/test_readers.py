"""Readers beside the sync (docs/reliability.md, *Readers beside the sync*): with an
analyst's session idle inside a transaction on every table and view, readers arriving mid-run
and ``status`` polling, a sync succeeds, no reader waits, and nothing deadlocks; a lock the
sync cannot get is waited for at most ``REGIONSYNC_LOCK_TIMEOUT``; a holder of the sync lock
that waits longer shows as stuck, naming whom it waits for.

Real sessions on a real PostgreSQL, each a psycopg connection of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
import pytest
from prometheus_client import generate_latest
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.daemon.health import DaemonHealth
from regionsync.daemon.metrics import DaemonMetrics
from regionsync.errors import StoreError
from regionsync.status import gather
from regionsync.store.lock import ADVISORY_LOCK_KEY
from regionsync.store.schema import migrate
from regionsync.sync import run_sync
from tests.support import settings_for
from tests.support.sources import ListSource, region

#: Over the size at which older versions altered the tables for a faster write.
REGIONS = 20_000
#: The longest a reader may wait while a sync runs; a plain read here takes milliseconds.
READER_PATIENCE = 2.0


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def relations(url: URL) -> list[str]:
    """Every table and view an analyst can read in the database."""
    with psycopg.connect(libpq(url), autocommit=True) as connection:
        found = connection.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relkind IN ('r', 'v') ORDER BY relname"
        ).fetchall()
    return [name for (name,) in found]


@contextmanager
def idle_in_transaction(url: URL, names: list[str]) -> Iterator[list[int]]:
    """One session per relation, each idle inside a transaction that read it (as a BI tool
    with autocommit off leaves it); yields their pids."""
    sessions = [psycopg.connect(libpq(url), application_name=f"bi:{name}") for name in names]
    try:
        for session, name in zip(sessions, names, strict=True):
            session.execute(f'SELECT count(*) FROM "{name}"').fetchone()
        yield [session.info.backend_pid for session in sessions]
    finally:
        for session in sessions:
            session.close()


@dataclass
class Readers:
    """Readers that keep arriving while a sync runs: each read a new session, timed."""

    url: URL
    names: list[str]
    waits: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    reads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            for name in self.names:
                started = time.monotonic()
                try:
                    with psycopg.connect(libpq(self.url), autocommit=True) as session:
                        session.execute("SET statement_timeout = '15s'")
                        session.execute(f'SELECT count(*) FROM "{name}"').fetchone()
                except psycopg.Error as error:
                    self.errors.append(f"{name}: {error}")
                waited = time.monotonic() - started
                self.waits[name] = max(self.waits.get(name, 0.0), waited)
                self.reads += 1

    def stop(self) -> None:
        self._stop.set()


@dataclass
class StatusPolls:
    """``status`` asked over and over while a sync runs, as a probe would."""

    engine: Engine
    slowest: float = 0.0
    errors: list[str] = field(default_factory=list)
    polls: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                gather(self.engine, limit=1)
            except StoreError as error:
                self.errors.append(str(error))
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.polls += 1

    def stop(self) -> None:
        self._stop.set()


@contextmanager
def in_threads(*workers: Readers | StatusPolls) -> Iterator[None]:
    threads = [threading.Thread(target=worker.run, daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)


@pytest.fixture
def migrated_url(fresh_pg_url: URL) -> Iterator[URL]:
    engine = store.create_engine(settings_for(fresh_pg_url))
    migrate(engine)
    engine.dispose()
    return fresh_pg_url


@pytest.fixture
def sync_engine(migrated_url: URL) -> Iterator[Engine]:
    engine = store.create_engine(settings_for(migrated_url))
    yield engine
    engine.dispose()


def regions(count: int, *, enabled: bool = True) -> list[dict[str, object]]:
    return [region(f"region-{i:05d}", enabled=enabled) for i in range(count)]


def sync_beside_readers(
    url: URL, engine: Engine, source: ListSource, *, before: Callable[[], None] | None = None
) -> tuple[float, Readers, StatusPolls]:
    """Run a sync with every relation held by an idle session, readers arriving throughout
    and ``status`` polling; returns the run's time, the readers and the polls."""
    names = relations(url)
    readers, polls = Readers(url, names), StatusPolls(engine)
    with idle_in_transaction(url, names), in_threads(readers, polls):
        time.sleep(0.2)  # the readers and the polls are under way before the run starts
        if before is not None:
            before()
        started = time.monotonic()
        result = run_sync(engine, source)
        took = time.monotonic() - started
        time.sleep(0.2)  # and still read after it
    assert result.status == "succeeded"
    return took, readers, polls


def assert_nobody_waited(readers: Readers, polls: StatusPolls) -> None:
    assert readers.errors == []
    assert polls.errors == []
    assert readers.reads > len(readers.names)
    assert polls.polls > 1
    slowest = max(readers.waits.values())
    assert slowest < READER_PATIENCE, readers.waits
    assert polls.slowest < READER_PATIENCE


@pytest.mark.slow
def test_a_first_load_beside_idle_readers_succeeds_and_makes_no_reader_wait(
    migrated_url: URL, sync_engine: Engine
) -> None:
    took, readers, polls = sync_beside_readers(
        migrated_url, sync_engine, ListSource(regions(REGIONS))
    )
    assert_nobody_waited(readers, polls)
    with sync_engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM regions").scalar_one() == REGIONS
        history = connection.exec_driver_sql("SELECT count(*) FROM region_history")
        assert history.scalar_one() == REGIONS
    slowest = max(readers.waits.values())
    print(f"first load of {REGIONS}: run {took:.2f} s; slowest read {slowest:.3f} s")


@pytest.mark.slow
def test_a_large_change_beside_idle_readers_succeeds_and_makes_no_reader_wait(
    migrated_url: URL, sync_engine: Engine
) -> None:
    run_sync(sync_engine, ListSource(regions(REGIONS)))
    took, readers, polls = sync_beside_readers(
        migrated_url, sync_engine, ListSource(regions(REGIONS, enabled=False))
    )
    assert_nobody_waited(readers, polls)
    with sync_engine.connect() as connection:
        changed = connection.exec_driver_sql(
            "SELECT count(*) FROM region_history WHERE change = 'changed'"
        ).scalar_one()
        assert changed == REGIONS
        assert (
            connection.exec_driver_sql(
                "SELECT count(*) FROM regions WHERE carrier_enabled"
            ).scalar_one()
            == 0
        )
    print(f"{REGIONS} flipped: run {took:.2f} s; slowest read {max(readers.waits.values()):.3f} s")


@pytest.mark.slow
def test_a_sync_waits_for_a_locked_row_no_longer_than_the_lock_timeout(
    migrated_url: URL,
) -> None:
    engine = store.create_engine(settings_for(migrated_url, REGIONSYNC_LOCK_TIMEOUT="1s"))
    try:
        run_sync(engine, ListSource(regions(3)))
        editor = psycopg.connect(libpq(migrated_url), application_name="hand edit")
        try:
            editor.execute("UPDATE regions SET display_name = 'mine' WHERE id = 'region-00001'")
            started = time.monotonic()
            with pytest.raises(StoreError, match="REGIONSYNC_LOCK_TIMEOUT") as failed:
                run_sync(engine, ListSource(regions(3, enabled=False)))
            took = time.monotonic() - started
        finally:
            editor.close()
        assert took < 5
        assert "Traceback" not in str(failed.value)
        with engine.connect() as connection:
            run = connection.exec_driver_sql(
                "SELECT status, error FROM sync_runs ORDER BY id DESC LIMIT 1"
            ).one()
            enabled = connection.exec_driver_sql(
                "SELECT count(*) FROM regions WHERE carrier_enabled"
            ).scalar_one()
            history = connection.exec_driver_sql("SELECT count(*) FROM region_history")
            assert history.scalar_one() == 3  # the first run's additions only
        assert run.status == "failed"
        assert "gave up waiting for a lock" in run.error
        assert enabled == 3  # nothing of the failed run was applied
    finally:
        engine.dispose()


@contextmanager
def lock_holder_waiting_on_an_idle_editor(url: URL) -> Iterator[tuple[int, int]]:
    """A session (an older regionsync, a script) holds the sync lock and waits, without a
    lock timeout of its own, for a row that an idle session has updated; yields both pids."""
    editor = psycopg.connect(libpq(url), application_name="hand edit")
    holder = psycopg.connect(libpq(url), application_name="old sync", autocommit=True)
    try:
        editor.execute("UPDATE regions SET display_name = 'mine' WHERE id = 'region-00001'")
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        waiter = threading.Thread(
            target=holder.execute,
            args=("UPDATE regions SET display_name = 'theirs' WHERE id = 'region-00001'",),
            daemon=True,
        )
        waiter.start()
        yield holder.info.backend_pid, editor.info.backend_pid
    finally:
        editor.close()  # the waiter's update then goes through
        waiter.join(timeout=10)
        holder.close()


@pytest.mark.slow
def test_a_lock_holder_waiting_longer_than_a_run_would_is_stuck_and_names_whom_it_waits_for(
    migrated_url: URL,
) -> None:
    engine = store.create_engine(settings_for(migrated_url, REGIONSYNC_LOCK_TIMEOUT="1s"))
    try:
        run_sync(engine, ListSource(regions(3)))
        with lock_holder_waiting_on_an_idle_editor(migrated_url) as (holder_pid, editor_pid):
            time.sleep(0.3)
            waiting = gather(engine, limit=1)
            assert waiting.lock is not None
            assert waiting.lock.pid == holder_pid
            assert waiting.lock.waiting_for is not None
            assert [blocker.pid for blocker in waiting.lock.blocked_by] == [editor_pid]
            assert not waiting.lock.is_stuck()  # not yet longer than a run waits
            assert waiting.lock_warning is None

            time.sleep(1.2)
            report = gather(engine, limit=1)
            metrics = DaemonMetrics(max_age=timedelta(hours=1), period=timedelta(minutes=15))
            health = DaemonHealth(metrics)
            health.record_lock(report.lock)
            exported = generate_latest(health.metrics.registry).decode()
    finally:
        engine.dispose()
    assert report.lock is not None
    assert report.lock.is_stuck()
    warning = report.lock_warning
    assert warning is not None
    assert "stuck" in warning
    assert f"held by pid {editor_pid}" in warning
    assert "'hand edit'" in warning
    described = report.as_json()["lock"]
    assert described["stuck"] is True
    assert described["waiting_for_lock_seconds"] > 1
    assert described["blocked_by"][0]["pid"] == editor_pid
    assert described["blocked_by"][0]["application"] == "hand edit"
    assert described["blocked_by"][0]["state"] == "idle in transaction"
    healthz = health.lock_report()
    assert healthz is not None
    assert healthz["stuck"] is True
    assert healthz["blocked_by"][0]["pid"] == editor_pid
    assert "regionsync_lock_stuck 1.0" in exported
