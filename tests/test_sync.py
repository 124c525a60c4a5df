"""The apply: exact history, nothing written for an unchanged snapshot, guards, failures."""

from __future__ import annotations

import fcntl
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from structlog.testing import capture_logs

from regionsync import cli
from regionsync.daemon.metrics import DaemonMetrics
from regionsync.errors import ConfigError, GuardError, PermanentSourceError, StoreError
from regionsync.settings import DEFAULT_ACCOUNT, Settings
from regionsync.status import gather
from regionsync.store import lock, runs
from regionsync.store.engine import sqlite_path
from regionsync.sync import Guard, SyncResult, preview, run_sync
from tests.support.sources import FailingSource, ListSource, body, region


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql), params)]


def regions(engine: Engine) -> dict[str, tuple[Any, ...]]:
    return {
        r[0]: r[1:]
        for r in rows(
            engine,
            "SELECT id, carrier_enabled, hosting_region, display_name, removed_at IS NULL,"
            " updated_at FROM regions",
        )
    }


def history(engine: Engine) -> list[tuple[Any, ...]]:
    return [
        (
            r[0],
            r[1],
            r[2],
            None if r[3] is None else bool(r[3]),
            None if r[4] is None else bool(r[4]),
            r[5],
            r[6],
        )
        for r in rows(
            engine,
            "SELECT sync_run_id, region_id, change, carrier_enabled_before, carrier_enabled_after,"
            " hosting_region_before, hosting_region_after FROM region_history ORDER BY id",
        )
    ]


def last_run(engine: Engine) -> dict[str, Any]:
    with engine.connect() as c:
        return dict(
            c.execute(sa.text("SELECT * FROM sync_runs ORDER BY id DESC LIMIT 1")).mappings().one()
        )


def test_first_sync_adds_every_region_with_history(engine: Engine) -> None:
    source = ListSource([region("a"), region("b", enabled=False, hosting=None)])
    result = run_sync(engine, source)
    assert result.status == "succeeded"
    assert result.counts.as_dict() == {
        "fetched": 2,
        "added": 2,
        "changed": 0,
        "unchanged": 0,
        "removed": 0,
        "restored": 0,
        "rejected": 0,
    }
    assert history(engine) == [
        (1, "a", "added", None, True, None, "NORTH_AMERICA"),
        (1, "b", "added", None, False, None, None),
    ]
    run = last_run(engine)
    assert run["status"] == "succeeded"
    assert run["finished_at"] is not None
    assert run["added"] == 2
    assert run["source"] == "test:list"


def test_unchanged_snapshot_writes_nothing(engine: Engine) -> None:
    source = ListSource([region("a"), region("b")])
    run_sync(engine, source)
    before = regions(engine)
    xmin = (
        rows(engine, "SELECT id, xmin::text FROM regions")
        if engine.dialect.name == "postgresql"
        else []
    )
    source.data = [
        dict(reversed(list(r.items()))) for r in reversed(source.data)
    ]  # key order differs
    result = run_sync(engine, source)
    assert result.counts.unchanged == 2
    assert result.counts.changed == 0
    assert result.changes == []
    assert regions(engine) == before
    assert len(history(engine)) == 2
    if xmin:
        assert rows(engine, "SELECT id, xmin::text FROM regions") == xmin, "rows were rewritten"


def test_tracked_change_writes_before_and_after(engine: Engine) -> None:
    source = ListSource([region("a", enabled=True, hosting="EUROPE"), region("b")])
    run_sync(engine, source)
    source.data = [
        region("a", enabled=False, hosting="EUROPE"),
        region("b", hosting="ASIA_PACIFIC"),
    ]
    result = run_sync(engine, source)
    assert result.counts.changed == 2
    assert history(engine)[2:] == [
        (2, "a", "changed", True, False, "EUROPE", "EUROPE"),
        (2, "b", "changed", True, True, "NORTH_AMERICA", "ASIA_PACIFIC"),
    ]
    assert regions(engine)["a"][:2] == (False, "EUROPE")


def test_untracked_change_updates_the_row_without_history(engine: Engine) -> None:
    source = ListSource([region("a")])
    run_sync(engine, source)
    updated_before = regions(engine)["a"][4]
    source.data = [region("a", name="Renamed")]
    result = run_sync(engine, source)
    assert result.counts.changed == 1
    assert [c.kind for c in result.changes] == ["updated"]
    assert regions(engine)["a"][2] == "Renamed"
    assert regions(engine)["a"][4] > updated_before
    assert len(history(engine)) == 1


