"""Benchmark: a database of many accounts. Prints its size, `migrate`'s and `status`'s times.

    python -m tests.benchmarks.bench_accounts [--accounts 1000] [--regions 300] [--days 30]

Two throwaway PostgreSQL databases (REGIONSYNC_TEST_DATABASE_URL, as the tests use):

- an existing deployment at revision 0003 holding as many regions, history rows and runs as
  the fleet below, in one account (as one schema held them before accounts existed),
  upgraded by ``regionsync migrate``: the time migration 0004 takes on it;
- the fleet: ``--accounts`` accounts of ``--regions`` regions each, every region added once
  and a tenth of them changed later, and a run every 15 minutes per account for ``--days``
  days (every 50th failed), written as syncs write them. Then ``regionsync migrate`` (up to
  date), ``regionsync status`` (every account; and one with ``--account``) as processes,
  and the ``sync_health`` view, each timed warm (best of three).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from regionsync import store
from regionsync.store.schema import alembic_config, migrate, migration_connection
from tests.support import create_pg_database, drop_pg_database, settings_for

REPOSITORY = Path(__file__).resolve().parents[2]
RUNS_PER_DAY = 96

FLEET = """
INSERT INTO accounts (name, sid, pod, created_at)
SELECT 'brand-' || lpad(a::text, 5, '0'), 'FAKE' || lpad(a::text, 5, '0'), 'in', now()
FROM generate_series(1, :accounts) AS a;

INSERT INTO sync_runs (account, started_at, finished_at, status, trigger, source,
                       fetched, added, changed, unchanged, removed, restored, rejected)
SELECT 'brand-' || lpad(a::text, 5, '0'),
       now() - (:runs - k) * interval '15 minutes',
       now() - (:runs - k) * interval '15 minutes' + interval '1 second',
       CASE WHEN k % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 'daemon', 'bench',
       :regions, CASE WHEN k = 1 THEN :regions ELSE 0 END, 0,
       CASE WHEN k = 1 THEN 0 ELSE :regions END, 0, 0, 0
FROM generate_series(1, :runs) AS k, generate_series(1, :accounts) AS a
ORDER BY k, a;

INSERT INTO regions (account, id, region_name, display_name, management_type,
                     management_type_value, carrier_enabled, hosting_region, raw,
                     first_seen_at, updated_at)
SELECT 'brand-' || lpad(a::text, 5, '0'), 'r' || lpad(i::text, 6, '0'), '/v1/regions/r' || i,
       'Region ' || i, 'GOOGLE_MANAGED', 2, i % 10 <> 0, 'EUROPE',
       jsonb_build_object('id', 'r' || i), now(), now()
FROM generate_series(1, :accounts) AS a, generate_series(1, :regions) AS i;

INSERT INTO region_history (account, region_id, sync_run_id, changed_at, change,
                            carrier_enabled_before, carrier_enabled_after,
                            hosting_region_before, hosting_region_after)
SELECT r.account, r.id, first.id, first.started_at, 'added', NULL, true, NULL, 'EUROPE'
FROM regions AS r
JOIN LATERAL (SELECT id, started_at FROM sync_runs WHERE account = r.account
              ORDER BY id LIMIT 1) AS first ON true;

INSERT INTO region_history (account, region_id, sync_run_id, changed_at, change,
                            carrier_enabled_before, carrier_enabled_after,
                            hosting_region_before, hosting_region_after)
SELECT r.account, r.id, last.id, last.started_at, 'changed', true, false, 'EUROPE', 'EUROPE'
FROM regions AS r
JOIN LATERAL (SELECT id, started_at FROM sync_runs WHERE account = r.account
              AND status = 'succeeded' ORDER BY id DESC LIMIT 1) AS last ON true
WHERE NOT r.carrier_enabled
"""

# Revision 0003's tables: the same volume, one account.
EXISTING = """
INSERT INTO sync_runs (started_at, finished_at, status, trigger, source,
                       fetched, added, changed, unchanged, removed, restored, rejected)
SELECT now() - (:runs - k) * interval '1 minute', now() - (:runs - k) * interval '1 minute',
       CASE WHEN k % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 'daemon', 'bench',
       0, 0, 0, 0, 0, 0, 0
FROM generate_series(1, :runs) AS k;

INSERT INTO regions (id, region_name, display_name, management_type, management_type_value,
                     carrier_enabled, hosting_region, raw, first_seen_at, updated_at)
SELECT 'r' || lpad(i::text, 8, '0'), '/v1/regions/r' || i, 'Region ' || i, 'GOOGLE_MANAGED',
       2, i % 10 <> 0, 'EUROPE', jsonb_build_object('id', 'r' || i), now(), now()
FROM generate_series(1, :regions) AS i;

INSERT INTO region_history (region_id, sync_run_id, changed_at, change,
                            carrier_enabled_before, carrier_enabled_after,
                            hosting_region_before, hosting_region_after)
