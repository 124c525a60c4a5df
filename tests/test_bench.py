"""The benchmark's own instruments, on tiny input (the benchmark itself: docs/performance.md)."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from tests.benchmarks import bench_sync
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
