"""The fleet under faults, with two real ``regionsync worker`` processes (docs/fleet.md,
*Faults*): each account synced once per period across the replicas and never twice at once;
a replica killed mid-sync has its accounts synced again by the other; SIGTERM drains; a
database outage is waited out; accounts added, paused or removed while the workers run are
picked up; a failing account never delays the others.

The schedule is 6 s (the dispatcher runs every second), so a test sees a few periods in
seconds; each test has a database of its own, so no job of another test is in its queue.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.daemon.schedule import parse_schedule
from regionsync.fleet.app import STALLED_AFTER_SECONDS, dispatch_period
from regionsync.fleet.dispatch import latest_due
from regionsync.store.accounts import remove_account, set_paused
from regionsync.store.runs import ABANDONED
from regionsync.store.schema import migrate
from regionsync.testing.fakeapi import FakeKaleyra, fleet_sid
from tests.support import settings_for
from tests.support.fleet import (
    SCHEDULE,
    Run,
    WorkerProcess,
    add_fleet_accounts,
    key_variable,
    logged_at,
    runs_by_account,
)
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.slow

PERIOD = timedelta(seconds=6)
#: How late a run may start after its due time: the dispatcher's second, a job's pickup.
LATE = timedelta(seconds=1.5)
NEVER = datetime.min.replace(tzinfo=UTC)
StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"accounts": 12}


@pytest.fixture
def fleet_engine(fresh_pg_url: URL) -> Iterator[Engine]:
    """A migrated database of this test's own: no job, replica or periodic defer of another
    test is in its queue tables."""
    engine = store.create_engine(settings_for(fresh_pg_url))
    migrate(engine)
    yield engine
    engine.dispose()


def utcnow() -> datetime:
    return datetime.now(UTC)


def wait_for(
    condition: Callable[[], bool], what: str, workers: list[WorkerProcess], timeout: float
) -> None:
    """Poll ``condition`` while every one of ``workers`` keeps running."""
    deadline = time.monotonic() + timeout
    while not condition():
        for worker in workers:
            if not worker.alive():
                code = worker.process.returncode
                pytest.fail(f"a worker exited ({code}) waiting for {what}:\n{worker.tail()}")
        if time.monotonic() > deadline:
            tails = "\n---\n".join(w.tail(15) for w in workers)
            pytest.fail(f"waited {timeout}s for {what}:\n{tails}")
        time.sleep(0.1)


def stop(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.send(signal.SIGTERM)
    assert [worker.exit_code(timeout=20) for worker in workers] == [0] * len(workers)


def succeeded_since(engine: Engine, name: str, moment: datetime) -> list[Run]:
    return [
        r
        for r in runs_by_account(engine).get(name, [])
        if r.status == "succeeded" and r.started_at > moment
    ]


def assert_keeps_its_period(name: str, runs: list[Run]) -> None:
    """After its first (catch-up) run, ``name`` started once per period, on time."""
    starts = [r.started_at for r in runs]
    gaps = [b - a for a, b in itertools.pairwise(starts[1:])]
    assert all(PERIOD - LATE <= gap <= PERIOD + LATE for gap in gaps), (name, gaps)


def fail_account(fake: FakeKaleyra, number: int, mode: str) -> None:
    """Fail every request of the fake's fleet account ``number`` in fault ``mode``."""
    account = fake.account(fleet_sid(number), keep=True)
    assert account is not None
    account.fail(mode)


def jobs(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT status, count(*) FROM procrastinate_jobs GROUP BY status")
        ).all()
    return {status: int(number) for status, number in rows}


def test_two_workers_sync_each_account_once_per_period_and_never_twice_at_once(
    fresh_pg_url: URL, fleet_engine: Engine, fake: FakeKaleyra, start_worker: StartWorker
) -> None:
    fake.latency = 0.3
    keys = add_fleet_accounts(fleet_engine, fake, range(1, 11))
    names = sorted(f"acct-{i}" for i in range(1, 11))
    workers = [start_worker(fresh_pg_url, fake, **keys) for _ in range(2)]

    def three_periods() -> bool:
        found = runs_by_account(fleet_engine)
        return sorted(found) == names and all(len(runs) >= 4 for runs in found.values())

    wait_for(three_periods, "three periods after each account's first run", workers, timeout=45)
    stop(workers)

    schedule = parse_schedule(SCHEDULE)
    found = runs_by_account(fleet_engine)
    for name, runs in found.items():
        # None skipped (the queue never hands one account to two syncs), none left running.
        assert {r.status for r in runs} == {"succeeded"}, (name, runs)
        for earlier, later in itertools.pairwise(runs):
            assert earlier.finished_at is not None
            assert earlier.finished_at <= later.started_at, (name, earlier, later)
        # Once per period: each run in a period of its own (its slot in the spread), and no
        # period missed between the first and the last.
        slots = [latest_due(schedule, name, r.started_at) or NEVER for r in runs]
        assert slots == [slots[0] + k * PERIOD for k in range(len(slots))], (name, slots)
        assert_keeps_its_period(name, runs)

    # Both replicas did work, and every run was one replica's.
    finished = [w.run_ids("sync.finished") for w in workers]
    assert all(finished), [len(f) for f in finished]
    assert not finished[0] & finished[1]
    assert finished[0] | finished[1] == {r.id for runs in found.values() for r in runs}
    assert "succeeded" not in jobs(fleet_engine)  # finished jobs are deleted


