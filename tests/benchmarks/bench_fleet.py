"""Benchmark: the fleet. ``regionsync worker`` processes sync many accounts of the fake API.

    pip install -e '.[test,bench]'
    python -m tests.benchmarks.bench_fleet [--accounts 1000] [--regions-per-account 300] \
        [--latency 200ms] [--concurrency 16] [--dispatch-accounts 10000] [--dlt-accounts 50] \
        [--no-dlt] [--check]

One run, on throwaway PostgreSQL databases (REGIONSYNC_TEST_DATABASE_URL, as the tests use):

- the fake Kaleyra API as a process (``regionsync fake-api --accounts N
  --regions-per-account 300 --latency 200ms``), every answer 200 ms late;
- a fresh database: ``regionsync migrate``, then the N accounts by ``regionsync accounts
  import`` of a CSV, their keys one file each in ``REGIONSYNC_API_KEYS_DIR``;
- one ``regionsync worker --concurrency 16`` process: a **first sweep** (every account from
  empty), **steady** no-change sweeps, a **1%-change** sweep (1% of every account's regions
  flipped through the fake's admin API first); the worker's CPU per account sync from
  ``/proc/PID/stat``, its peak RSS (``VmHWM``), the tuples written per no-change sync
  (``pg_stat_user_tables``, with and without procrastinate's own tables);
- a second worker process beside it: the same steady sweep with two (the speed-up);
- dispatching a sweep of 10,000 due accounts (``dispatch_due`` once, in a database of its own;
  nothing synced);
- dlt running one pipeline per account, a dataset per account, all in one process (the
  per-tenant loop: :data:`DLT_PER_TENANT`), against regionsync's worker on the same 50
  accounts of the same fake: wall and CPU, a first load and a no-change pass each.

Every sweep is one this benchmark dispatches: it calls the fleet's own
:func:`regionsync.fleet.app.dispatch_due` (the workers' dispatcher task's code) with a moment
one period ahead, so that every account is due, while holding the dispatcher's advisory lock
for the whole run, so that the workers' own periodic dispatcher never dispatches one. A sweep
ends when every account has a finished run and no sync job is left.

It prints each figure beside its target (issue 23) with PASS, FAIL or n/a (a target sized
for 1,000 accounts, 10,000 dispatched or 50 for dlt, in a smaller run), and one JSON line;
with ``--check`` it exits 1 when a target is missed. See docs/performance.md, *The fleet*.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

from tests.benchmarks.bench_measure import (
    BenchError,
    commit,
    create_database,
    database_url,
    drop_database,
    machine,
    python_command,
    run_timed,
    server_version,
)
from tests.benchmarks.bench_sync import compile_like_an_install

REPOSITORY = Path(__file__).resolve().parents[2]
#: The workers' schedule: the issue's (1,000 accounts every 15 minutes). Its dispatcher never
#: runs on its own here (the benchmark holds its lock); the sweeps are dispatched at a moment
#: one period ahead.
SCHEDULE = "15m"
PERIOD = timedelta(minutes=15)
#: procrastinate's tables: the queue's own writes, shown apart from regionsync's.
QUEUE_TABLES = "procrastinate_"
#: An idle PostgreSQL backend reports its table counters at most this long after its last
#: transaction (PGSTAT_IDLE_INTERVAL, 10 s, in PostgreSQL 15 and later), and the workers keep
#: their sessions: the counters are read this long after a sweep.
STATS_SETTLE_SECONDS = 11.0
POLL_SECONDS = 0.05
#: How long a started worker may take to register itself in procrastinate_workers.
WORKER_START_SECONDS = 60.0
#: SIGTERM drains the running syncs; a worker still there after this is killed (and reported).
WORKER_STOP_SECONDS = 60.0

TUPLES = """
SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables
"""
LAST_RUN = "SELECT coalesce(max(id), 0) FROM sync_runs"
SWEEP_PROGRESS = """
SELECT count(*) FILTER (WHERE finished_at IS NOT NULL),
       (SELECT count(*) FROM procrastinate_jobs
        WHERE task_name = 'regionsync.sync_account' AND status IN ('todo', 'doing'))
FROM sync_runs WHERE id > %s
"""
SWEEP_OUTCOMES = """
SELECT status, count(*), min(error), sum(added + changed + removed + restored),
       extract(epoch FROM avg(finished_at - started_at))
