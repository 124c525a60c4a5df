"""Benchmark: complete ``regionsync run`` processes beside dlt ``scd2`` and the floors.

    pip install -e '.[test,bench]'
    python -m tests.benchmarks.bench_sync [--sizes 1000,10000,100000] [--repeat 3] \
        [--no-dlt] [--check]

For each size N it serves N synthetic regions from the fake Kaleyra server on loopback and
times complete processes, spawn to exit: the initial load, a run with nothing changed, a run
with 1 % of the regions' ``carrier_enabled`` flipped and one with 1 % of them removed. Each
step is repeated ``--repeat`` times and the fastest is reported (the floors too): each
initial load into a throwaway PostgreSQL database of its own (REGIONSYNC_TEST_DATABASE_URL,
as the tests do), the other steps in the last one (the flips flip back, each removal takes
another 1 %). Each regionsync run is paired with a dlt run of the same snapshot
(``tests/benchmarks/bench_dlt.py``) into its own dataset of the same database, in alternating order.
The fake server encodes each snapshot before the pair runs, so neither tool waits for it.

Floors, measured in the same run: ``copy`` is a psycopg ``COPY FROM STDIN`` of the same N rows
into a fresh table shaped like ``regions`` (``LIKE regions INCLUDING ALL``: its primary key and
index), from prepared rows to commit; ``import`` is a complete ``python -c 'import ...'`` of
the runtime libraries a sync needs (:data:`IMPORT_FLOOR`). ``floor = copy + import``.

Before it starts, it compiles regionsync's modules to bytecode, as installing the package
would (:func:`compile_like_an_install`).

It prints a table and one JSON line (everything, and each issue-10 target met or not); with
``--check`` it exits 1 when a target is missed. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql

from regionsync.testing.fakeapi import FakeKaleyra
from tests.benchmarks.bench_measure import (
    BenchError,
    Timed,
    commit,
    create_database,
    database_url,
    delta,
    drop_database,
    machine,
    python_command,
    run_timed,
    schema_delta,
    server_version,
    tuples_written,
)

STEPS = ("initial", "no change", "1% flipped", "1% removed")
REPOSITORY = Path(__file__).resolve().parents[2]
#: What any sync must load: an HTTP client, SQLAlchemy with its PostgreSQL driver, the logger.
IMPORT_FLOOR = (
    "requests",
    "structlog",
    "sqlalchemy",
    "sqlalchemy.dialects.postgresql.psycopg",
    "psycopg",
)
DLT_DATASET = "dlt_regions"
PEER = Path(__file__).with_name("bench_dlt.py")
#: A bounded log: the first 100 change lines, a summary, the run's own few lines.
LOG_LINES = 150
HOSTING = ("NORTH_AMERICA", "EUROPE", "ASIA_PACIFIC", "HOSTING_REGION_UNSPECIFIED")
COPY_COLUMNS = (
    "account",
    "id",
    "region_name",
    "display_name",
    "management_type",
    "management_type_value",
    "carrier_enabled",
    "hosting_region",
    "raw",
    "first_seen_at",
    "updated_at",
)


# The data ------------------------------------------------------------------------------


def synthetic_region(i: int, *, flipped: bool = False) -> dict[str, Any]:
    """Region ``i``, shaped like the bundled sample (its misspelt key included)."""
    google = i % 4 != 0
    record: dict[str, Any] = {
        "id": str(uuid.UUID(int=(0x5EED << 112) | i, version=4)),
        "region_name": f"/v1/regions/carrier-{i:06d}",
        "display_name": f"Country {i % 193}: Carrier {i}",
        "management_type": "GOOGLE_MANAGED" if google else "CARRIER_MANAGED",
    }
    record["managment_type_value" if google else "management_type_value"] = 2 if google else 1
    record["carrier_enabled"] = (i % 3 != 0) != (flipped and i % 100 == 0)
    record["hosting_region"] = HOSTING[i % len(HOSTING)]
    return record


def snapshot(n: int, *, flipped: bool = False, removed: frozenset[int] = frozenset()) -> list[Any]:
    """The N regions; ``flipped``: every 100th has carrier_enabled inverted; ``removed``:
    the regions whose ``i % 100`` is in it are left out."""
    return [synthetic_region(i, flipped=flipped) for i in range(n) if i % 100 not in removed]


def steps(n: int, repeat: int) -> Iterator[tuple[str, int, list[Any]]]:
    """(step, repetition, snapshot) in the order they run; each repetition changes 1 %
    (each initial load is into a database of its own)."""
    for r in range(repeat):
        yield "initial", r, snapshot(n)
    for r in range(repeat):
        yield "no change", r, snapshot(n)
    flipped = False
    for r in range(repeat):
        flipped = not flipped
        yield "1% flipped", r, snapshot(n, flipped=flipped)
    for r in range(repeat):
        yield "1% removed", r, snapshot(n, flipped=flipped, removed=frozenset(range(1, r + 2)))


# Measurements --------------------------------------------------------------------------


@dataclass
class Run:
    """One complete process of a tool on one step."""

    n: int
    step: str
    tool: str  # regionsync or dlt
    repetition: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    regions_tuples: int
    history_tuples: int
    log_lines: int


@dataclass
class Floors:
    copy_s: float
    import_s: float

    @property
    def total(self) -> float:
        return self.copy_s + self.import_s


@dataclass
class Result:
    """Everything one benchmark measured."""

    sizes: list[int]
    repeat: int
    import_s: float = 0.0
    python_s: float = 0.0
    copy_s: dict[int, float] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    dlt: str | None = None  # the version, or None when skipped

    def best(self, n: int, step: str, tool: str) -> Run | None:
        """The fastest repetition, with the largest RSS and write counts of all of them."""
        runs = [r for r in self.runs if (r.n, r.step, r.tool) == (n, step, tool)]
        if not runs:
            return None
        fastest = min(runs, key=lambda r: r.seconds)
        return Run(
            n,
            step,
            tool,
            fastest.repetition,
            fastest.seconds,
            min(r.cpu_seconds for r in runs),
            max(r.peak_rss_mb for r in runs),
            max(r.regions_tuples for r in runs),
            max(r.history_tuples for r in runs),
            max(r.log_lines for r in runs),
        )

    def floor(self, n: int) -> float | None:
        copy = self.copy_s.get(n)
        return None if copy is None else copy + self.import_s


# Targets (issue 10) --------------------------------------------------------------------


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    passed: bool | None  # None: not measured in this run


def targets(result: Result) -> list[Target]:
    """Each issue-10 target, computed from the figures of this one run."""
    found: list[Target] = []

    def at_most(name: str, value: float | None, limit: float) -> None:
        found.append(Target(name, value, limit, None if value is None else value <= limit))

    def at_least(name: str, value: float | None, limit: float) -> None:
        found.append(Target(name, value, limit, None if value is None else value >= limit))

    big = 100_000
    for step, speedup, floor_ratio in (
        ("initial", 3.0, 3.0),
        ("no change", 5.0, 2.0),
        ("1% flipped", 5.0, 2.0),
        ("1% removed", 5.0, 2.0),
    ):
        ours, theirs = result.best(big, step, "regionsync"), result.best(big, step, "dlt")
        floor = result.floor(big)
        at_least(
            f"{big} {step}: dlt / regionsync >= {speedup:g}",
            theirs.seconds / ours.seconds if ours and theirs else None,
            speedup,
        )
        at_most(
            f"{big} {step}: regionsync / (copy + import) <= {floor_ratio:g}",
            ours.seconds / floor if ours and floor else None,
            floor_ratio,
        )
    rss = [r.peak_rss_mb for r in result.runs if r.n == big and r.tool == "regionsync"]
    at_most(f"{big} any step: regionsync peak RSS MB <= 150", max(rss) if rss else None, 150)
    small = result.best(1000, "no change", "regionsync")
    at_most(
        "1000 no change: regionsync / import <= 1.2",
        small.seconds / result.import_s if small and result.import_s else None,
        1.2,
    )
    for n in result.sizes:
        quiet = result.best(n, "no change", "regionsync")
        at_most(
            f"{n} no change: tuples written to regions + region_history == 0",
            quiet.regions_tuples + quiet.history_tuples if quiet else None,
            0,
        )
        first = result.best(n, "initial", "regionsync")
        if n > LOG_LINES:  # below that, a line per region would pass too
            at_most(
                f"{n} initial: log lines <= {LOG_LINES}",
                first.log_lines if first else None,
                LOG_LINES,
            )
    return found


# Running -------------------------------------------------------------------------------


class Bench:
    """Runs the steps for each size against one fake server; cleans up what it made."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.api_key = secrets.token_hex(16)
        self.fake = FakeKaleyra(sid="bench", api_key=self.api_key)
        self.result = Result(sizes=args.sizes, repeat=args.repeat)
        self.base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REGIONSYNC_", "KALEYRA_", "DESTINATION__", "RUNTIME__"))
            and k != "DATABASE_URL"
        }

    def run(self) -> None:
        with self.fake:
            self.measure_imports()
            for n in self.args.sizes:
                self.measure_size(n)

    def timed(self, label: str, command: list[str], env: dict[str, str]) -> Timed:
        timed = run_timed(
            command,
            env=env,
            cwd=self.workdir,
            timeout=self.args.timeout,
            stderr_path=self.workdir / "stderr.log",
        )
        if timed.returncode != 0:
            raise BenchError(f"{label} exited {timed.returncode}:\n{timed.stderr_tail}")
        return timed

    def measure_imports(self) -> None:
        times = self.args.repeat
        statement = "import " + ", ".join(IMPORT_FLOOR)
        python = [
            self.timed("python", python_command("-c", "pass"), self.base_env) for _ in range(times)
        ]
        imports = [
            self.timed("import floor", python_command("-c", statement), self.base_env)
            for _ in range(times)
        ]
        self.result.python_s = min(t.seconds for t in python)
        self.result.import_s = min(t.seconds for t in imports)

    def measure_size(self, n: int) -> None:
        with ExitStack() as database:
            monitor: psycopg.Connection[Any] | None = None
            for step, repetition, regions in steps(n, self.args.repeat):
                if step == "initial":  # each initial load into an empty database
                    database.close()
                    url = self.fresh_database(database)
                    monitor = database.enter_context(psycopg.connect(url, autocommit=True))
                    if n not in self.result.copy_s:
                        self.result.copy_s[n] = copy_floor(monitor, n, self.args.repeat)
                    pipelines = self.workdir / f"dlt-{n}-{repetition}"
                assert monitor is not None
                self.fake.set_regions(regions)
                del regions
                self.fake.encoded_body()  # encoded now, not in the first tool's timed run
                tools = ["regionsync", "dlt"] if self.result.dlt else ["regionsync"]
                if repetition % 2:
                    tools.reverse()
                for tool in tools:
                    self.measure_run(n, step, repetition, tool, url, pipelines, monitor)

    def fresh_database(self, cleanup: ExitStack) -> str:
        """A new database, migrated, dropped when ``cleanup`` closes; its URL."""
        name = create_database()
        cleanup.callback(drop_database, name)
        url = database_url(name)
        self.timed(
            "regionsync migrate", python_command("-m", "regionsync", "migrate"), self.env(url)
        )
        return url

    def env(self, url: str) -> dict[str, str]:
        return {
            **self.base_env,
            "REGIONSYNC_DATABASE_URL": url,
            "KALEYRA_BASE_URL": self.fake.url,
            "KALEYRA_SID": self.fake.sid,
            "KALEYRA_API_KEY": self.api_key,
        }

    def measure_run(
        self,
        n: int,
        step: str,
        repetition: int,
        tool: str,
        url: str,
        pipelines: Path,
        monitor: psycopg.Connection[Any],
    ) -> None:
        before = tuples_written(monitor)
        if tool == "regionsync":
            command = python_command("-m", "regionsync", "run")
            timed = self.timed(f"regionsync run ({n}, {step})", command, self.env(url))
        else:
            command = python_command(
                str(PEER), self.fake.regions_url, url, DLT_DATASET, str(pipelines)
            )
            dlt_env = {**self.base_env, "BENCH_API_KEY": self.api_key}
            timed = self.timed(f"dlt ({n}, {step})", command, dlt_env)
        after = tuples_written(monitor)
        if tool == "regionsync":
            counts = (
                delta(before, after, "public.regions"),
                delta(before, after, "public.region_history"),
            )
        else:
            schemas = (DLT_DATASET, f"{DLT_DATASET}_staging")
            counts = (schema_delta(before, after, *schemas), 0)
        run = Run(
            n,
            step,
            tool,
            repetition,
            timed.seconds,
            timed.cpu_seconds,
            timed.peak_rss_mb,
            *counts,
            timed.stderr_lines,
        )
        self.result.runs.append(run)
        progress(run)


