"""Benchmark: run retention (docs/operations.md, *Run retention*) on a fleet's ``sync_runs``.

    python -m tests.benchmarks.bench_retention [--accounts 1000] [--days 90]
                                               [--no-backlog | --no-steady]

A run every 15 minutes per account (96 a day each) for ``--days`` days, written with
``generate_series`` in the order they start: 1% changed a region (a ``region_history`` row
each; ``applied_answers`` references each account's last one), 0.1% failed, the rest
succeeded and wrote nothing. On throwaway PostgreSQL databases (REGIONSYNC_TEST_DATABASE_URL,
as the tests use), with the default retention (30 days):

- **backlog**: every day written at once, then one prune pass from the first run, as the
  first prune after an upgrade meets it: its time, and ``sync_runs``'s size
  (``pg_total_relation_size``, indexes included) before, after the pass and a plain
  ``VACUUM`` (the file keeps its size; its free space is reused), and compacted
  (``VACUUM FULL``, only to show what the kept rows take);
- **steady** (unless ``--no-steady``): a day at a time, each day's runs then a prune and a
  ``VACUUM`` (autovacuum's work), as a deployment that prunes all along: the table's size
  every ``--every`` days and each day's prune time (a worker prunes every 10 minutes, a
  144th of a day's work each time); then ``REINDEX TABLE CONCURRENTLY``, since the indexes
  keep the pages that the runs kept pin (docs/operations.md, *Run retention*).

At full scale on the 2-core machine the backlog takes about 10 minutes, the steady run 12.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from regionsync import store
from regionsync.settings import DEFAULT_RUNS_RETENTION
from regionsync.store.retention import BATCH_SIZE, RunPruner, prune_runs
from regionsync.store.schema import migrate
from tests.support import create_pg_database, drop_pg_database, settings_for

RUNS_PER_DAY = 96

#: Runs k = first..last (15 minutes apart from :start) of every account, in start order.
RUNS = """
INSERT INTO sync_runs (account, started_at, finished_at, status, trigger, source,
                       fetched, added, changed, unchanged, removed, restored, rejected)
SELECT 'brand-' || lpad(a::text, 5, '0'),
       CAST(:start AS timestamptz) + k * interval '15 minutes',
       CAST(:start AS timestamptz) + k * interval '15 minutes' + interval '2 seconds',
       CASE WHEN (k * 7919 + a) % 1000 = 1 THEN 'failed' ELSE 'succeeded' END,
       'worker', 'bench', 300, 0,
       CASE WHEN (k * 7919 + a) % 100 = 0 THEN 1 ELSE 0 END,
       CASE WHEN (k * 7919 + a) % 100 = 0 THEN 299 ELSE 300 END, 0, 0, 0
FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS k,
     generate_series(1, CAST(:accounts AS int)) AS a
ORDER BY k, a
"""
REGIONS = """
INSERT INTO regions (account, id, carrier_enabled, raw, first_seen_at, updated_at)
SELECT 'brand-' || lpad(a::text, 5, '0'), 'r1', true, '{"id": "r1"}', now(), now()
FROM generate_series(1, CAST(:accounts AS int)) AS a
"""
#: One history row for each run that changed something, from run id :after on.
HISTORY = """
INSERT INTO region_history (account, region_id, sync_run_id, changed_at, change,
                            carrier_enabled_before, carrier_enabled_after,
                            hosting_region_before, hosting_region_after)
SELECT account, 'r1', id, started_at, 'changed', true, false, 'EUROPE', 'EUROPE'
FROM sync_runs WHERE id > :after AND changed > 0
"""
#: The no-change shortcut's memory: each account's last run that changed something.
ANSWERS = """
DELETE FROM applied_answers;
INSERT INTO applied_answers (account, digest, sync_run_id, fetched, rejected)
SELECT account, repeat('0', 64), max(id), 300, 0 FROM sync_runs WHERE changed > 0
GROUP BY account
"""


def mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def table_size(engine: sa.Engine) -> tuple[int, int]:
    """``sync_runs``'s rows and its total size (indexes and TOAST included)."""
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT count(*) FROM sync_runs").scalar_one()
        size = connection.exec_driver_sql("SELECT pg_total_relation_size('sync_runs')").scalar_one()
    return int(rows), int(size)


def breakdown(engine: sa.Engine) -> str:
    """``sync_runs``'s heap and each of its indexes, by size."""
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT 'heap', pg_relation_size('sync_runs') UNION ALL"
            " SELECT indexrelid::regclass::text, pg_relation_size(indexrelid)"
            " FROM pg_index WHERE indrelid = 'sync_runs'::regclass ORDER BY 2 DESC"
        ).all()
    return ", ".join(f"{name} {mib(size)}" for name, size in rows)


def vacuum(engine: sa.Engine, *, full: bool = False) -> float:
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM (FULL) sync_runs" if full else "VACUUM ANALYZE")
    return time.perf_counter() - started


def write_days(
    engine: sa.Engine, *, start: datetime, first: int, last: int, accounts: int
) -> float:
    """Runs ``first``..``last`` of every account, their history and the shortcut's memory."""
    started = time.perf_counter()
    with engine.begin() as connection:
        after = connection.exec_driver_sql("SELECT coalesce(max(id), 0) FROM sync_runs").scalar()
        params = {"start": start, "first": first, "last": last, "accounts": accounts}
        connection.execute(sa.text(RUNS), params)
        connection.execute(sa.text(HISTORY), {"after": after})
        for statement in ANSWERS.split(";\n"):
            connection.execute(sa.text(statement))
    return time.perf_counter() - started