def test_new_api_field_changes_raw_but_versions_nothing(engine: Engine) -> None:
    source = ListSource([region("a")])
    run_sync(engine, source)
    source.data = [region("a", brand_new_field={"x": 1})]
    result = run_sync(engine, source)
    assert result.counts.changed == 1
    assert len(history(engine)) == 1
    raw = rows(engine, "SELECT raw FROM regions")[0][0]
    raw = raw if isinstance(raw, dict) else __import__("json").loads(raw)
    assert raw["brand_new_field"] == {"x": 1}


def test_removal_and_restoration(engine: Engine) -> None:
    source = ListSource([region("a"), region("b"), region("c")])
    run_sync(engine, source)
    source.data = [region("a"), region("b")]
    result = run_sync(engine, source)
    assert result.counts.removed == 1
    assert regions(engine)["c"][3] is False or regions(engine)["c"][3] == 0
    source.data = [region("a"), region("b"), region("c", enabled=False)]
    result = run_sync(engine, source)
    assert result.counts.restored == 1
    assert history(engine)[3:] == [
        (2, "c", "removed", True, None, "NORTH_AMERICA", None),
        (3, "c", "restored", None, False, None, "NORTH_AMERICA"),
    ]
    assert bool(regions(engine)["c"][3]) is True


def test_rejected_record_holds_its_region(engine: Engine) -> None:
    source = ListSource([region("a"), region("b"), region("c")])
    run_sync(engine, source)
    bad = region("b", enabled="yes")
    source.data = [region("a"), region("b", enabled=False), bad, {"no": "id"}, region("c")]
    result = run_sync(engine, source)
    assert result.counts.rejected == 2
    assert result.counts.removed == 0
    assert result.counts.fetched == 5
    assert regions(engine)["b"][0] in (True, 1), "a rejected copy must leave the region as it was"
    assert len(history(engine)) == 3


def test_duplicate_ids_last_copy_wins(engine: Engine) -> None:
    result = run_sync(
        engine, ListSource([region("a", enabled=True), region("a"), region("a", enabled=False)])
    )
    assert result.counts.fetched == 3
    assert result.counts.added == 1
    assert regions(engine)["a"][0] in (False, 0)


@pytest.mark.parametrize(
    ("fraction", "allow", "trips"),
    [(0.5, False, True), (0.5, True, False), (1.0, False, False), (0.8, False, False)],
)
def test_mass_removal_guard(engine: Engine, fraction: float, allow: bool, trips: bool) -> None:
    source = ListSource([region(x) for x in "abcd"])
    run_sync(engine, source)
    before = regions(engine)
    source.data = [region("a")]  # removes 3 of 4 = 75 %
    guard = Guard(fraction, allow_mass_removal=allow)
    if trips:
        with pytest.raises(GuardError, match="--allow-mass-removal"):
            run_sync(engine, source, guard=guard)
        assert regions(engine) == before
        run = last_run(engine)
        assert run["status"] == "failed"
        assert "refusing to remove 3 of 4" in run["error"]
    else:
        assert run_sync(engine, source, guard=guard).counts.removed == 3


def test_empty_response_trips_the_guard_but_not_on_an_empty_database(engine: Engine) -> None:
    assert run_sync(engine, ListSource([])).counts.added == 0
    run_sync(engine, ListSource([region("a")]))
    with pytest.raises(GuardError):
        run_sync(engine, ListSource([]))
    assert bool(regions(engine)["a"][3]) is True


def test_exactly_half_does_not_trip(engine: Engine) -> None:
    run_sync(engine, ListSource([region("a"), region("b")]))
    assert run_sync(engine, ListSource([region("a")])).counts.removed == 1


def test_source_failure_leaves_data_and_records_failed_run(engine: Engine) -> None:
    run_sync(engine, ListSource([region("a")]))
    before = regions(engine)
    error = PermanentSourceError(
        "Kaleyra refused: RCS601 channel disabled (HTTP 400)", code="RCS601"
    )
    with pytest.raises(PermanentSourceError):
        run_sync(engine, FailingSource(error))
    assert regions(engine) == before
    run = last_run(engine)
    assert (run["status"], run["error"]) == ("failed", str(error))
    assert run["finished_at"] is not None


