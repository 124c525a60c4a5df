"""The benchmark's instruments: a timed child process, PostgreSQL write counters, the machine.

Used by ``python -m tests.benchmarks.bench_sync``; kept apart so the test suite can check them
on tiny input (tests/test_bench.py) without running the benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class BenchError(Exception):
    """The benchmark cannot go on (a child failed or timed out, PostgreSQL is down)."""


@dataclass(frozen=True)
class Timed:
    """One finished child process: wall clock from spawn to reaped, its peak RSS, its output."""

    seconds: float
    cpu_seconds: float  # user + system of the child itself (PostgreSQL's work is not in it)
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr_lines: int
    stderr_tail: str


#: Starts the measured command and reports its own wall clock and rusage as JSON in a file.
#: Linux carries a process's peak RSS across ``exec`` from the memory it was forked (or
#: vforked) from, so a child started straight from this large process would report this
#: process's peak; started from a small trampoline, it reports its own. The trampoline's
#: own start-up (a bare interpreter) is outside the figures it reports.
TRAMPOLINE = """
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(report, "w") as out:
    json.dump({"seconds": seconds, "status": status, "cpu": usage.ru_utime + usage.ru_stime,
               "maxrss_kib": usage.ru_maxrss}, out)
os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run_timed(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    stderr_path: Path,
) -> Timed:
    """Run ``command`` to its end; kill its process group after ``timeout`` seconds.

    It runs under :data:`TRAMPOLINE`, which times it from spawn to exit and reports its own
    ``ru_maxrss`` (neither this process's nor, as ``RUSAGE_CHILDREN`` would, the largest
    child's so far). stderr goes to a file, never a pipe: an initial load may log a line
    per region.
    """
    report = stderr_path.with_suffix(".rusage.json")
    report.unlink(missing_ok=True)
    executable = shutil.which(command[0], path=env.get("PATH")) or command[0]
    wrapped = [sys.executable, "-c", TRAMPOLINE, str(report), executable, *command[1:]]
    with stderr_path.open("wb") as err:
        process = subprocess.Popen(
            wrapped,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        try:
            stdout, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.communicate(timeout=10)
            raise BenchError(f"{' '.join(command[:4])} timed out after {timeout:.0f} s") from None
    text = stderr_path.read_bytes()
    lines = text.splitlines()
    if not report.exists():  # the command could not be started
        raise BenchError(f"{' '.join(command[:4])} did not start:\n{text[-2000:].decode()}")
    measured = json.loads(report.read_text())
    report.unlink()
    return Timed(
        seconds=measured["seconds"],
        cpu_seconds=measured["cpu"],
        peak_rss_mb=measured["maxrss_kib"] / 1024,  # KiB on Linux
        returncode=os.waitstatus_to_exitcode(measured["status"]),
        stdout=stdout.decode(errors="replace"),
        stderr_lines=len(lines),
        stderr_tail=b"\n".join(lines[-5:]).decode(errors="replace"),
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# PostgreSQL ----------------------------------------------------------------------------


def admin_url() -> str:
    """The server the tests use (REGIONSYNC_TEST_DATABASE_URL), as a libpq URL."""
    url = os.environ.get("REGIONSYNC_TEST_DATABASE_URL", DEFAULT_ADMIN_URL)
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def database_url(name: str) -> str:
    """``admin_url()`` with another database name."""
    base, _, rest = admin_url().rpartition("/")
    query = rest.partition("?")[2]
    return f"{base}/{name}" + (f"?{query}" if query else "")


def create_database(prefix: str = "regionsync_bench") -> str:
    """A new empty database; returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin_url(), autocommit=True, connect_timeout=10) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BenchError(
            f"PostgreSQL is not reachable at {admin_url()} ({first}); start it or set "
            "REGIONSYNC_TEST_DATABASE_URL"
        ) from None
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(admin_url(), autocommit=True, connect_timeout=10) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def server_version() -> str:
    with psycopg.connect(admin_url(), autocommit=True, connect_timeout=10) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


OTHER_CLIENTS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""

TUPLES = """
SELECT schemaname, relname, n_tup_ins + n_tup_upd + n_tup_del
FROM pg_stat_user_tables
"""


def wait_for_other_clients(connection: psycopg.Connection[tuple[object, ...]]) -> None:
    """Wait until every other session on this database has gone.

    A backend flushes its table counters as it exits, before it leaves pg_stat_activity; so
    once a child's sessions are gone its writes are all counted (PostgreSQL 15 and later).
    """
    deadline = time.monotonic() + 30
    while True:
        row = connection.execute(OTHER_CLIENTS).fetchone()
        if row is None or row[0] == 0:
            return
        if time.monotonic() > deadline:
            raise BenchError("a child's database session did not end within 30 s")
        time.sleep(0.01)


def tuples_written(connection: psycopg.Connection[tuple[object, ...]]) -> dict[str, int]:
    """``schema.table`` -> tuples inserted + updated + deleted so far, fresh from the server."""
    wait_for_other_clients(connection)
    connection.execute("SELECT pg_stat_clear_snapshot()")
    return {f"{s}.{t}": int(n) for s, t, n in connection.execute(TUPLES).fetchall()}  # type: ignore[call-overload]


def delta(before: Mapping[str, int], after: Mapping[str, int], *names: str) -> int:
    return sum(after.get(n, 0) - before.get(n, 0) for n in names)


def schema_delta(before: Mapping[str, int], after: Mapping[str, int], *schemas: str) -> int:
    """Tuples written to every table of these schemas."""
    return sum(
        n - before.get(name, 0) for name, n in after.items() if name.split(".")[0] in schemas
    )


# The machine ---------------------------------------------------------------------------


def machine() -> dict[str, object]:
    """What the figures were measured on; read the ratios, not the seconds."""
    cpu = "unknown"
    ram_gib = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "ram_gib": ram_gib,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def commit(repository: Path) -> str:
    """``git describe --always --dirty`` of the checkout, or ``unknown``."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],  # noqa: S607
            cwd=repository,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return result.stdout.strip() or "unknown"


def python_command(*arguments: str) -> list[str]:
    return [sys.executable, *arguments]
