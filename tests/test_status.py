"""``status --json``, ``/healthz`` and the ``sync_health`` view report the same facts under
the same names, for each account; and ``status`` stays a few index lookups per account
however many runs there are (docs/accounts.md, *6. Watch*)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from regionsync.daemon.metrics import DaemonMetrics
from regionsync.errors import ConfigError
from regionsync.settings import DEFAULT_ACCOUNT
from regionsync.status import AccountStatus, gather
from regionsync.store import runs
from regionsync.store.accounts import AccountRow, add_account, set_paused
from regionsync.store.tables import regions
from tests.support import as_utc

SHARED = ("last_success_at", "consecutive_failures", "active_regions", "removed_regions")
#: What a ``status --json`` account object and a ``sync_health`` row both say.
PER_ACCOUNT = (
    *SHARED,
    "paused_at",
    "last_run_id",
    "last_run_status",
    "last_run_error",
)
HOUR = timedelta(hours=1)


def record(engine: Engine, *statuses: str, account: str = DEFAULT_ACCOUNT) -> None:
    with engine.begin() as connection:
        for status in statuses:
            if status == "skipped":
                runs.open_run(
                    connection, account=account, trigger="cli", source="test", skipped="held"
                )
                continue
            run_id = runs.open_run(connection, account=account, trigger="cli", source="test")
            if status != "running":
                error = "boom" if status == "failed" else None
                runs.finish_run(connection, run_id, status=status, error=error)


def add_regions(engine: Engine, account: str, *, active: int, removed: int, enabled: int) -> None:
    moment = datetime.now(UTC)
    rows = [
        {
            "account": account,
            "id": f"r{i}",
            "carrier_enabled": i < enabled,
            "raw": {"id": f"r{i}"},
            "first_seen_at": moment,
            "updated_at": moment,
            "removed_at": moment if i >= active else None,
        }
        for i in range(active + removed)
    ]
    with engine.begin() as connection:
        connection.execute(regions.insert(), rows)


def view(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        found = connection.execute(sa.text("SELECT * FROM sync_health")).mappings().all()
    return {row["account"]: dict(row) for row in found}


def same(name: str, *values: Any) -> bool:
    if name in ("last_success_at", "paused_at"):
        values = tuple(as_utc(v) for v in values)
    return all(v == values[0] for v in values)


def test_status_healthz_and_the_view_agree(engine: Engine) -> None:
    report = gather(engine).as_json(HOUR)
    assert view(engine) == {}  # no run yet: the view lists no account, status the one
    assert [row["account"] for row in report["accounts"]] == [DEFAULT_ACCOUNT]
    assert report["accounts"][0]["state"] == "never"
    assert report["account"] == DEFAULT_ACCOUNT
    for statuses, failures in [
        (("failed", "skipped", "failed"), 2),  # none succeeded yet: every failure counts
        (("succeeded",), 0),
        (("failed", "skipped", "failed", "running"), 2),
    ]:
        record(engine, *statuses)
        report = gather(engine).as_json(HOUR)
        metrics = DaemonMetrics(max_age=HOUR)
        metrics.record_status(gather(engine))
        _, health = metrics.health()
        expected = view(engine)[DEFAULT_ACCOUNT]
        [account] = report["accounts"]
        assert expected["consecutive_failures"] == failures
        for name in SHARED:
            values = (report[name], health[name], expected[name], account[name])
            assert same(name, *values), (name, values)
        for name in PER_ACCOUNT:
            assert same(name, account[name], expected[name]), (name, account, expected)
        assert "last_success_age_seconds" in report
        assert "last_success_age_seconds" in health


def test_each_account_has_its_row_as_the_view_has_it(engine: Engine) -> None:
    with engine.begin() as connection:
        for name in ("acme", "bravo", "corp"):
            add_account(connection, AccountRow(name=name, sid=name.upper(), pod="in"))
        set_paused(connection, "corp", paused=True)
    record(engine, "succeeded", "failed", account="acme")
    record(engine, "succeeded", account="bravo")
    record(engine, "failed", "failed", "skipped", account="corp")
    add_regions(engine, "acme", active=3, removed=1, enabled=2)
    add_regions(engine, "bravo", active=5, removed=0, enabled=5)

    report = gather(engine)
    shown = report.as_json(HOUR)
    expected = view(engine)
    assert [row["account"] for row in shown["accounts"]] == ["acme", "bravo", "corp"]
    for row in shown["accounts"]:
        for name in PER_ACCOUNT:
            assert same(name, row[name], expected[row["account"]][name]), (name, row)
    states = {row["account"]: row["state"] for row in shown["accounts"]}
    assert states == {"acme": "failing", "bravo": "ok", "corp": "paused"}
    enabled = {row["account"]: row["enabled_regions"] for row in shown["accounts"]}
    assert enabled == {"acme": 2, "bravo": 5, "corp": 0}

    # Several accounts, none asked for: the top-level keys sum them up.
    assert shown["account"] is None
    assert (shown["active_regions"], shown["removed_regions"], shown["enabled_regions"]) == (
        8,
        1,
        7,
    )
    assert shown["consecutive_failures"] == 1  # acme's: paused corp does not count
    oldest = min(as_utc(expected[n]["last_success_at"]) for n in ("acme", "bravo"))
    assert as_utc(shown["last_success_at"]) == oldest
    assert report.is_fresh(HOUR)  # corp is paused: never stale
    assert not report.is_fresh(timedelta(seconds=0.001))
    assert {run["account"] for run in shown["recent_runs"]} == {"acme", "bravo", "corp"}

    # One account asked for: the top-level keys are its own, the runs its own.
    acme = gather(engine, account="acme").as_json(HOUR)
    assert acme["account"] == "acme"
    assert [row["account"] for row in acme["accounts"]] == ["acme"]
    assert (acme["active_regions"], acme["consecutive_failures"]) == (3, 1)
    assert [run["status"] for run in acme["recent_runs"]] == ["failed", "succeeded"]
    assert {run["account"] for run in acme["recent_runs"]} == {"acme"}
    with pytest.raises(ConfigError, match="no account named 'nosuch'"):
        gather(engine, account="nosuch")


def test_with_the_accounts_table_empty_the_settings_account_and_those_that_ran_are_shown(
    engine: Engine,
) -> None:
    record(engine, "succeeded", account="legacy")
    names = [row.account for row in gather(engine, default_account="acme").accounts]
    assert names == ["acme", "legacy"]  # acme: the settings' one account, not run yet
    assert [row.account for row in gather(engine).accounts] == ["legacy"]
    assert gather(engine, account="legacy", default_account="acme").account == "legacy"
    with pytest.raises(ConfigError, match="the only account is 'acme'"):
        gather(engine, account="other", default_account="acme")


@pytest.mark.parametrize(
    ("row", "state"),
    [
        (AccountStatus("a", datetime(2026, 1, 1, 12, tzinfo=UTC)), "never"),
        (
            AccountStatus(
                "a", datetime(2026, 1, 1, 12, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)
            ),
            "paused",
        ),
        (
            AccountStatus(
                "a",
                datetime(2026, 1, 1, 12, tzinfo=UTC),
                last_success_at=datetime(2026, 1, 1, 11, 30, tzinfo=UTC),
            ),
            "ok",
        ),
        (
            AccountStatus(
                "a",
                datetime(2026, 1, 1, 12, tzinfo=UTC),
                last_success_at=datetime(2026, 1, 1, 10, tzinfo=UTC),
            ),
            "stale",
        ),
        (
            AccountStatus(
                "a",
                datetime(2026, 1, 1, 12, tzinfo=UTC),
                last_success_at=datetime(2026, 1, 1, 11, 30, tzinfo=UTC),
                consecutive_failures=1,
            ),
            "failing",
        ),
    ],
)
def test_an_accounts_state(row: AccountStatus, state: str) -> None:
    assert row.state(HOUR) == state
    assert row.counts_for_health(HOUR) is (state in ("never", "stale"))


#: A fleet for the speed test: every account with runs, most of them old.
FLEET, RUNS_PER_ACCOUNT = 1000, 100


def test_status_of_a_fleet_reads_each_account_by_index(pg_engine: Engine) -> None:
    """1,000 accounts and 100,000 runs: one query with a few index lookups per account, no
    scan of the runs (PostgreSQL's plan says so), well under a second."""
    with pg_engine.begin() as c:
        c.execute(
            sa.text(
                "INSERT INTO accounts (name, sid, pod, created_at)"
                " SELECT 'shop-' || lpad(n::text, 4, '0'), 'SID' || n, 'in', now()"
                " FROM generate_series(1, :fleet) AS n"
            ),
            {"fleet": FLEET},
        )
        c.execute(
            sa.text(
                "INSERT INTO sync_runs (account, started_at, finished_at, status, trigger, source,"
                "  fetched, added, changed, unchanged, removed, restored, rejected)"
                " SELECT 'shop-' || lpad((1 + n % :fleet)::text, 4, '0'),"
                "  now() - (:total - n) * interval '1 second',"
                "  now() - (:total - n) * interval '1 second',"
                "  CASE WHEN n % 7 = 0 THEN 'failed' ELSE 'succeeded' END, 'cli', 'test',"
                "  0, 0, 0, 0, 0, 0, 0"
                " FROM generate_series(1, :total) AS n"
            ),
            {"fleet": FLEET, "total": FLEET * RUNS_PER_ACCOUNT},
        )
        c.exec_driver_sql("ANALYZE accounts, sync_runs, regions")
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    sa.event.listen(pg_engine, "before_cursor_execute", seen)
    try:
        started = time.monotonic()
        report = gather(pg_engine, limit=5)
        took = time.monotonic() - started
    finally:
        sa.event.remove(pg_engine, "before_cursor_execute", seen)
    assert len(report.accounts) == FLEET
    assert all(row.last_success_at is not None for row in report.accounts)
    assert took < 2.0, took
    facts = [(s, p) for s, p in statements if "consecutive_failures" in s]
    assert len(facts) == 1  # one query for the whole fleet, not one per account
    with pg_engine.connect() as c:
        plan = "\n".join(
            row[0] for row in c.exec_driver_sql("EXPLAIN " + facts[0][0], facts[0][1] or {})
        )
    assert "Seq Scan on sync_runs" not in plan, plan