def test_a_run_left_running_is_closed_as_abandoned(engine: Engine) -> None:
    with engine.begin() as c:
        runs.open_run(c, trigger="daemon", source="killed")
    run_sync(engine, ListSource([region("a")]))
    statuses = rows(engine, "SELECT id, status, error FROM sync_runs ORDER BY id")
    assert statuses[0][1] == "failed"
    assert statuses[0][2].startswith("abandoned")
    assert statuses[1][1] == "succeeded"


def test_a_run_closes_only_its_own_accounts_abandoned_runs(engine: Engine) -> None:
    """Another account's running run may be alive: it holds that account's lock, not ours."""
    with engine.begin() as c:
        mine = runs.open_run(c, account="brand-a", trigger="daemon", source="killed")
        theirs = runs.open_run(c, account="brand-b", trigger="daemon", source="running")
    run_sync(engine, ListSource([region("a")]), account="brand-a")
    statuses = dict(rows(engine, "SELECT id, status FROM sync_runs WHERE id IN (1, 2)"))
    assert statuses == {mine: "failed", theirs: "running"}


def _hold_lock(engine: Engine, account: str = DEFAULT_ACCOUNT) -> Any:
    key, suffix = lock.account_lock(account)
    path = sqlite_path(engine)
    if path is not None:
        fd = os.open(str(path) + suffix, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return lambda: os.close(fd)
    connection = engine.connect()
    connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
    connection.commit()
    return connection.close


def test_run_finding_the_lock_held_is_skipped(engine: Engine) -> None:
    release = _hold_lock(engine)
    try:
        source = ListSource([region("a")])
        result = run_sync(engine, source)
    finally:
        release()
    assert isinstance(result, SyncResult)
    assert (result.status, result.reason) == ("skipped", "another sync holds the lock")
    assert source.fetches == 0, "a skipped run must not fetch"
    assert regions(engine) == {}
    assert last_run(engine)["status"] == "skipped"
    assert run_sync(engine, source).status == "succeeded"


def test_a_lock_held_for_one_account_skips_only_that_accounts_run(engine: Engine) -> None:
    release = _hold_lock(engine, "brand-a")
    try:
        held = run_sync(engine, ListSource([region("a")]), account="brand-a")
        free = run_sync(engine, ListSource([region("a")]), account="brand-b")
    finally:
        release()
    assert (held.status, free.status) == ("skipped", "succeeded")
    assert rows(engine, "SELECT account, status FROM sync_runs ORDER BY id") == [
        ("brand-a", "skipped"),
        ("brand-b", "succeeded"),
    ]
    assert rows(engine, "SELECT account, id FROM regions") == [("brand-b", "a")]


def test_two_accounts_with_the_same_region_ids_sync_apart(engine: Engine) -> None:
    run_sync(engine, ListSource([region("a"), region("b")]), account="brand-a")
    first_b = run_sync(engine, ListSource([region("a", enabled=False)]), account="brand-b")
    assert first_b.counts.added == 1  # brand-a's "a" is not brand-b's
    gone = run_sync(engine, ListSource([region("a")]), account="brand-a")
    assert (gone.counts.removed, gone.counts.unchanged) == (1, 1)  # b: brand-b never had it
    assert rows(
        engine,
        "SELECT account, id, carrier_enabled, removed_at IS NULL FROM regions ORDER BY account, id",
    ) == [
        ("brand-a", "a", True, True),
        ("brand-a", "b", True, False),
        ("brand-b", "a", False, True),
    ]
    assert rows(
        engine, "SELECT account, sync_run_id, region_id, change FROM region_history ORDER BY id"
    ) == [
        ("brand-a", 1, "a", "added"),
        ("brand-a", 1, "b", "added"),
        ("brand-b", 2, "a", "added"),
        ("brand-a", 3, "b", "removed"),
    ]
    again = run_sync(engine, ListSource([region("a", enabled=False)]), account="brand-b")
    assert (again.counts.unchanged, again.counts.removed) == (1, 0)


def test_dry_run_writes_nothing(engine: Engine) -> None:
    source = ListSource([region("a"), region("b")])
    run_sync(engine, source)
    source.data = [region("a", enabled=False), region("c")]
    before_regions, before_history = regions(engine), history(engine)
    before_runs = rows(engine, "SELECT count(*) FROM sync_runs")
    result = preview(engine, source)
    assert result.status == "dry-run"
    assert sorted((c.kind, c.region_id) for c in result.changes) == [
        ("added", "c"),
        ("changed", "a"),
        ("removed", "b"),
    ]
    assert (regions(engine), history(engine)) == (before_regions, before_history)
    assert rows(engine, "SELECT count(*) FROM sync_runs") == before_runs


def test_dry_run_trips_the_guard_like_a_real_run(engine: Engine) -> None:
    run_sync(engine, ListSource([region("a"), region("b"), region("c")]))
    with pytest.raises(GuardError):
        preview(engine, ListSource([]))


def test_lost_connection_during_the_run_leaves_data_and_a_failed_run(pg_engine: Engine) -> None:
    source = ListSource([region("a")])
    run_sync(pg_engine, source)
    before = regions(pg_engine)

    def kill_sync_connection() -> None:
        admin = sa.create_engine(pg_engine.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            killed = c.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND application_name = 'regionsync'"
                )
            ).scalar_one()
        admin.dispose()
        assert killed >= 1

    source.data = [region("a", enabled=False), region("b")]
    source.during_fetch = kill_sync_connection
    with pytest.raises(StoreError, match="database error"):
        run_sync(pg_engine, source)
    assert regions(pg_engine) == before
    run = last_run(pg_engine)
    assert run["status"] == "failed"
    assert run["error"].startswith("applying the sync: database error")
    source.during_fetch = None
    assert run_sync(pg_engine, source).counts.added == 1