FROM sync_runs WHERE id > %s GROUP BY status
"""
#: The most syncs that ran at the same moment during a sweep (runs overlapping a run's start).
MOST_AT_ONCE = """
SELECT coalesce(max(n), 0) FROM (
    SELECT (SELECT count(*) FROM sync_runs AS o
            WHERE o.id > %(after)s AND o.started_at <= r.started_at
              AND o.finished_at > r.started_at) AS n
    FROM sync_runs AS r WHERE r.id > %(after)s
) AS at_once
"""
WORKERS_REGISTERED = "SELECT count(*) FROM procrastinate_workers"
BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""
#: The dispatch benchmark's history: each account's runs of the last day, every 15 minutes,
#: the latest 20 minutes ago (so that every account is due once, as after an outage).
DISPATCH_HISTORY = """
INSERT INTO sync_runs (account, started_at, finished_at, status, trigger, source,
                       fetched, added, changed, unchanged, removed, restored, rejected)
SELECT a.name, now() - interval '20 minutes' - k * interval '15 minutes',
       now() - interval '20 minutes' - k * interval '15 minutes' + interval '1 second',
       'succeeded', 'worker', 'bench', 300, 0, 0, 300, 0, 0, 0
FROM accounts AS a, generate_series(%(runs)s - 1, 0, -1) AS k
ORDER BY k DESC, a.name
"""

#: dlt's per-tenant pattern, the peer: a pipeline per account (its own name, state and
#: dataset) run one after another in one process, each loading that account's regions with
#: the ``scd2`` merge strategy as tests/benchmarks/bench_dlt.py does for one; ``passes``
#: times over all accounts (a first load, then no change). It times each pass itself (wall
#: and this process's CPU, every thread's), after its imports, and writes them as JSON.
DLT_PER_TENANT = """
import json, os, sys, time
report, base_url, path, database_url, pipelines_dir, sids, passes = sys.argv[1:8]
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
os.environ.setdefault("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", "unused")
import dlt
import requests

def load(sid):
    response = requests.get(base_url + path.format(sid=sid), headers={"api-key": "key-" + sid},
                            timeout=(5, 300))
    response.raise_for_status()
    regions = response.json()["data"]

    @dlt.resource(name="regions", write_disposition={"disposition": "merge", "strategy": "scd2"})
    def source():
        yield regions

    tenant = "tenant_" + sid.lower()
    pipeline = dlt.pipeline(pipeline_name=tenant, dataset_name=tenant,
                            destination=dlt.destinations.postgres(credentials=database_url),
                            pipelines_dir=pipelines_dir)
    pipeline.run(source()).raise_on_failed_jobs()

timings = []
for _ in range(int(passes)):
    wall, cpu = time.perf_counter(), time.process_time()
    for sid in sids.split(","):
        load(sid)
    timings.append({"seconds": time.perf_counter() - wall,
                    "cpu_seconds": time.process_time() - cpu})
with open(report, "w") as out:
    json.dump(timings, out)
"""


# Instruments ---------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process so far, every thread's (``/proc/PID/stat``)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """A running process's peak resident memory (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def backends_cpu(connection: psycopg.Connection[Any]) -> dict[int, float]:
    """CPU so far of each PostgreSQL backend serving this database (the workers' pooled
    sessions; this session left out), by pid: PostgreSQL's own work for the sweep."""
    pids = connection.execute(BACKENDS).fetchall()
    found = {}
    for (pid,) in pids:
        try:
            found[int(pid)] = process_cpu_seconds(int(pid))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return found