SELECT r.id, 1, now() - interval '30 days', 'added', NULL, true, NULL, 'EUROPE'
FROM regions AS r;

INSERT INTO region_history (region_id, sync_run_id, changed_at, change,
                            carrier_enabled_before, carrier_enabled_after,
                            hosting_region_before, hosting_region_after)
SELECT r.id, 2, now() - interval '29 days', 'changed', true, false, 'EUROPE', 'EUROPE'
FROM regions AS r WHERE NOT r.carrier_enabled
"""


def fill(engine: sa.Engine, script: str, params: dict[str, int]) -> float:
    started = time.perf_counter()
    with engine.begin() as connection:
        for statement in script.split(";\n\n"):
            connection.execute(sa.text(statement), params)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
    return time.perf_counter() - started


def sizes(engine: sa.Engine) -> list[tuple[str, int, int]]:
    with engine.connect() as connection:
        total = connection.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()
        rows = connection.exec_driver_sql(
            "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 3 DESC"
        ).all()
    return [("(database)", 0, int(total or 0)), *((r[0], int(r[1]), int(r[2])) for r in rows)]


def mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def cli(url: sa.URL, *arguments: str) -> tuple[float, int, str]:
    """The best of three wall times of ``python -m regionsync ARGS``, its exit code, stdout."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "REGIONSYNC_DATABASE_URL": url.render_as_string(hide_password=False),
        "REGIONSYNC_LOG_FORMAT": "json",
        "REGIONSYNC_LOG_LEVEL": "WARNING",
    }
    best, code, out = float("inf"), 0, ""
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "regionsync", *arguments],
            env=env,
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=False,
        )
        best = min(best, time.perf_counter() - started)
        code, out = done.returncode, done.stdout
    return best, code, out


def query_time(engine: sa.Engine, sql: str) -> tuple[float, int]:
    best, rows = float("inf"), 0
    with engine.connect() as connection:
        for _ in range(3):
            started = time.perf_counter()
            rows = len(connection.exec_driver_sql(sql).all())
            best = min(best, time.perf_counter() - started)
    return best, rows


def upgrade_existing(regions: int, runs: int) -> None:
    url = create_pg_database()
    engine = store.create_engine(settings_for(url))
    try:
        config = alembic_config()
        with migration_connection(engine) as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")
        took = fill(engine, EXISTING, {"regions": regions, "runs": runs})
        print(f"existing 0003 database: {regions:,} regions, {runs:,} runs")
        print(f"  filled in {took:.1f} s")
        size = sizes(engine)[0][2]
        started = time.perf_counter()
        before, after = migrate(engine, account="default")
        took = time.perf_counter() - started
        print(f"  regionsync migrate {before} -> {after}: {took:.2f} s  (database {mib(size)})")
    finally:
        engine.dispose()
        drop_pg_database(url)


def fleet(accounts: int, regions: int, days: int) -> None:
    url = create_pg_database()
    engine = store.create_engine(settings_for(url))
    try:
        migrate(engine)
        runs = days * RUNS_PER_DAY
        took = fill(engine, FLEET, {"accounts": accounts, "regions": regions, "runs": runs})
        print(
            f"fleet: {accounts:,} accounts x {regions:,} regions, a run every 15 min for "
            f"{days} days ({accounts * runs:,} runs), filled in {took:.1f} s"
        )
        for name, tuples, size in sizes(engine):
            label = name if not tuples else f"{name} ({tuples:,} rows)"
            print(f"  size {label}: {mib(size)}")
        wall, code, _ = cli(url, "migrate")
        print(f"  regionsync migrate (up to date): {wall:.2f} s, exit {code}")
        wall, code, _ = cli(url, "status", "--json")
        print(f"  regionsync status --json ({accounts:,} accounts): {wall:.2f} s, exit {code}")
        wall, code, _ = cli(url, "status")
        print(f"  regionsync status (table): {wall:.2f} s, exit {code}")
        wall, code, _ = cli(url, "status", "--account", "brand-00001")
        print(f"  regionsync status --account brand-00001: {wall:.2f} s, exit {code}")
        took, rows = query_time(engine, "SELECT * FROM sync_health")
        print(f"  SELECT * FROM sync_health: {took * 1000:.0f} ms, {rows:,} rows")
        took, rows = query_time(
            engine,
            "SELECT account, count(*) FILTER (WHERE carrier_enabled) FROM active_regions"
            " GROUP BY account",
        )
        print(f"  enabled per account (active_regions): {took * 1000:.0f} ms, {rows:,} rows")
    finally:
        engine.dispose()
        drop_pg_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=300, help="per account")
    parser.add_argument("--days", type=int, default=30, help="of runs every 15 minutes")
    args = parser.parse_args()
    upgrade_existing(args.accounts * args.regions, args.days * RUNS_PER_DAY * args.accounts)
    fleet(args.accounts, args.regions, args.days)


if __name__ == "__main__":
    main()