def test_every_record_rejected_is_a_failed_run_that_applies_nothing(engine: Engine) -> None:
    run_sync(engine, ListSource([region("a"), region("b")]))
    before = regions(engine)
    metrics = DaemonMetrics(max_age=timedelta(hours=1))
    metrics.record_status(gather(engine))
    _, health_before = metrics.health()
    junk = ListSource([region("a", enabled="yes"), {"no": "id"}, "junk"])
    with (
        capture_logs() as logs,
        pytest.raises(GuardError, match="every one of the 3 records was rejected"),
    ):
        run_sync(engine, junk, guard=Guard(max_reject_fraction=1.0, region_lines=1))
    assert [e["event"] for e in logs if e["event"].startswith("record.")] == ["record.rejected"]
    (summary,) = [e for e in logs if e["event"] == "sync.lines_capped"]
    assert summary["omitted_by_event"] == {"record.rejected": 2}
    assert summary["rest"].startswith("not stored")
    assert regions(engine) == before
    run = last_run(engine)
    assert (run["status"], run["fetched"], run["rejected"], run["added"]) == ("failed", 3, 3, 0)
    assert "every one of the 3 records was rejected" in run["error"]
    metrics.record_status(gather(engine))
    assert metrics.health()[1]["last_success_at"] == health_before["last_success_at"]


@pytest.mark.parametrize(
    ("bad", "good", "fraction", "fails"),
    [(3, 2, 0.5, True), (2, 2, 0.5, False), (3, 2, 1.0, False), (1, 4, 0.1, True)],
)
def test_too_many_rejected_records_fail_the_run(
    engine: Engine, bad: int, good: int, fraction: float, fails: bool
) -> None:
    run_sync(engine, ListSource([region("a")]))
    before = regions(engine)
    data = [region(f"bad{i}", enabled="yes") for i in range(bad)]
    data += [region("a", enabled=False)] + [region(f"new{i}") for i in range(good - 1)]
    guard = Guard(max_reject_fraction=fraction)
    if not fails:
        assert run_sync(engine, ListSource(data), guard=guard).counts.rejected == bad
        return
    with pytest.raises(GuardError) as raised:
        run_sync(engine, ListSource(data), guard=guard)
    message = str(raised.value)
    assert f"{bad} of {bad + good} records were rejected" in message
    assert "REGIONSYNC_MAX_REJECT_FRACTION" in message
    assert regions(engine) == before
    run = last_run(engine)
    assert (run["status"], run["fetched"], run["rejected"]) == ("failed", bad + good, bad)
    with pytest.raises(GuardError):
        preview(engine, ListSource(data), guard=guard)