def cpu_between(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU the processes of ``after`` used since ``before`` (a new one: all of its own)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def machine_busy() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, every core (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def table_writes(connection: psycopg.Connection[Any]) -> dict[str, int]:
    """Table -> tuples inserted + updated + deleted so far, as PostgreSQL has counted them.

    Unlike :func:`tests.benchmarks.bench_measure.tuples_written` it does not wait for the
    writers to leave (the workers keep their sessions): read it :data:`STATS_SETTLE_SECONDS`
    after the writes.
    """
    connection.execute("SELECT pg_stat_clear_snapshot()")
    rows = connection.execute(TUPLES).fetchall()
    return {str(name): int(n) for name, n in rows}


def split_writes(before: Mapping[str, int], after: Mapping[str, int]) -> tuple[int, int]:
    """(regionsync's tables, procrastinate's tables): the tuples written between the two."""
    ours = queue = 0
    for name, n in after.items():
        written = n - before.get(name, 0)
        if name.startswith(QUEUE_TABLES):
            queue += written
        else:
            ours += written
    return ours, queue


def one_percent_changed(sid: str, count: int) -> list[dict[str, Any]]:
    """The fleet account's regions (as the fake builds them) with ``carrier_enabled`` of every
    100th one inverted: 1% of them (at least one)."""
    from regionsync.testing.fakeapi import fleet_regions

    regions = fleet_regions(sid, count)
    for region in regions[::100]:
        region["carrier_enabled"] = not region["carrier_enabled"]
    return regions


def serve_changed(base_url: str, sids: Sequence[str], count: int) -> None:
    """PUT each account's 1%-changed regions to the fake's admin API."""

    def put(sid: str) -> None:
        body = json.dumps(one_percent_changed(sid, count)).encode()
        request = urllib.request.Request(  # noqa: S310 (the fake, on loopback)
            f"{base_url}/_fake/accounts/{sid}/regions",
            data=body,
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            if answer.status != 200:
                raise BenchError(f"the fake refused the regions of {sid}: {answer.status}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, sids))


class Child:
    """A long-running child process (the fake, a worker), in a process group of its own;
    its stderr in a file. Its CPU and peak RSS are read from ``/proc`` while it runs."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as err:
            self.process = subprocess.Popen(
                command,
                env=dict(env),
                cwd=REPOSITORY,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        self.peak_mb = 0.0
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        self.alive()
        return process_cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        if self.process.poll() is None:
            self.peak_mb = peak_rss_mb(self.pid)
        return self.peak_mb

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited {self.process.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM, then wait; the exit code (killed with its group if it does not go)."""
        if self.process.poll() is None:
            self.peak_rss_mb()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WORKER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.exit_code = self.process.returncode
        return self.exit_code


def start_fake(args: argparse.Namespace, env: Mapping[str, str], log: Path) -> tuple[Child, str]:
    """``regionsync fake-api`` as a process on a free port; the child and its base URL."""
    accounts = max(args.accounts, args.dlt_accounts)
    command = python_command(
        "-m",
        "regionsync",
        "fake-api",
        "--quiet",
        "--port",
        "0",
        "--accounts",
        str(accounts),
        "--regions-per-account",
        str(args.regions_per_account),
        "--latency",
        f"{round(args.latency * 1000)}ms",
    )
    fake = Child("regionsync fake-api", command, env, log)
    assert fake.process.stdout is not None
    line = fake.process.stdout.readline().decode(errors="replace")
    found = re.search(r"listening on (http://\S+)", line)
    if found is None:
        fake.stop()
        raise BenchError(f"regionsync fake-api did not start:\n{line}{fake.tail()}")
    return fake, found.group(1)


# Results -------------------------------------------------------------------------------


@dataclass
class Sweep:
    """One sweep: every account synced once, dispatched by the benchmark."""

    label: str
    accounts: int
    workers: int
    seconds: float
    dispatch_seconds: float
    worker_cpu_seconds: float
    fake_cpu_seconds: float
    postgres_cpu_seconds: float  # the backends serving the database (see backends_cpu)
    most_at_once: int
    regions_written: int  # added + changed + removed + restored, from the runs
    mean_run_seconds: float  # a run's own time, from its start (a thread free) to its end
    machine_busy: float  # share of all the cores busy during the sweep
    other_cpu_seconds: float  # the machine's busy CPU less the workers', PostgreSQL's, fake's
    tuples: int | None = None  # regionsync's tables (measured on one steady sweep)
    queue_tuples: int | None = None

    @property
    def cpu_ms_per_sync(self) -> float:
        return self.worker_cpu_seconds / self.accounts * 1000


@dataclass
class Peer:
    """dlt on the same accounts, a first load and a no-change pass, in one process."""

    accounts: int
    version: str
    passes: list[dict[str, float]]
    process_seconds: float
    process_cpu_seconds: float
    peak_rss_mb: float


@dataclass
class Result:
    accounts: int
    regions_per_account: int
    latency_s: float
    concurrency: int
    setup: dict[str, float] = field(default_factory=dict)
    sweeps: list[Sweep] = field(default_factory=list)
    worker_rss_mb: list[float] = field(default_factory=list)
    worker_exit_codes: list[int] = field(default_factory=list)
    dispatch_accounts: int = 0
    dispatch_seconds: float | None = None
    dlt: Peer | None = None
    dlt_skipped: str | None = None
    small: list[Sweep] = field(default_factory=list)  # regionsync on the dlt peer's accounts

    def best(self, label: str, *, workers: int = 1, small: bool = False) -> Sweep | None:
        found = [
            s
            for s in (self.small if small else self.sweeps)
            if s.label == label and s.workers == workers
        ]
        return min(found, key=lambda s: s.seconds) if found else None

    def measured_tuples(self) -> Sweep | None:
        return next((s for s in self.sweeps if s.tuples is not None), None)


@dataclass
class Target:
    name: str
    value: float | None
    unit: str
    limit: float
    at_least: bool
    passed: bool | None  # None: not measured, or not at the size the target is for


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def targets(result: Result) -> list[Target]:
    """Each target of issue 23, from the figures of this run."""
    found: list[Target] = []
    full = result.accounts == 1000

    def check(
        name: str,
        value: float | None,
        unit: str,
        limit: float,
        *,
        least: bool = False,
        sized: bool = True,
    ) -> None:
        passed = None
        if value is not None and sized:
            passed = value >= limit if least else value <= limit
        found.append(Target(name, value, unit, limit, least, passed))

    first = result.best("first")
    steady = result.best("steady")
    two = result.best("steady", workers=2)
    tuples = result.measured_tuples()
    check(
        "first sweep, 1,000 accounts, one worker",
        first.seconds if first else None,
        "s",
        120,
        sized=full,
    )
    check(
        "steady no-change sweep, 1,000 accounts",
        steady.seconds if steady else None,
        "s",
        30,
        sized=full,
    )
    check("worker CPU per no-change sync", steady.cpu_ms_per_sync if steady else None, "ms", 20)
    check(
        "tuples written per no-change sync (its run)",
        _ratio(tuples.tuples, tuples.accounts) if tuples else None,
        "",
        2,
    )
    check(
        "two workers vs one, steady sweep",
        _ratio(steady.seconds if steady else None, two.seconds if two else None),
        "x",
        1.6,
        least=True,
        sized=full,
    )
    peer = result.dlt
    for index, label in enumerate(("first", "steady")):
        ours = result.best(label, small=True)
        theirs = peer.passes[index] if peer and len(peer.passes) > index else None
        sized = peer is not None and peer.accounts == 50
        check(
            f"dlt / regionsync wall, {label} pass, 50 accounts",
            _ratio(theirs["seconds"], ours.seconds) if ours and theirs else None,
            "x",
            20,
            least=True,
            sized=sized,
        )
        check(
            f"dlt / regionsync CPU, {label} pass, 50 accounts",
            _ratio(theirs["cpu_seconds"], ours.worker_cpu_seconds) if ours and theirs else None,
            "x",
            20,
            least=True,
            sized=sized,
        )
    check(
        f"worker peak RSS at concurrency {result.concurrency}",
        max(result.worker_rss_mb) if result.worker_rss_mb else None,
        "MB",
        250,
        sized=result.concurrency == 16,
    )
    check(
        f"dispatching a sweep of {result.dispatch_accounts:,} due accounts",
        result.dispatch_seconds,
        "s",
        5,
        sized=result.dispatch_accounts == 10_000,
    )
    return found


# Running -------------------------------------------------------------------------------


class Fleet:
    """One database of accounts, the workers syncing it, and the sweeps the benchmark
    dispatches to them."""

    def __init__(self, bench: Bench, accounts: Sequence[str], label: str) -> None:
        from regionsync import store
        from regionsync.fleet.app import make_app
        from regionsync.fleet.dispatch import Dispatcher
        from regionsync.settings import Settings

        self.bench = bench
        self.sids = list(accounts)
        self.label = label
        self.name = create_database()
        bench.cleanup.callback(drop_database, self.name)
        self.url = database_url(self.name)
        self.env = bench.env(self.url)
        self.workers: list[Child] = []
        bench.cli(f"migrate ({label})", ["migrate"], self.env)
        csv_path = bench.workdir / f"accounts-{label}.csv"
        with csv_path.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["name", "sid", "base_url"])
            writer.writerows((sid.lower(), sid, bench.fake_url) for sid in self.sids)
        started = time.perf_counter()
        bench.cli(f"accounts import ({label})", ["accounts", "import", str(csv_path)], self.env)
        bench.result.setup[f"accounts import, {len(self.sids)} ({label})"] = (
            time.perf_counter() - started
        )
        self.monitor = bench.cleanup.enter_context(psycopg.connect(self.url, autocommit=True))
        settings = Settings.from_env(self.env)
        # One connection, held: its session keeps the dispatcher's lock, and dispatch_due
        # (which takes the same lock in its transaction) runs on it.
        self.engine = store.create_engine(settings, pool_size=1)
        bench.cleanup.callback(self.engine.dispose)
        self.app, _ = make_app(settings, self.engine, period=PERIOD)
        self.dispatcher = Dispatcher(settings.schedule, settings.timezone, settings.account)
        self.hold_dispatch_lock()

    def hold_dispatch_lock(self) -> None:
        from regionsync.fleet.app import DISPATCH_LOCK_KEY

        with self.engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({DISPATCH_LOCK_KEY})")
            connection.commit()

    def start_worker(self) -> Child:
        index = len(self.workers) + 1
        command = python_command(
            "-m", "regionsync", "worker", "--concurrency", str(self.bench.args.concurrency)
        )
        log = self.bench.workdir / f"worker-{self.label}-{index}.log"
        worker = Child(f"worker {index} ({self.label})", command, self.env, log)
        self.bench.cleanup.callback(self.stop_worker, worker)
        self.workers.append(worker)
        deadline = time.monotonic() + WORKER_START_SECONDS
        while self.count(WORKERS_REGISTERED) < len(self.workers):
            worker.alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{worker.name} did not start in {WORKER_START_SECONDS:.0f} s")
            time.sleep(POLL_SECONDS)
        return worker

    def stop_worker(self, worker: Child) -> None:
        if worker.exit_code is None:
            worker.stop()
            self.bench.result.worker_rss_mb.append(worker.peak_mb)
            self.bench.result.worker_exit_codes.append(worker.exit_code or 0)

    def stop_workers(self) -> None:
        for worker in self.workers:
            self.stop_worker(worker)

    def count(self, query: str, *params: object) -> int:
        row = self.monitor.execute(query, params or None).fetchone()
        return int(row[0]) if row else 0

    def most_at_once(self, after: int) -> int:
        row = self.monitor.execute(MOST_AT_ONCE, {"after": after}).fetchone()
        return int(row[0]) if row else 0

    def cpu(self) -> tuple[float, float]:
        workers = sum(w.cpu_seconds() for w in self.workers if w.exit_code is None)
        return workers, self.bench.fake.cpu_seconds()

    def sweep(self, label: str) -> Sweep:
        """Dispatch every account once and wait until each has finished its run."""
        from regionsync.fleet.app import dispatch_due

        expected = len(self.sids)
        after = self.count(LAST_RUN)
        workers_cpu, fake_cpu = self.cpu()
        postgres = backends_cpu(self.monitor)
        busy = machine_busy()
        started = time.perf_counter()
        deferred = dispatch_due(self.app, self.engine, self.dispatcher, datetime.now(UTC) + PERIOD)
        dispatched = time.perf_counter() - started
        if deferred != expected:
            raise BenchError(f"{label} sweep: {deferred} of {expected} accounts were dispatched")
        deadline = started + self.bench.args.timeout
        idle_since: float | None = None
        while True:
            row = self.monitor.execute(SWEEP_PROGRESS, (after,)).fetchone()
            finished, queued = (int(row[0]), int(row[1])) if row else (0, 0)
            now = time.perf_counter()
            if finished >= expected and queued == 0:
                break
            if queued == 0:  # no job left, yet runs missing: a job failed before its run
                idle_since = idle_since or now
                if now - idle_since > 5:
                    raise BenchError(f"{label} sweep: {finished} of {expected} runs, no job left")
            for worker in self.workers:
                worker.alive()
            if now > deadline:
                raise BenchError(f"{label} sweep: {finished} of {expected} runs after the timeout")
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - started
        machine = machine_busy()
        workers_after, fake_after = self.cpu()
        postgres_cpu = cpu_between(postgres, backends_cpu(self.monitor))
        busy_cpu, all_cpu = machine[0] - busy[0], machine[1] - busy[1]
        measured = workers_after - workers_cpu + postgres_cpu + fake_after - fake_cpu
        outcomes = self.monitor.execute(SWEEP_OUTCOMES, (after,)).fetchall()
        failed = {str(s): (int(n), e) for s, n, e, _, _ in outcomes if s != "succeeded"}
        if failed:
            raise BenchError(f"{label} sweep: runs that did not succeed: {failed}")
        written = sum(int(w or 0) for _, _, _, w, _ in outcomes)
        mean_run = float(outcomes[0][4] or 0) if outcomes else 0.0
        sweep = Sweep(
            label=label,
            accounts=expected,
            workers=sum(w.exit_code is None for w in self.workers),
            seconds=seconds,
            dispatch_seconds=dispatched,
            worker_cpu_seconds=workers_after - workers_cpu,
            fake_cpu_seconds=fake_after - fake_cpu,
            postgres_cpu_seconds=postgres_cpu,
            most_at_once=self.most_at_once(after),
            regions_written=written,
            mean_run_seconds=mean_run,
            machine_busy=busy_cpu / all_cpu if all_cpu else 0.0,
            other_cpu_seconds=max(0.0, busy_cpu - measured),
        )
        progress(self.label, sweep)
        return sweep

    def counted_sweep(self, label: str) -> Sweep:
        """A sweep with the tuples it wrote: PostgreSQL's counters read once settled before
        and after it (the queue's periodic work during the wait is counted as the queue's)."""
        time.sleep(STATS_SETTLE_SECONDS)
        before = table_writes(self.monitor)
        sweep = self.sweep(label)
        time.sleep(STATS_SETTLE_SECONDS)
        sweep.tuples, sweep.queue_tuples = split_writes(before, table_writes(self.monitor))
        print(
            f"  [{self.label}] {label}: tuples written {sweep.tuples} (regionsync's tables), "
            f"{sweep.queue_tuples} (procrastinate's)",
            file=sys.stderr,
            flush=True,
        )
        return sweep


class Bench:
    """The whole run: the fake, the fleets, the dispatch and dlt; cleans up what it made."""

    def __init__(self, args: argparse.Namespace, workdir: Path, cleanup: ExitStack) -> None:
        self.args = args
        self.workdir = workdir
        self.cleanup = cleanup
        self.keys = workdir / "keys"
        self.result = Result(
            accounts=args.accounts,
            regions_per_account=args.regions_per_account,
            latency_s=args.latency,
            concurrency=args.concurrency,
            dispatch_accounts=args.dispatch_accounts,
        )
        self.base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REGIONSYNC_", "KALEYRA_", "DESTINATION__", "RUNTIME__"))
            and k != "DATABASE_URL"
        }
        self.fake_url = ""

    def env(self, url: str) -> dict[str, str]:
        return {
            **self.base_env,
            "REGIONSYNC_DATABASE_URL": url,
            "REGIONSYNC_API_KEYS_DIR": str(self.keys),
            "REGIONSYNC_SCHEDULE": SCHEDULE,
            "REGIONSYNC_LOG_FORMAT": "json",
        }

    def cli(self, label: str, arguments: list[str], env: Mapping[str, str]) -> None:
        timed = run_timed(
            python_command("-m", "regionsync", *arguments),
            env=env,
            cwd=self.workdir,
            timeout=self.args.timeout,
            stderr_path=self.workdir / "cli.log",
        )
        if timed.returncode != 0:
            raise BenchError(f"regionsync {label} exited {timed.returncode}:\n{timed.stderr_tail}")

    def run(self) -> None:
        from regionsync.testing.fakeapi import fleet_key, fleet_sid

        sids = [fleet_sid(i) for i in range(1, max(self.args.accounts, self.args.dlt_accounts) + 1)]
        self.keys.mkdir(mode=0o700)
        for sid in sids:
            (self.keys / sid.lower()).write_text(fleet_key(sid) + "\n")
        started = time.perf_counter()
        self.fake, self.fake_url = start_fake(self.args, self.base_env, self.workdir / "fake.log")
        self.cleanup.callback(self.fake.stop)
        self.result.setup["fake-api started"] = time.perf_counter() - started
        self.fleet(sids[: self.args.accounts])
        self.dispatch()
        if self.args.dlt_accounts:
            self.versus_dlt(sids[: self.args.dlt_accounts])

    def fleet(self, sids: list[str]) -> None:
        fleet = Fleet(self, sids, "fleet")
        fleet.start_worker()
        sweeps = self.result.sweeps
        sweeps.append(fleet.sweep("first"))
        sweeps.append(fleet.counted_sweep("steady"))
        for _ in range(self.args.repeat - 1):
            sweeps.append(fleet.sweep("steady"))
        started = time.perf_counter()
        serve_changed(self.fake_url, sids, self.args.regions_per_account)
        self.result.setup["1% of the regions changed on the fake"] = time.perf_counter() - started
        sweeps.append(fleet.sweep("1% change"))
        fleet.start_worker()
        for _ in range(self.args.repeat):
            sweeps.append(fleet.sweep("steady"))
        fleet.stop_workers()

    def dispatch(self) -> None:
        """``dispatch_due`` once over ``--dispatch-accounts`` due accounts, no worker."""
        from regionsync.fleet.app import dispatch_due

        count = self.args.dispatch_accounts
        if not count:
            return
        fleet = Fleet(self, [f"DISPATCH{i:06d}" for i in range(1, count + 1)], "dispatch")
        started = time.perf_counter()
        fleet.monitor.execute(DISPATCH_HISTORY, {"runs": self.args.dispatch_history})
        fleet.monitor.execute("VACUUM ANALYZE")
        self.result.setup[f"dispatch history, {self.args.dispatch_history} runs each"] = (
            time.perf_counter() - started
        )
        started = time.perf_counter()
        deferred = dispatch_due(fleet.app, fleet.engine, fleet.dispatcher, datetime.now(UTC))
        self.result.dispatch_seconds = time.perf_counter() - started
        if deferred != count:
            raise BenchError(f"dispatch: {deferred} of {count} due accounts were deferred")
        print(
            f"  [dispatch] {count:,} due accounts deferred in {self.result.dispatch_seconds:.2f} s",
            file=sys.stderr,
            flush=True,
        )

    def versus_dlt(self, sids: list[str]) -> None:
        fleet = Fleet(self, sids, "dlt-peer")
        fleet.start_worker()
        self.result.small.append(fleet.sweep("first"))
        self.result.small.append(fleet.sweep("steady"))
        fleet.stop_workers()
        if self.args.no_dlt:
            self.result.dlt_skipped = "--no-dlt"
            return
        if importlib.util.find_spec("dlt") is None:
            self.result.dlt_skipped = "dlt is not installed (pip install -e '.[bench]')"
            return
        from importlib.metadata import version

        from regionsync.testing.fakeapi import REGIONS_PATHS

        report = self.workdir / "dlt.json"
        command = python_command(
            "-c",
            DLT_PER_TENANT,
            str(report),
            self.fake_url,
            REGIONS_PATHS[0],
            fleet.url,
            str(self.workdir / "dlt-pipelines"),
            ",".join(sids),
            "2",
        )
        timed = run_timed(
            command,
            env=self.base_env,
            cwd=self.workdir,
            timeout=self.args.timeout,
            stderr_path=self.workdir / "dlt.log",
        )
        if timed.returncode != 0:
            raise BenchError(f"dlt exited {timed.returncode}:\n{timed.stderr_tail}")
        peer = Peer(
            accounts=len(sids),
            version=version("dlt"),
            passes=json.loads(report.read_text()),
            process_seconds=timed.seconds,
            process_cpu_seconds=timed.cpu_seconds,
            peak_rss_mb=timed.peak_rss_mb,
        )
        self.result.dlt = peer
        for label, timing in zip(("first", "steady"), peer.passes, strict=False):
            print(
                f"  [dlt] {label}: {timing['seconds']:.2f} s (CPU {timing['cpu_seconds']:.2f} s)",
                file=sys.stderr,
                flush=True,
            )


def progress(where: str, sweep: Sweep) -> None:
    print(
        f"  [{where}] {sweep.label} ({sweep.workers} worker{'s' * (sweep.workers > 1)}): "
        f"{sweep.seconds:.2f} s, worker CPU {sweep.worker_cpu_seconds:.2f} s "
        f"({sweep.cpu_ms_per_sync:.1f} ms/sync), PostgreSQL CPU "
        f"{sweep.postgres_cpu_seconds:.2f} s, fake CPU {sweep.fake_cpu_seconds:.2f} s, "
        f"at most {sweep.most_at_once} at once (a run {sweep.mean_run_seconds:.3f} s), "
        f"machine busy {sweep.machine_busy:.0%} (others {sweep.other_cpu_seconds:.1f} s CPU), "
        f"{sweep.regions_written} regions written",
        file=sys.stderr,
        flush=True,
    )


# Reporting -----------------------------------------------------------------------------


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.1f}x"
    if unit == "":
        return f"{value:.2f}"
    return f"{value:.3g} {unit}" if value < 10 else f"{value:,.1f} {unit}"


def sweeps_table(result: Result) -> str:
    header = (
        "sweep",
        "accounts",
        "workers",
        "wall s",
        "worker CPU s",
        "CPU ms/sync",
        "PostgreSQL CPU s",
        "fake CPU s",
        "most at once",
        "run s",
        "busy",
        "others CPU s",
        "regions written",
        "tuples rs/queue",
    )
    rows = [header]
    for where, sweeps in (("", result.sweeps), ("dlt peer's accounts: ", result.small)):
        for s in sweeps:
            tuples = "-" if s.tuples is None else f"{s.tuples}/{s.queue_tuples}"
            rows.append(
                (
                    where + s.label,
                    str(s.accounts),
                    str(s.workers),
                    f"{s.seconds:.2f}",
                    f"{s.worker_cpu_seconds:.2f}",
                    f"{s.cpu_ms_per_sync:.1f}",
                    f"{s.postgres_cpu_seconds:.2f}",
                    f"{s.fake_cpu_seconds:.2f}",
                    str(s.most_at_once),
                    f"{s.mean_run_seconds:.3f}",
                    f"{s.machine_busy:.0%}",
                    f"{s.other_cpu_seconds:.1f}",
                    str(s.regions_written),
                    tuples,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def details(result: Result) -> str:
    lines = [f"setup: {', '.join(f'{k} {v:.1f} s' for k, v in result.setup.items())}"]
    if result.worker_rss_mb:
        rss = ", ".join(f"{mb:.0f}" for mb in result.worker_rss_mb)
        codes = ", ".join(map(str, result.worker_exit_codes))
        lines.append(f"workers: peak RSS {rss} MB; exit codes after SIGTERM {codes}")
    tuples = result.measured_tuples()
    if tuples is not None and tuples.tuples is not None and tuples.queue_tuples is not None:
        lines.append(
            f"tuples per no-change sync: {tuples.tuples / tuples.accounts:.2f} in regionsync's "
            f"tables, {(tuples.tuples + tuples.queue_tuples) / tuples.accounts:.2f} with "
            f"procrastinate's (the queue's periodic work in the {STATS_SETTLE_SECONDS:.0f} s "
            "waits included)"
        )
    peer = result.dlt
    if peer is not None:
        for label, timing in zip(("first", "steady"), peer.passes, strict=False):
            ours = result.best(label, small=True)
            if ours is None:
                continue
            lines.append(
                f"dlt {peer.version}, {peer.accounts} accounts, {label} pass: "
                f"{timing['seconds']:.2f} s, CPU {timing['cpu_seconds']:.2f} s; regionsync "
                f"{ours.seconds:.2f} s, CPU {ours.worker_cpu_seconds:.2f} s"
            )
        lines.append(
            f"dlt process, both passes and its start-up: {peer.process_seconds:.1f} s, CPU "
            f"{peer.process_cpu_seconds:.1f} s, peak RSS {peer.peak_rss_mb:.0f} MB"
        )
    elif result.dlt_skipped:
        lines.append(f"dlt: skipped ({result.dlt_skipped})")
    return "\n".join(lines)


def verdicts(found: list[Target]) -> str:
    marks = {True: "PASS", False: "FAIL", None: "n/a "}
    width = max(len(t.name) for t in found)
    return "\n".join(
        f"{marks[t.passed]}  {t.name.ljust(width)}  {_figure(t.value, t.unit):>10}  "
        f"target {'>=' if t.at_least else '<='} {_figure(t.limit, t.unit)}"
        for t in found
    )


def report(result: Result, info: dict[str, Any]) -> dict[str, Any]:
    found = targets(result)
    outcomes = {t.passed for t in found}
    return {
        "benchmark": "regionsync-fleet",
        **info,
        "result": asdict(result),
        "targets": [asdict(t) for t in found],
        "targets_met": False if False in outcomes else (None if None in outcomes else True),
    }


# Entry point ---------------------------------------------------------------------------


def _latency(text: str) -> float:
    from regionsync.testing.fakeapi import parse_latency

    try:
        return parse_latency(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_fleet",
        description="Time regionsync worker processes sweeping many accounts of the fake API.",
    )
    parser.add_argument("--accounts", type=int, default=1000, help="default 1000")
    parser.add_argument("--regions-per-account", type=int, default=300, help="default 300")
    parser.add_argument(
        "--latency", type=_latency, default=0.2, help="of every API answer (default 200ms)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="per worker (default 16)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="steady sweeps with each number of workers (2)"
    )
    parser.add_argument(
        "--dispatch-accounts",
        type=int,
        default=10_000,
        help="due accounts dispatched at once (default 10000; 0 skips)",
    )
    parser.add_argument(
        "--dispatch-history",
        type=int,
        default=96,
        help="past runs of each of them, every 15 minutes (default 96: a day)",
    )
    parser.add_argument(
        "--dlt-accounts",
        type=int,
        default=50,
        help="accounts for the comparison with dlt (default 50; 0 skips)",
    )
    parser.add_argument("--no-dlt", action="store_true", help="skip dlt itself")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds any sweep or process may take"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.regions_per_account < 1 or args.repeat < 1:
        parser.error("--accounts, --regions-per-account and --repeat must be 1 or more")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="regionsync-fleet-bench-") as name:
        yield Path(name)


def _main(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {
        "commit": commit(REPOSITORY),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    compile_like_an_install()
    from regionsync import logs

    logs.configure(level="WARNING")  # the dispatches made here: the workers log their own
    try:
        info["postgresql"] = server_version()
    except psycopg.Error as error:
        print(f"bench_fleet: error: PostgreSQL: {error}", file=sys.stderr)
        return 1
    failed: str | None = None
    with _workdir() as workdir, ExitStack() as cleanup:
        bench = Bench(args, workdir, cleanup)
        try:
            bench.run()
        except BenchError as error:
            failed = str(error)
        except KeyboardInterrupt:
            print("bench_fleet: interrupted", file=sys.stderr)
            return 130
        finally:
            cleanup.close()  # the workers stop (their peak RSS read) before the report
    result = bench.result
    info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    info["error"] = failed
    print(
        f"regionsync fleet: {result.accounts:,} accounts x {result.regions_per_account} regions, "
        f"latency {result.latency_s * 1000:.0f} ms, worker concurrency {result.concurrency}; "
        f"commit {info['commit']}, {info['machine']['nproc']} CPUs, PostgreSQL "
        f"{info.get('postgresql')}"
    )
    print(sweeps_table(result))
    print(details(result))
    print(verdicts(targets(result)))
    everything = report(result, info)
    print(json.dumps(everything, separators=(",", ":")))
    if failed is not None:
        print(f"bench_fleet: error: {failed}", file=sys.stderr)
        return 1
    return 1 if args.check and everything["targets_met"] is not True else 0


if __name__ == "__main__":
    sys.exit(main())
