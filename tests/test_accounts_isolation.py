"""Accounts are rows: one account's sync never waits on, skips, or touches another's
(docs/accounts.md, *Locks*). The lock is per account: the same account twice at once runs once and
is recorded ``skipped`` the other time; two accounts at once both apply, each to its own rows.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from regionsync.settings import KaleyraConfig, Secret
from regionsync.source.kaleyra import KaleyraClient
from regionsync.source.saved import FileSource
from regionsync.sync import SKIPPED_REASON, SyncResult, run_sync
from regionsync.testing.fakeapi import FakeKaleyra, fleet_key, fleet_regions
from tests.support import as_utc
from tests.support.fakeapi_fixtures import FAST
from tests.support.sources import body, region

#: Each API answer waits this long: long enough for runs to meet, short enough for a test.
LATENCY = 0.6
FLEET = {"alpha": "FAKE00001", "beta": "FAKE00002"}
REGIONS_PER_ACCOUNT = 5


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"accounts": len(FLEET), "regions_per_account": REGIONS_PER_ACCOUNT, "latency": LATENCY}


def client(fake: FakeKaleyra, sid: str) -> KaleyraClient:
    """The fleet account ``sid`` of the fake, with its own key."""
    config = KaleyraConfig(base_url=fake.url, sid=sid, api_key=Secret(fleet_key(sid)))
    return KaleyraClient(config, retry=FAST)


class Background:
    """``run_sync`` in a thread of its own; ``result()`` is what it returned (or raised)."""

    def __init__(self, sync: Callable[[], SyncResult]) -> None:
        self._outcome: list[SyncResult | BaseException] = []

        def target() -> None:
            try:
                self._outcome.append(sync())
            except BaseException as error:  # noqa: BLE001 - handed to the test's thread
                self._outcome.append(error)

        self.thread = threading.Thread(target=target, name="sync")
        self.thread.start()

    def result(self) -> SyncResult:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the sync did not finish within 60 s"
        outcome = self._outcome[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def runs(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as c:
        rows = c.execute(
            sa.text("SELECT id, account, status, error, started_at, finished_at FROM sync_runs")
        ).mappings()
        found: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            found.setdefault(row["account"], []).append(dict(row))
    return found


def when(run: dict[str, Any], column: str) -> datetime:
    moment = as_utc(run[column])
    assert moment is not None, (column, run)
    return moment


def stored(engine: Engine, account: str) -> dict[str, tuple[bool, str | None, bool]]:
    """The account's regions: id -> (carrier_enabled, display_name, removed)."""
    with engine.connect() as c:
        rows = c.execute(
            sa.text(
                "SELECT id, carrier_enabled, display_name, removed_at IS NOT NULL FROM regions "
                "WHERE account = :account"
            ),
            {"account": account},
        ).all()
    return {row[0]: (bool(row[1]), row[2], bool(row[3])) for row in rows}


def wait_for_requests(fake: FakeKaleyra, count: int) -> None:
    """Until the fake has been asked ``count`` times: the run asking holds its lock."""
    deadline = threading.Event()
    for _ in range(600):
        if fake.request_count() >= count:
            return
        deadline.wait(0.01)
    pytest.fail(f"the fake was asked {fake.request_count()} times, not {count}")


def test_two_accounts_synced_at_the_same_moment_both_apply(
    engine: Engine, fake: FakeKaleyra
) -> None:
    start = threading.Barrier(len(FLEET))

    def sync(account: str) -> Callable[[], SyncResult]:
        def run() -> SyncResult:
            start.wait(timeout=10)
            return run_sync(engine, client(fake, FLEET[account]), account=account)

        return run

    syncs = {account: Background(sync(account)) for account in FLEET}
    results = {account: syncs[account].result() for account in FLEET}

    for account, result in results.items():
        assert result.status == "succeeded", result
        assert result.account == account
        assert result.counts.added == REGIONS_PER_ACCOUNT
    recorded = runs(engine)
    assert set(recorded) == set(FLEET)
    (alpha,), (beta,) = recorded["alpha"], recorded["beta"]
    assert alpha["status"] == beta["status"] == "succeeded"
    # Neither waited for the other: each started before the other finished.
    starts = [when(run, "started_at") for run in (alpha, beta)]
    ends = [when(run, "finished_at") for run in (alpha, beta)]
    assert starts[0] < ends[1], (starts, ends)
    assert starts[1] < ends[0], (starts, ends)
    for account, sid in FLEET.items():
        served = fleet_regions(sid, REGIONS_PER_ACCOUNT)
        expected = {r["id"]: (r["carrier_enabled"], r["display_name"], False) for r in served}
        assert stored(engine, account) == expected