def test_region_lines_are_capped_then_summarised(engine: Engine) -> None:
    source = ListSource([region(f"r{i}") for i in range(5)])
    with capture_logs() as logs:
        result = run_sync(engine, source, guard=Guard(region_lines=2))
    added = [e for e in logs if e["event"] == "region.added"]
    assert [e["region_id"] for e in added] == ["r0", "r1"]
    (summary,) = [e for e in logs if e["event"] == "sync.lines_capped"]
    assert summary["omitted"] == 3
    assert summary["omitted_by_event"] == {"region.added": 3}
    assert f"region_history WHERE sync_run_id = {result.run_id}" in summary["rest"]
    assert logs[-1]["event"] == "sync.finished"
    assert result.counts.added == 5


def test_rejects_and_changes_share_one_cap(engine: Engine) -> None:
    data = [region(f"bad{i}", enabled="no") for i in range(3)] + [region(f"r{i}") for i in range(3)]
    with capture_logs() as logs:
        run_sync(engine, ListSource(data), guard=Guard(region_lines=2))
    per_region = [e["event"] for e in logs if e["event"].startswith(("region.", "record."))]
    assert per_region == ["record.rejected", "record.rejected"]
    (summary,) = [e for e in logs if e["event"] == "sync.lines_capped"]
    assert summary["omitted_by_event"] == {"record.rejected": 1, "region.added": 3}


def test_no_region_lines_at_zero_and_no_summary_under_the_cap(engine: Engine) -> None:
    with capture_logs() as logs:
        run_sync(engine, ListSource([region("a"), region("b")]), guard=Guard(region_lines=0))
    assert not [e for e in logs if e["event"].startswith("region.")]
    assert [e["omitted"] for e in logs if e["event"] == "sync.lines_capped"] == [2]
    with capture_logs() as logs:
        run_sync(engine, ListSource([region("a", enabled=False), region("b")]))
    assert [e["event"] for e in logs if e["event"].startswith("region.")] == ["region.changed"]
    assert not [e for e in logs if e["event"] == "sync.lines_capped"]


def test_dry_run_lists_every_change_with_its_display_name(engine: Engine) -> None:
    run_sync(engine, ListSource([region("a", name="Alpha")]))
    data = [region("a", name="Alpha", enabled=False)] + [region(f"n{i}") for i in range(150)]
    result = preview(engine, ListSource(data), guard=Guard(region_lines=1))
    assert len(result.changes) == 151, "a dry run lists every change, whatever the log cap"
    assert (result.changes[0].region_id, result.changes[0].display_name) == ("a", "Alpha")
    assert result.changes[0].describe() == {
        "changes": {"carrier_enabled": [True, False]},
        "raw_changed": True,
    }


def test_cli_exits_1_when_every_record_is_rejected(
    db_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "junk.json"
    saved.write_text(json.dumps(body([region("a", enabled="yes"), 17])))
    monkeypatch.setenv("REGIONSYNC_DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.setenv("REGIONSYNC_LOG_FORMAT", "json")
    assert cli.main(["run", "--from-file", str(saved)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        "regionsync: error: every one of the 2 records was rejected (the record.rejected lines"
        " say why); nothing was applied"
    )


def test_guard_takes_its_limits_from_the_settings() -> None:
    env = {"REGIONSYNC_MAX_REJECT_FRACTION": "0.2", "REGIONSYNC_LOG_REGION_LINES": "0"}
    guard = Guard.from_settings(Settings.from_env(env), allow_mass_removal=True)
    assert (guard.max_reject_fraction, guard.region_lines, guard.allow_mass_removal) == (
        0.2,
        0,
        True,
    )
    assert Guard.from_settings(Settings.from_env({})) == Guard()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REGIONSYNC_MAX_REJECT_FRACTION", "1.5"),
        ("REGIONSYNC_MAX_REJECT_FRACTION", "half"),
        ("REGIONSYNC_LOG_REGION_LINES", "-1"),
        ("REGIONSYNC_LOG_REGION_LINES", "\u0663"),  # ARABIC-INDIC DIGIT THREE
        ("REGIONSYNC_LOG_REGION_LINES", "9" * 5000),
    ],
)
def test_bad_limits_are_config_errors(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