def copy_floor(connection: psycopg.Connection[Any], n: int, times: int) -> float:
    """Fastest of ``times`` COPYs of the N rows into a fresh ``LIKE regions`` table."""
    now = datetime.now(UTC)
    rows = [
        (
            "default",
            r["id"],
            r["region_name"],
            r["display_name"],
            r["management_type"],
            r.get("management_type_value", r.get("managment_type_value")),
            r["carrier_enabled"],
            r["hosting_region"],
            json.dumps(r),
            now,
            now,
        )
        for r in snapshot(n)
    ]
    statement = sql.SQL("COPY copy_floor ({}) FROM STDIN").format(
        sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS))
    )
    best = float("inf")
    for _ in range(times):
        connection.execute("DROP TABLE IF EXISTS copy_floor")
        connection.execute("CREATE TABLE copy_floor (LIKE regions INCLUDING ALL)")
        started = time.perf_counter()
        with (
            connection.transaction(),
            connection.cursor() as cursor,
            cursor.copy(statement) as copy,
        ):
            for row in rows:
                copy.write_row(row)
        best = min(best, time.perf_counter() - started)
    connection.execute("DROP TABLE copy_floor")
    return best


def progress(run: Run) -> None:
    print(
        f"  {run.n:>7} {run.step:<11} {run.tool:<10} #{run.repetition} {run.seconds:7.2f} s "
        f"(CPU {run.cpu_seconds:6.2f} s) {run.peak_rss_mb:6.0f} MB "
        f"tuples {run.regions_tuples}/{run.history_tuples}",
        file=sys.stderr,
        flush=True,
    )


