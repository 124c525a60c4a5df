"""The benchmark's own instruments, on tiny input (the benchmark itself: docs/performance.md)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import requests

from regionsync.testing.fakeapi import (
    REGIONS_PATHS,
    FakeKaleyra,
    fleet_key,
    fleet_regions,
    fleet_sid,
)
from tests.benchmarks import bench_fleet, bench_sync
from tests.benchmarks.bench_measure import (
    BenchError,
    create_database,
    database_url,
    delta,
    drop_database,
    run_timed,
    tuples_written,
)
from tests.benchmarks.bench_sync import Result, Run, steps, targets
from tests.support.sources import body, parse_body


def by_id(regions: list[dict[str, object]]) -> dict[object, dict[str, object]]:
    return {r["id"]: r for r in regions}


def test_every_step_changes_exactly_one_percent_and_the_records_are_valid() -> None:
    n = 1000
    seen = list(steps(n, repeat=2))
    assert Counter(step for step, _, _ in seen) == {
        "initial": 2,
        "no change": 2,
        "1% flipped": 2,
        "1% removed": 2,
    }
    first = seen[0][2]
    parsed = parse_body(body(first), source="bench", received_at=datetime.now(UTC))
    assert len(parsed.records) == n
    assert not parsed.rejected
    assert not parsed.duplicates
    for (_, _, before), (step, _, after) in itertools.pairwise(seen):
        old, new = by_id(before), by_id(after)
        if step in ("initial", "no change"):
            assert new == old
        elif step == "1% flipped":
            assert new.keys() == old.keys()
            flipped = [k for k in new if new[k] != old[k]]
            assert len(flipped) == n // 100
            assert all(new[k]["carrier_enabled"] != old[k]["carrier_enabled"] for k in flipped)
        else:
            assert new.keys() <= old.keys()
            assert len(old) - len(new) == n // 100
            assert all(new[k] == old[k] for k in new)


def run(n: int, step: str, tool: str, seconds: float, *, rss: float = 80.0) -> Run:
    return Run(n, step, tool, 0, seconds, seconds / 2, rss, 0, 0, 10)


def measured(ours: float, theirs: float, *, copy: float, imports: float, rss: float) -> Result:
    result = Result(sizes=[1000, 100_000], repeat=1, import_s=imports, copy_s={100_000: copy})
    for step in bench_sync.STEPS:
        result.runs += [run(100_000, step, "regionsync", ours, rss=rss)]
        result.runs += [run(100_000, step, "dlt", theirs)]
        result.runs += [run(1000, step, "regionsync", imports * 1.1)]
    return result


def test_targets_pass_and_fail_on_the_ratios_of_the_issue() -> None:
    good = targets(measured(1.0, 10.0, copy=0.5, imports=0.5, rss=120))
    assert {t.passed for t in good} == {True}
    slow = {t.name: t for t in targets(measured(2.5, 10.0, copy=0.5, imports=0.5, rss=160))}
    assert slow["100000 no change: dlt / regionsync >= 5"].value == 4.0
    assert slow["100000 no change: dlt / regionsync >= 5"].passed is False
    assert slow["100000 initial: dlt / regionsync >= 3"].passed is True
    assert slow["100000 no change: regionsync / (copy + import) <= 2"].passed is False
    assert slow["100000 initial: regionsync / (copy + import) <= 3"].passed is True
    assert slow["100000 any step: regionsync peak RSS MB <= 150"].passed is False


def test_targets_not_measured_are_neither_met_nor_missed() -> None:
    result = Result(sizes=[1000], repeat=1, import_s=0.5, copy_s={1000: 0.01})
    result.runs.append(run(1000, "no change", "regionsync", 0.55))
    found = {t.name: t.passed for t in targets(result)}
    assert found["1000 no change: regionsync / import <= 1.2"] is True
    assert found["1000 no change: tuples written to regions + region_history == 0"] is True
    assert found["100000 no change: dlt / regionsync >= 5"] is None


def test_a_timed_child_reports_its_own_peak_rss_and_output(tmp_path: Path) -> None:
    grow = "b = bytearray(120 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('done')"
    small = run_timed(
        [sys.executable, "-c", "print('hi')"],
        env={},
        cwd=tmp_path,
        timeout=60,
        stderr_path=tmp_path / "a.log",
    )
    big = run_timed(
        [sys.executable, "-c", grow],
        env={},
        cwd=tmp_path,
        timeout=60,
        stderr_path=tmp_path / "b.log",
    )
    again = run_timed(
        [sys.executable, "-c", "import sys; print('x', file=sys.stderr); sys.exit(3)"],
        env={},
        cwd=tmp_path,
        timeout=60,
        stderr_path=tmp_path / "c.log",
    )
    assert (small.returncode, small.stdout) == (0, "hi\n")
    assert big.peak_rss_mb >= 120 > small.peak_rss_mb
    assert again.peak_rss_mb < 120  # per child, not the largest child so far
    assert (again.returncode, again.stderr_lines, again.stderr_tail) == (3, 1, "x")


def test_a_child_does_not_report_the_peak_rss_of_the_process_measuring_it(
    tmp_path: Path,
) -> None:
    # Linux keeps the memory a child was forked from in its peak RSS across exec: the
    # benchmark holds large snapshots, its children must not be charged for them.
    ballast = bytearray(200 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])
    small = run_timed(
        [sys.executable, "-c", "pass"],
        env={},
        cwd=tmp_path,
        timeout=60,
        stderr_path=tmp_path / "a.log",
    )
    assert small.peak_rss_mb < 100 < len(ballast) / 2**20


def test_a_child_past_its_timeout_is_killed(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(BenchError, match="timed out"):
        run_timed(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            env={},
            cwd=tmp_path,
            timeout=0.5,
            stderr_path=tmp_path / "err.log",
        )
    assert time.monotonic() - started < 20


def test_tuples_are_counted_as_soon_as_the_writer_has_gone() -> None:
    name = create_database()
    try:
        url = database_url(name)
        with psycopg.connect(url, autocommit=True) as monitor:
            monitor.execute("CREATE TABLE t (x int PRIMARY KEY)")
            before = tuples_written(monitor)
            for _ in range(3):  # three writers, each leaving right after its commit
                with psycopg.connect(url, autocommit=True) as writer:
                    writer.execute("INSERT INTO t SELECT g FROM generate_series(1, 5) AS g")
                    writer.execute("UPDATE t SET x = x + 100 WHERE x <= 2")
                    writer.execute("DELETE FROM t")
                after = tuples_written(monitor)
                assert delta(before, after, "public.t") == 5 + 2 + 5
                before = after
    finally:
        drop_database(name)


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_on_a_hundred_regions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_sync.main(["--sizes", "100", "--repeat", "1", "--no-dlt"]) == 0
    out = capsys.readouterr().out.splitlines()
    report = json.loads(out[-1])
    best = {r["step"]: r for r in report["best"]}
    written = {step: (r["regions_tuples"], r["history_tuples"]) for step, r in best.items()}
    assert written == {
        "initial": (100, 100),
        "no change": (0, 0),
        "1% flipped": (1, 1),
        "1% removed": (1, 1),
    }
    assert all(r["seconds"] > report["floors"]["python_s"] > 0 for r in best.values())
    assert report["floors"]["copy_s"]["100"] > 0
    assert report["dlt"] is None
    assert out[0].startswith("| step ")


# The fleet benchmark's instruments (python -m tests.benchmarks.bench_fleet) -------------


def test_a_running_processs_cpu_and_peak_rss_are_read_from_proc(tmp_path: Path) -> None:
    busy = (
        "import time\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "b = bytearray(100 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); del b\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = bench_fleet.Child(
        "busy", [sys.executable, "-c", busy], env={}, log=tmp_path / "busy.log"
    )
    try:
        assert child.process.stdout is not None
        assert child.process.stdout.readline() == b"ready\n"
        cpu = child.cpu_seconds()
        peak = child.peak_rss_mb()  # the memory was freed: the peak stays
        time.sleep(0.3)  # asleep: no more CPU
        assert 0.25 <= cpu <= child.cpu_seconds() < cpu + 0.1
        assert peak >= 100
    finally:
        assert child.stop() == -signal.SIGTERM
    assert child.peak_rss_mb() == peak  # read before it stopped, kept
    with pytest.raises(BenchError, match="busy exited"):
        child.cpu_seconds()


def test_writes_are_split_between_regionsync_and_the_queue() -> None:
    before = {"sync_runs": 10, "procrastinate_jobs": 5, "procrastinate_events": 1}
    after = {
        "sync_runs": 14,
        "regions": 3,
        "procrastinate_jobs": 9,
        "procrastinate_events": 4,
        "procrastinate_workers": 2,
    }
    assert bench_fleet.split_writes(before, after) == (4 + 3, 4 + 3 + 2)


@pytest.mark.slow
def test_a_session_left_open_has_its_writes_counted_once_settled() -> None:
    # The workers keep their sessions: their writes must show without their leaving.
    name = create_database()
    try:
        url = database_url(name)
        with (
            psycopg.connect(url, autocommit=True) as monitor,
            psycopg.connect(url, autocommit=True) as writer,
        ):
            monitor.execute("CREATE TABLE t (x int PRIMARY KEY)")
            time.sleep(bench_fleet.STATS_SETTLE_SECONDS)
            before = bench_fleet.table_writes(monitor)
            writer.execute("INSERT INTO t SELECT g FROM generate_series(1, 5) AS g")
            writer.execute("UPDATE t SET x = x + 100 WHERE x <= 2")
            time.sleep(bench_fleet.STATS_SETTLE_SECONDS)
            after = bench_fleet.table_writes(monitor)
            assert bench_fleet.split_writes(before, after) == (5 + 2, 0)
    finally:
        drop_database(name)


def test_the_most_syncs_at_once_counts_overlapping_runs() -> None:
    name = create_database()
    try:
        with psycopg.connect(database_url(name), autocommit=True) as connection:
            connection.execute(
                "CREATE TABLE sync_runs (id int, started_at timestamptz, finished_at timestamptz)"
            )
            # Seconds: run 1 is before the sweep; 2-4 overlap at 10.5; 5 starts as 4 ends.
            connection.execute(
                "INSERT INTO sync_runs SELECT id, to_timestamp(s), to_timestamp(f) FROM (VALUES"
                " (1, 0, 100), (2, 10, 12), (3, 10.2, 11), (4, 10.5, 13), (5, 13, 14))"
                " AS r (id, s, f)"
            )
            row = connection.execute(bench_fleet.MOST_AT_ONCE, {"after": 1}).fetchone()
            assert row == (3,)
            row = connection.execute(bench_fleet.MOST_AT_ONCE, {"after": 4}).fetchone()
            assert row == (1,)
    finally:
        drop_database(name)


def test_one_percent_of_each_accounts_regions_is_changed_on_the_fake() -> None:
    with FakeKaleyra(accounts=3, regions_per_account=300).start() as fake:
        sids = [fleet_sid(1), fleet_sid(3)]
        bench_fleet.serve_changed(fake.url, sids, 300)
        for number in (1, 2, 3):
            sid = fleet_sid(number)
            answer = requests.get(f"{fake.url}/_fake/accounts/{sid}/regions", timeout=10)
            served = by_id(answer.json()["data"])
            built = by_id(fleet_regions(sid, 300))
            assert served.keys() == built.keys()
            changed = [k for k in served if served[k] != built[k]]
            assert len(changed) == (3 if sid in sids else 0)
            assert all(served[k]["carrier_enabled"] != built[k]["carrier_enabled"] for k in changed)


def sweep(label: str, seconds: float, *, workers: int = 1, cpu: float = 5.0) -> bench_fleet.Sweep:
    return bench_fleet.Sweep(
        label, 1000, workers, seconds, 0.1, cpu, 1.0, 3.0, 16, 0, 0.25, 0.5, 1.0
    )


def fleet_result(*, steady: float, two: float, dispatch: float, rss: float) -> bench_fleet.Result:
    result = bench_fleet.Result(1000, 300, 0.2, 16, dispatch_accounts=10_000)
    result.sweeps = [sweep("first", 60), sweep("steady", steady), sweep("steady", two, workers=2)]
    result.sweeps[1].tuples, result.sweeps[1].queue_tuples = 2000, 9000
    result.small = [sweep("first", 1.0, cpu=0.5), sweep("steady", 0.5, cpu=0.2)]
    result.small[0].accounts = result.small[1].accounts = 50
    result.dlt = bench_fleet.Peer(
        50,
        "1.0",
        [{"seconds": 30.0, "cpu_seconds": 12.0}, {"seconds": 25.0, "cpu_seconds": 10.0}],
        60.0,
        25.0,
        90.0,
    )
    result.worker_rss_mb = [rss, rss - 10]
    result.dispatch_seconds = dispatch
    return result


def test_fleet_targets_pass_and_fail_on_the_limits_of_the_issue() -> None:
    good = bench_fleet.targets(fleet_result(steady=20, two=10, dispatch=1, rss=120))
    assert {t.name: t.passed for t in good} == dict.fromkeys((t.name for t in good), True)
    bad = {
        t.name: t for t in bench_fleet.targets(fleet_result(steady=40, two=30, dispatch=6, rss=260))
    }
    assert bad["steady no-change sweep, 1,000 accounts"].passed is False
    assert bad["two workers vs one, steady sweep"].value == pytest.approx(40 / 30)
    assert bad["two workers vs one, steady sweep"].passed is False
    assert bad["worker peak RSS at concurrency 16"].value == 260
    assert bad["worker peak RSS at concurrency 16"].passed is False
    assert bad["dispatching a sweep of 10,000 due accounts"].passed is False
    assert bad["tuples written per no-change sync (its run)"].value == 2.0
    assert bad["tuples written per no-change sync (its run)"].passed is True
    assert bad["dlt / regionsync CPU, steady pass, 50 accounts"].value == pytest.approx(50)
    assert bad["worker CPU per no-change sync"].value == pytest.approx(5.0)


def test_fleet_targets_for_another_size_are_not_judged() -> None:
    result = fleet_result(steady=20, two=10, dispatch=1, rss=120)
    result.accounts, result.dispatch_accounts, result.dlt = 50, 1000, None
    found = {t.name: t for t in bench_fleet.targets(result)}
    assert found["steady no-change sweep, 1,000 accounts"].value == 20
    assert found["steady no-change sweep, 1,000 accounts"].passed is None
    assert found["dispatching a sweep of 1,000 due accounts"].passed is None
    assert found["dlt / regionsync wall, first pass, 50 accounts"].value is None
    assert found["worker CPU per no-change sync"].passed is True  # per sync: any size


def test_the_fake_is_started_as_a_process_and_stops_on_sigterm(tmp_path: Path) -> None:
    args = bench_fleet.build_parser().parse_args(
        ["--accounts", "2", "--regions-per-account", "5", "--latency", "0ms"]
    )
    fake, url = bench_fleet.start_fake(args, dict(os.environ), tmp_path / "fake.log")
    try:
        sid = fleet_sid(2)
        answer = requests.get(
            url + REGIONS_PATHS[0].format(sid=sid), headers={"api-key": fleet_key(sid)}, timeout=10
        )
        assert len(answer.json()["data"]) == 5
    finally:
        assert fake.stop() == 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("dlt") is None, reason="needs the bench extra")
def test_the_dlt_peer_loads_each_account_into_a_dataset_of_its_own(tmp_path: Path) -> None:
    name = create_database()
    try:
        with FakeKaleyra(accounts=2, regions_per_account=4).start() as fake:
            report = tmp_path / "dlt.json"
            sids = [fleet_sid(1), fleet_sid(2)]
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    bench_fleet.DLT_PER_TENANT,
                    str(report),
                    fake.url,
                    REGIONS_PATHS[0],
                    database_url(name),
                    str(tmp_path / "pipelines"),
                    ",".join(sids),
                    "2",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, done.stderr[-2000:]
        passes = json.loads(report.read_text())
        assert len(passes) == 2
        assert all(p["seconds"] > 0 and p["cpu_seconds"] > 0 for p in passes)
        with psycopg.connect(database_url(name)) as connection:
            for sid in sids:
                table = f"tenant_{sid.lower()}.regions"
                rows = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
                assert rows == (4,)  # loaded twice, unchanged: one version each
    finally:
        drop_database(name)


@pytest.mark.slow
def test_the_fleet_benchmark_runs_end_to_end_on_three_accounts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "--accounts", "3", "--regions-per-account", "10", "--latency", "0ms", "--repeat", "1",
        "--dispatch-accounts", "20", "--dispatch-history", "2", "--dlt-accounts", "2", "--no-dlt",
    ]  # fmt: skip
    assert bench_fleet.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    report = json.loads(out[-1])
    sweeps = {(s["label"], s["workers"]): s for s in report["result"]["sweeps"]}
    assert sorted(sweeps) == [("1% change", 1), ("first", 1), ("steady", 1), ("steady", 2)]
    assert sweeps["first", 1]["regions_written"] == 3 * 10
    assert sweeps["1% change", 1]["regions_written"] == 3  # one region of each account
    assert sweeps["steady", 1]["regions_written"] == 0
    assert sweeps["steady", 1]["tuples"] == 3 * 2  # each run: inserted, then closed
    assert sweeps["steady", 1]["worker_cpu_seconds"] > 0
    assert report["result"]["worker_exit_codes"] == [0, 0, 0]
    assert report["result"]["dispatch_seconds"] > 0
    assert report["result"]["dlt_skipped"] == "--no-dlt"
    verdicts = {line[6:].split("  ")[0]: line[:4] for line in out if line[:4] in ("PASS", "FAIL")}
    assert verdicts["tuples written per no-change sync (its run)"] == "PASS"