def test_the_same_account_twice_at_once_runs_once_and_is_skipped_once(
    engine: Engine, fake: FakeKaleyra
) -> None:
    first = Background(lambda: run_sync(engine, client(fake, FLEET["alpha"]), account="alpha"))
    wait_for_requests(fake, 1)  # the first run is fetching, under alpha's lock

    second = run_sync(engine, client(fake, FLEET["alpha"]), account="alpha")
    assert second.status == "skipped"
    assert second.reason == SKIPPED_REASON
    # The lock is alpha's: beta syncs meanwhile, neither skipped nor kept waiting.
    other = run_sync(engine, client(fake, FLEET["beta"]), account="beta")
    assert other.status == "succeeded"
    assert first.result().status == "succeeded"

    recorded = runs(engine)
    statuses = sorted((run["status"], run["error"]) for run in recorded["alpha"])
    assert statuses == [("skipped", SKIPPED_REASON), ("succeeded", None)]
    assert [run["status"] for run in recorded["beta"]] == ["succeeded"]
    assert fake.request_count() == 2  # the skipped run never asked the API
    (alpha,) = (run for run in recorded["alpha"] if run["status"] == "succeeded")
    (beta,) = recorded["beta"]
    assert when(beta, "started_at") < when(alpha, "finished_at")
    assert len(stored(engine, "alpha")) == len(stored(engine, "beta")) == REGIONS_PER_ACCOUNT


def test_the_same_region_ids_in_two_accounts_stay_apart(engine: Engine, tmp_path: Path) -> None:
    def sync(account: str, data: list[Any]) -> SyncResult:
        path = tmp_path / f"{account}.json"
        path.write_text(json.dumps(body(data)))
        return run_sync(engine, FileSource(path), account=account)

    sync("alpha", [region("r0", name="Alpha 0"), region("r1", name="Alpha 1")])
    sync("beta", [region("r0", enabled=False, name="Beta 0"), region("r1", name="Beta 1")])
    beta_before = stored(engine, "beta")
    assert beta_before == {"r0": (False, "Beta 0", False), "r1": (True, "Beta 1", False)}

    # Alpha's r0 changes and its r1 goes: beta's r0 and r1 are not touched.
    changed = sync("alpha", [region("r0", enabled=False, name="Alpha 0")])
    assert {(c.region_id, c.kind) for c in changed.changes} == {
        ("r0", "changed"),
        ("r1", "removed"),
    }
    assert stored(engine, "alpha") == {
        "r0": (False, "Alpha 0", False),
        "r1": (True, "Alpha 1", True),
    }
    assert stored(engine, "beta") == beta_before
    # Beta's same answer again finds nothing to do (its memory is its own).
    again = sync("beta", [region("r0", enabled=False, name="Beta 0"), region("r1", name="Beta 1")])
    assert again.unchanged_answer is True

    with engine.connect() as c:
        history = c.execute(
            sa.text("SELECT account, region_id, change FROM region_history ORDER BY account, id")
        ).all()
        active = c.execute(
            sa.text("SELECT account, region_id, display_name FROM active_regions ORDER BY 1, 2")
        ).all()
        changes = c.execute(
            sa.text("SELECT account, region_id, display_name FROM region_changes ORDER BY 1, 2, 3")
        ).all()
    assert [tuple(r) for r in history] == [
        ("alpha", "r0", "added"),
        ("alpha", "r1", "added"),
        ("alpha", "r0", "changed"),
        ("alpha", "r1", "removed"),
        ("beta", "r0", "added"),
        ("beta", "r1", "added"),
    ]
    assert [tuple(r) for r in active] == [
        ("alpha", "r0", "Alpha 0"),
        ("beta", "r0", "Beta 0"),
        ("beta", "r1", "Beta 1"),
    ]
    # Each history row is joined to its own account's region, never the other's namesake.
    assert {tuple(r) for r in changes} == {
        ("alpha", "r0", "Alpha 0"),
        ("alpha", "r1", "Alpha 1"),
        ("beta", "r0", "Beta 0"),
        ("beta", "r1", "Beta 1"),
    }