# Reporting -----------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(result: Result) -> str:
    header = (
        "step",
        "N",
        "regionsync s",
        "dlt s",
        "dlt/rs",
        "floor s",
        "rs/floor",
        "CPU s rs/dlt",
        "RSS MB rs",
        "RSS MB dlt",
        "tuples regions/history",
        "log lines",
    )
    rows = [header]
    for n in result.sizes:
        floor = result.floor(n)
        for step in STEPS:
            ours, theirs = result.best(n, step, "regionsync"), result.best(n, step, "dlt")
            if ours is None:
                continue
            rows.append(
                (
                    step,
                    str(n),
                    f"{ours.seconds:.2f}",
                    _fmt(theirs and theirs.seconds, ".2f"),
                    _fmt(theirs and theirs.seconds / ours.seconds, ".2f"),
                    _fmt(floor, ".2f"),
                    _fmt(floor and ours.seconds / floor, ".2f"),
                    f"{ours.cpu_seconds:.2f}/{_fmt(theirs and theirs.cpu_seconds, '.2f')}",
                    f"{ours.peak_rss_mb:.0f}",
                    _fmt(theirs and theirs.peak_rss_mb, ".0f"),
                    f"{ours.regions_tuples}/{ours.history_tuples}",
                    str(ours.log_lines),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    floors = ", ".join(f"N={n}: copy {result.copy_s[n]:.3f} s" for n in result.copy_s)
    lines.append(
        f"floors: import {result.import_s:.3f} s (python alone {result.python_s:.3f} s); {floors}"
    )
    if result.dlt is None:
        lines.append("dlt: not installed, peer skipped (pip install -e '.[bench]')")
    return "\n".join(lines)


def verdicts(found: list[Target]) -> str:
    marks = {True: "PASS", False: "FAIL", None: "n/a "}
    return "\n".join(
        f"{marks[t.passed]}  {t.name}" + ("" if t.value is None else f"  (measured {t.value:.3g})")
        for t in found
    )


def report(result: Result, info: dict[str, Any]) -> dict[str, Any]:
    found = targets(result)
    summary = [
        asdict(best)
        for n in result.sizes
        for step in STEPS
        for tool in ("regionsync", "dlt")
        if (best := result.best(n, step, tool)) is not None
    ]
    outcomes = {t.passed for t in found}
    return {
        "benchmark": "regionsync-vs-dlt-scd2",
        **info,
        "sizes": result.sizes,
        "repeat": result.repeat,
        "dlt": result.dlt,
        "floors": {
            "import_s": result.import_s,
            "import_modules": list(IMPORT_FLOOR),
            "python_s": result.python_s,
            "copy_s": {str(n): s for n, s in result.copy_s.items()},
        },
        "best": summary,
        "runs": [asdict(r) for r in result.runs],
        "targets": [asdict(t) for t in found],
        # true only when every target was measured and met; null: none missed, some not run
        "targets_met": False if False in outcomes else (None if None in outcomes else True),
        "targets_not_measured": sum(t.passed is None for t in found),
    }


# Entry point ---------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1000,10000") from None
    if not sizes or min(sizes) < 100:
        raise argparse.ArgumentTypeError("sizes must be 100 or more (1% of them changes)")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_sync",
        description="Time complete regionsync runs beside dlt scd2, a COPY and an import floor.",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[1000, 10_000, 100_000],
        help="regions served, comma-separated (default 1000,10000,100000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        choices=range(1, 11),
        metavar="R",
        help="repetitions of each step after the initial load (default 3)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds any one process may take (default 900)"
    )
    parser.add_argument("--no-dlt", action="store_true", help="skip the dlt peer")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def compile_like_an_install() -> None:
    """Compile regionsync's modules to bytecode, as ``pip install .`` does for an installed
    package (and dlt's wheels had done): an editable install leaves it to the first import,
    which cannot write it where ``PYTHONDONTWRITEBYTECODE`` is set (as on the machines this
    runs on), and every timed run would compile them from source again (20-30 ms)."""
    import compileall

    compileall.compile_dir(REPOSITORY / "regionsync", quiet=1, maxlevels=0)


def _main(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {
        "commit": commit(REPOSITORY),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    compile_like_an_install()
    with tempfile.TemporaryDirectory(prefix="regionsync-bench-") as workdir:
        bench = Bench(args, Path(workdir))
        try:
            info["postgresql"] = server_version()
        except psycopg.Error as error:
            print(f"bench_sync: error: PostgreSQL: {error}", file=sys.stderr)
            return 1
        if not args.no_dlt:
            if importlib.util.find_spec("dlt") is None:
                print(
                    "dlt is not installed (pip install -e '.[bench]'): peer skipped",
                    file=sys.stderr,
                )
            else:
                from importlib.metadata import version

                bench.result.dlt = version("dlt")
        failed: str | None = None
        try:
            bench.run()
        except BenchError as error:
            failed = str(error)
        except KeyboardInterrupt:
            print("bench_sync: interrupted", file=sys.stderr)
            return 130
    result = bench.result
    info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    info["error"] = failed
    everything = report(result, info)
    print(table(result))
    print(verdicts(targets(result)))
    print(json.dumps(everything, separators=(",", ":")))
    if failed is not None:  # what was measured before is printed above
        print(f"bench_sync: error: {failed}", file=sys.stderr)
        return 1
    return 1 if args.check and everything["targets_met"] is not True else 0


if __name__ == "__main__":
    sys.exit(main())