def counted(engine: sa.Engine) -> str:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT status, count(*), count(*) FILTER (WHERE changed > 0) FROM sync_runs"
            " GROUP BY status ORDER BY status"
        ).all()
    return ", ".join(f"{status} {n:,} ({c:,} changed)" for status, n, c in rows)


def backlog(accounts: int, days: int, retention: timedelta) -> None:
    url = create_pg_database()
    engine = store.create_engine(settings_for(url))
    try:
        migrate(engine)
        now = datetime.now(UTC).replace(microsecond=0)
        start = now - timedelta(days=days)
        with engine.begin() as connection:
            connection.execute(sa.text(REGIONS), {"accounts": accounts})
        took = write_days(
            engine, start=start, first=0, last=days * RUNS_PER_DAY - 1, accounts=accounts
        )
        took += vacuum(engine)
        rows, size = table_size(engine)
        print(
            f"backlog: {accounts:,} accounts, a run every 15 min for {days} days: "
            f"{rows:,} runs written in {took:.1f} s"
        )
        print(f"  runs: {counted(engine)}")
        print(f"  sync_runs before: {rows:,} rows, {mib(size)}; {breakdown(engine)}")
        report = prune_runs(engine, retention, at=now, max_seconds=None)
        rows_after, size_after = table_size(engine)
        rate = report.deleted / report.seconds if report.seconds else 0.0
        print(
            f"  prune (retention {retention.days} d, batches of {BATCH_SIZE:,}): deleted "
            f"{report.deleted:,} of {report.examined:,} examined in {report.batches:,} "
            f"batches, {report.seconds:.1f} s ({rate:,.0f} rows/s, "
            f"{report.seconds / max(1, report.batches) * 1000:.1f} ms a batch)"
        )
        print(f"  sync_runs after the prune: {rows_after:,} rows, {mib(size_after)}")
        took = vacuum(engine)
        print(
            f"  after VACUUM ({took:.1f} s): {mib(table_size(engine)[1])} "
            "(free space inside, reused by new runs)"
        )
        started = time.perf_counter()
        again = prune_runs(engine, retention, at=now, max_seconds=None)
        print(
            f"  a second pass from the first run (the pruner's daily rescan): "
            f"{again.examined:,} runs examined, {again.deleted} deleted, "
            f"{time.perf_counter() - started:.2f} s"
        )
        took = vacuum(engine, full=True)
        print(
            f"  compacted (VACUUM FULL, {took:.1f} s; not needed in operation): "
            f"{mib(table_size(engine)[1])}"
        )
    finally:
        engine.dispose()
        drop_pg_database(url)


def steady(accounts: int, days: int, retention: timedelta, every: int) -> None:
    url = create_pg_database()
    engine = store.create_engine(settings_for(url))
    try:
        migrate(engine)
        now = datetime.now(UTC).replace(microsecond=0)
        start = now - timedelta(days=days)
        with engine.begin() as connection:
            connection.execute(sa.text(REGIONS), {"accounts": accounts})
        pruner = RunPruner(engine, retention, max_seconds=None)
        print(
            f"steady: {accounts:,} accounts, {days} days written a day at a time, each day "
            f"pruned (retention {retention.days} d) and vacuumed"
        )
        prune_times: list[float] = []
        peak = 0
        for day in range(days):
            first = day * RUNS_PER_DAY
            write_days(
                engine, start=start, first=first, last=first + RUNS_PER_DAY - 1, accounts=accounts
            )
            day_end = start + timedelta(days=day + 1)
            report = pruner.prune(at=day_end)
            assert report is not None
            if report.deleted:
                prune_times.append(report.seconds)
            vacuum(engine)
            rows, size = table_size(engine)
            peak = max(peak, size)
            if (day + 1) % every == 0 or day + 1 == days:
                print(
                    f"  day {day + 1:3}: {rows:,} rows, {mib(size)}; that day's prune deleted "
                    f"{report.deleted:,} in {report.seconds:.2f} s"
                )
        if prune_times:
            print(
                f"  a day's prune: {sum(prune_times) / len(prune_times):.2f} s on average, "
                f"{max(prune_times):.2f} s at most (a 10-minute worker call does a 144th)"
            )
        print(f"  peak size {mib(peak)}; runs: {counted(engine)}")
        print(f"  by part: {breakdown(engine)}")
        started = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("REINDEX TABLE CONCURRENTLY sync_runs")
        took = time.perf_counter() - started
        print(
            f"  REINDEX TABLE CONCURRENTLY sync_runs ({took:.1f} s): "
            f"{mib(table_size(engine)[1])}; {breakdown(engine)}"
        )
    finally:
        engine.dispose()
        drop_pg_database(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--every", type=int, default=10, help="days between steady lines")
    parser.add_argument("--no-steady", action="store_true", help="only the backlog")
    parser.add_argument("--no-backlog", action="store_true", help="only the steady run")
    args = parser.parse_args(argv)
    retention = DEFAULT_RUNS_RETENTION
    if not args.no_backlog:
        backlog(args.accounts, args.days, retention)
    if not args.no_steady:
        steady(args.accounts, args.days, retention, args.every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