def test_a_worker_killed_mid_sync_has_its_accounts_synced_again_by_the_other(
    fresh_pg_url: URL, fleet_engine: Engine, fake: FakeKaleyra, start_worker: StartWorker
) -> None:
    fake.latency = 3.0  # every sync is in progress for 3 s
    keys = add_fleet_accounts(fleet_engine, fake, range(1, 5))
    workers = [start_worker(fresh_pg_url, fake, **keys) for _ in range(2)]
    wait_for(lambda: any(w.running() for w in workers), "a sync in progress", workers, timeout=20)
    victim = next(w for w in workers if w.running())
    survivor = next(w for w in workers if w is not victim)
    in_flight = victim.running()
    victim.process.kill()
    victim.process.wait(timeout=10)
    killed_at = utcnow()

    by_id = {r.id: (name, r) for name, runs in runs_by_account(fleet_engine).items() for r in runs}
    killed = {
        run_id: by_id[run_id][0] for run_id in in_flight if by_id[run_id][1].status == "running"
    }
    assert killed, "the syncs in progress had finished before the kill"
    with fleet_engine.connect() as connection:
        # Nothing half-written: the killed syncs' transactions went with their connections.
        for name in killed.values():
            assert (
                connection.execute(
                    sa.text("SELECT count(*) FROM regions WHERE account = :name"), {"name": name}
                ).scalar_one()
                == 0
            )

    def synced_again() -> bool:
        return all(succeeded_since(fleet_engine, name, killed_at) for name in killed.values())

    # Stalled after STALLED_AFTER_SECONDS without a heartbeat, looked for every 10 s.
    wait_for(synced_again, "the killed syncs' accounts synced again", [survivor], timeout=60)
    recovered_by = utcnow()
    assert recovered_by - killed_at < timedelta(seconds=60)
    assert recovered_by - killed_at > timedelta(seconds=STALLED_AFTER_SECONDS - 5)

    found = runs_by_account(fleet_engine)
    with fleet_engine.connect() as connection:
        for run_id, name in killed.items():
            run = next(r for r in found[name] if r.id == run_id)
            assert (run.status, run.error) == ("failed", ABANDONED)  # closed by the next run
            assert (
                connection.execute(
                    sa.text("SELECT count(*) FROM region_history WHERE sync_run_id = :id"),
                    {"id": run_id},
                ).scalar_one()
                == 0
            )
            again = succeeded_since(fleet_engine, name, killed_at)[0]
            assert again.id in survivor.run_ids("sync.finished")
            assert (
                connection.execute(
                    sa.text("SELECT count(*) FROM regions WHERE account = :name"), {"name": name}
                ).scalar_one()
                == fake.regions_per_account
            )
    recovered = {e["account"] for e in survivor.events("fleet.job_recovered")}
    assert set(killed.values()) <= recovered
    stop([survivor])


def test_sigterm_lets_running_syncs_finish_starts_no_new_one_and_exits_0(
    fresh_pg_url: URL, fleet_engine: Engine, fake: FakeKaleyra, start_worker: StartWorker
) -> None:
    fake.latency = 3.0
    # More work than the two replicas' three slots: jobs wait in the queue while one drains.
    keys = add_fleet_accounts(fleet_engine, fake, range(1, 9))
    draining = start_worker(fresh_pg_url, fake, concurrency=2, **keys)
    other = start_worker(fresh_pg_url, fake, concurrency=1, **keys)
    workers = [draining, other]

    def busy() -> bool:
        return len(draining.running()) == 2 and jobs(fleet_engine).get("todo", 0) > 0

    wait_for(busy, "two syncs in progress with jobs waiting", workers, timeout=30)
    signalled = utcnow()
    draining.send(signal.SIGTERM)
    assert draining.exit_code(timeout=20) == 0  # a sync takes 3 s
    stopped = utcnow()

    started = draining.run_ids("sync.started")
    late = [e for e in draining.events("sync.started") if logged_at(e) > signalled + LATE]
    assert not late, late
    status = {r.id: r.status for runs in runs_by_account(fleet_engine).values() for r in runs}
    assert {status[run_id] for run_id in started} == {"succeeded"}  # drained, none abandoned
    assert draining.run_ids("sync.finished") == started
    assert draining.events("worker.stopped")
    assert stopped - signalled < timedelta(seconds=10)
    assert jobs(fleet_engine).get("doing", 0) <= 1  # the other one's, none left behind

    # The other replica goes on with the queue.
    before = other.run_ids("sync.finished")
    other.wait_until(lambda: len(other.run_ids("sync.finished") - before) >= 2, "two more syncs")
    stop([other])


def test_workers_wait_out_a_database_outage_and_resume(
    fresh_pg_url: URL, fleet_engine: Engine, fake: FakeKaleyra, start_worker: StartWorker
) -> None:
    keys = add_fleet_accounts(fleet_engine, fake, range(1, 5))
    names = [f"acct-{i}" for i in range(1, 5)]
    target = (str(fresh_pg_url.host), int(fresh_pg_url.port or 5432))
    with TcpProxy(target) as proxy:
        via_proxy = fresh_pg_url.set(host="127.0.0.1", port=proxy.port)
        workers = [start_worker(via_proxy, fake, **keys) for _ in range(2)]
        epoch = utcnow() - timedelta(hours=1)
        wait_for(
            lambda: all(succeeded_since(fleet_engine, n, epoch) for n in names),
            "a first success of every account",
            workers,
            timeout=20,
        )

        proxy.cut()
        time.sleep(2 * PERIOD.total_seconds())
        assert all(w.alive() for w in workers), [w.tail() for w in workers]

        proxy.restore()
        restored = utcnow()
        wait_for(
            lambda: all(succeeded_since(fleet_engine, n, restored) for n in names),
            "every account synced again once the database is back",
            workers,
            timeout=30,
        )
        stop(workers)
    # A run the cut interrupted stays 'running' until the account's next run closes it.
    for name, runs in runs_by_account(fleet_engine).items():
        assert runs[-1].status == "succeeded", (name, runs[-1])
        assert all(r.status != "running" for r in runs), name


def test_accounts_added_paused_or_removed_are_picked_up_within_a_dispatch_period(
    fresh_pg_url: URL, fleet_engine: Engine, fake: FakeKaleyra, start_worker: StartWorker
) -> None:
    keys = add_fleet_accounts(fleet_engine, fake, range(1, 5))
    keys[key_variable("acct-5")] = f"key-{fleet_sid(5)}"
    workers = [start_worker(fresh_pg_url, fake, **keys) for _ in range(2)]
    epoch = utcnow() - timedelta(hours=1)
    wait_for(
        lambda: all(succeeded_since(fleet_engine, f"acct-{i}", epoch) for i in range(1, 5)),
        "a first success of every account",
        workers,
        timeout=20,
    )

    add_fleet_accounts(fleet_engine, fake, [5])
    with fleet_engine.begin() as connection:
        set_paused(connection, "acct-2", paused=True)
        remove_account(connection, "acct-3", purge=False)
    changed = utcnow()

    wait_for(
        lambda: bool(succeeded_since(fleet_engine, "acct-5", changed - LATE)),
        "the new account's first sync",
        workers,
        timeout=15,
    )
    first = succeeded_since(fleet_engine, "acct-5", changed - LATE)[0]
    assert first.started_at - changed <= timedelta(seconds=dispatch_period(PERIOD)) + LATE

    # Two more periods: the others go on, the paused and the removed one are left alone.
    wait_for(
        lambda: all(
            len(succeeded_since(fleet_engine, n, changed)) >= 2 for n in ("acct-1", "acct-4")
        ),
        "two more periods",
        workers,
        timeout=20,
    )
    stop(workers)
    found = runs_by_account(fleet_engine)
    for name in ("acct-2", "acct-3"):
        assert all(r.started_at <= changed for r in found[name]), (name, found[name])
    assert len(succeeded_since(fleet_engine, "acct-5", changed)) >= 2


def test_failing_accounts_never_delay_the_others(
    fresh_pg_url: URL, fleet_engine: Engine, fake: FakeKaleyra, start_worker: StartWorker
) -> None:
    keys = add_fleet_accounts(fleet_engine, fake, range(1, 8))
    keys[key_variable("acct-5")] = "a-wrong-key"  # 401
    fail_account(fake, 6, "rcs601")
    fail_account(fake, 7, "drip:0.5")  # a byte every half second: only the fetch budget ends it
    good = [f"acct-{i}" for i in range(1, 5)]
    # Four slots in all, one held by the dripping account for its whole budget.
    workers = [start_worker(fresh_pg_url, fake, concurrency=2, budget=4, **keys) for _ in range(2)]

    def four_periods() -> bool:
        found = runs_by_account(fleet_engine)
        return all(len(found.get(name, [])) >= 5 for name in good)

    wait_for(four_periods, "four periods of the good accounts", workers, timeout=50)
    stop(workers)

    found = runs_by_account(fleet_engine)
    for name in good:
        assert {r.status for r in found[name]} == {"succeeded"}, name
        assert_keeps_its_period(name, found[name])
    errors = {name: {r.error for r in found[name]} for name in ("acct-5", "acct-6", "acct-7")}
    for name, seen in errors.items():
        assert {r.status for r in found[name]} == {"failed"}, (name, seen)
        assert len(found[name]) >= 3, name  # tried each period, not hammered
        starts = [r.started_at for r in found[name]]
        assert all(b - a >= PERIOD - LATE for a, b in itertools.pairwise(starts[1:])), name
    for name, words in (("acct-5", "401"), ("acct-6", "RCS601"), ("acct-7", "budget")):
        assert all(error is not None and words in error for error in errors[name]), errors[name]
