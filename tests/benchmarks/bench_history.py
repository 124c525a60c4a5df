"""Benchmark: the example queries and the views on a large history. Prints plans and timings.

    python -m tests.benchmarks.bench_history [--regions 10000] [--changes 100] [--plans]

Builds a throwaway PostgreSQL database (REGIONSYNC_TEST_DATABASE_URL, as the tests do) with
``regions`` x ``changes`` history rows (default one million) from hourly syncs over the last
year, as syncs would have written them: every row's befores are the previous row's afters,
carrier support flips at every change, hosting regions move every tenth change, 4 % of
changes are removals followed by a restoration, and changes reach up to the present. The
rows are inserted run by run, as the sync does, so the heap is in time order, not region
order. Then it runs EXPLAIN (ANALYZE, BUFFERS) twice on every example query and on typical
reads of each view, and prints the second, warm, run.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from importlib.resources import files

import sqlalchemy as sa

from regionsync import store
from regionsync.store.schema import migrate
from tests.support import create_pg_database, drop_pg_database, settings_for

RUNS = 8760  # hourly for a year; every 50th failed, and so wrote no history

FILL = """
INSERT INTO sync_runs (id, account, started_at, finished_at, status, trigger, source,
                       fetched, added, changed, unchanged, removed, restored, rejected)
SELECT n, 'default', date_trunc('hour', now()) - interval '365 days' + n * interval '1 hour',
       date_trunc('hour', now()) - interval '365 days' + n * interval '1 hour'
           + interval '5 seconds',
       CASE WHEN n % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 'daemon', 'bench',
       0, 0, 0, 0, 0, 0, 0
FROM generate_series(1, :runs) AS n;

SELECT setval(pg_get_serial_sequence('sync_runs', 'id'), :runs);

INSERT INTO regions (account, id, region_name, display_name, management_type,
                     management_type_value, carrier_enabled, hosting_region, raw,
                     first_seen_at, updated_at)
SELECT 'default', 'r' || lpad(i::text, 6, '0'), '/v1/regions/r' || i, 'Region ' || i,
       'GOOGLE_MANAGED', 2, true, 'EUROPE', jsonb_build_object('id', 'r' || i), now(), now()
FROM generate_series(1, :regions) AS i;

-- Region i's k-th change: added first; removed when (k + i) % 25 = 23, restored right after.
INSERT INTO region_history (account, region_id, sync_run_id, changed_at, change,
                            carrier_enabled_before, carrier_enabled_after,
                            hosting_region_before, hosting_region_after)
SELECT 'default', 'r' || lpad(p.i::text, 6, '0'), s.id, s.started_at, p.change,
       CASE WHEN p.change IN ('added', 'restored') THEN NULL ELSE (p.k - 1 + p.i) % 2 = 0 END,
       CASE WHEN p.change = 'removed' THEN NULL ELSE (p.k + p.i) % 2 = 0 END,
       CASE WHEN p.change IN ('added', 'restored') THEN NULL
            ELSE (ARRAY['EUROPE', 'NORTH_AMERICA', 'ASIA_PACIFIC'])[1 + (p.i + (p.k - 1) / 10) % 3]
       END,
       CASE WHEN p.change = 'removed' THEN NULL
            ELSE (ARRAY['EUROPE', 'NORTH_AMERICA', 'ASIA_PACIFIC'])[1 + (p.i + p.k / 10) % 3]
       END
FROM (
    SELECT i, k,
           CASE WHEN k = 0 THEN 'added'
                WHEN (k + i) % 25 = 23 THEN 'removed'
                WHEN k >= 2 AND (k + i) % 25 = 24 THEN 'restored'
                ELSE 'changed' END AS change,
           1 + k * (:runs / :changes) + (i % (:runs / :changes - 1)) AS slot
    FROM generate_series(1, :regions) AS i, generate_series(0, :changes - 1) AS k
) AS p
JOIN sync_runs AS s ON s.id = p.slot + (p.slot % 50 = 0)::int
ORDER BY s.id, p.i;

UPDATE regions AS r
SET carrier_enabled = l.enabled, hosting_region = l.hosting, first_seen_at = f.first_at,
    updated_at = l.last_at, removed_at = CASE WHEN l.change = 'removed' THEN l.last_at END
FROM (SELECT DISTINCT ON (region_id) region_id, change, changed_at AS last_at,
             coalesce(carrier_enabled_after, carrier_enabled_before) AS enabled,
             coalesce(hosting_region_after, hosting_region_before) AS hosting
      FROM region_history ORDER BY region_id, changed_at DESC) AS l,
     (SELECT region_id, min(changed_at) AS first_at
      FROM region_history GROUP BY region_id) AS f
WHERE l.region_id = r.id AND f.region_id = r.id
"""

# The rule of docs/contract.md §3 the generator must keep: befores equal the previous afters.
INCONSISTENT = """
SELECT count(*) FROM (
    SELECT carrier_enabled_before AS cb, hosting_region_before AS hb,
           lag(carrier_enabled_after) OVER w AS ca, lag(hosting_region_after) OVER w AS ha
    FROM region_history WINDOW w AS (PARTITION BY region_id ORDER BY changed_at, id)
) AS x
WHERE cb IS DISTINCT FROM ca OR hb IS DISTINCT FROM ha
"""

VIEW_READS = {
    "region_changes: newest 50": "SELECT * FROM region_changes LIMIT 50",
    "region_changes: one region": (
        "SELECT * FROM region_changes WHERE region_id = :region_id ORDER BY changed_at DESC"
    ),
    "region_status_intervals: one region": (
        "SELECT * FROM region_status_intervals WHERE region_id = :region_id ORDER BY valid_from"
    ),
    "region_status_intervals: all": "SELECT count(*) FROM region_status_intervals",
    "region_status_daily: one region": (
        "SELECT * FROM region_status_daily WHERE region_id = :region_id ORDER BY day"
    ),
    "region_status_daily: per day, last 90 days": (
        "SELECT day, hosting_region, count(*) FILTER (WHERE carrier_enabled)"
        " FROM region_status_daily"
        " WHERE present AND day >= (now() AT TIME ZONE 'UTC')::date - 90 GROUP BY 1, 2"
    ),
    "region_status_daily: per day, whole history": (
        "SELECT day, count(*) FILTER (WHERE carrier_enabled), count(*) FILTER (WHERE present)"
        " FROM region_status_daily GROUP BY 1"
    ),
    "active_regions: all": "SELECT * FROM active_regions",
    "sync_health": "SELECT * FROM sync_health",
}


def explain(engine: sa.Engine, sql: str, params: dict[str, object]) -> list[str]:
    statement = sa.text("EXPLAIN (ANALYZE, BUFFERS) " + sql.strip().rstrip(";"))
    used = {k: v for k, v in params.items() if f":{k}" in sql}
    with engine.connect() as c:
        c.execute(statement, used).all()  # warm up
        return [row[0] for row in c.execute(statement, used)]


def report(label: str, plan: list[str], whole: bool) -> None:
    total = next(line for line in plan if line.startswith("Execution Time"))
    buffers = next((line.strip() for line in plan if "Buffers:" in line), "")
    print(f"{label:<48} {total.split(': ')[1]:>12}   {buffers}")
    shown = plan if whole else [line for line in plan if "Scan" in line][:4]
    for line in shown:
        print(f"    {line.strip()[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--regions", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=100, help="history rows per region")
    parser.add_argument("--plans", action="store_true", help="print whole plans")
    args = parser.parse_args()
    if not 1 <= args.changes <= RUNS // 3:
        parser.error(f"--changes must be between 1 and {RUNS // 3}")
    url = create_pg_database()
    engine = store.create_engine(settings_for(url))
    try:
        migrate(engine)
        started = time.perf_counter()
        sizes = {"regions": args.regions, "changes": args.changes, "runs": RUNS}
        with engine.begin() as c:
            for statement in FILL.split(";\n\n"):
                c.execute(sa.text(statement), sizes)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("VACUUM ANALYZE")  # what autovacuum does to a real history
            rows = c.exec_driver_sql("SELECT count(*) FROM region_history").scalar_one()
            bad = c.exec_driver_sql(INCONSISTENT).scalar_one()
        print(f"seeded {rows} history rows in {time.perf_counter() - started:.1f} s", end="")
        print(f" ({bad} inconsistent)")
        params: dict[str, object] = {
            "region_id": "r000042",
            "as_of": datetime.now(UTC) - timedelta(days=100),
        }
        for entry in sorted(files("regionsync.store.queries").iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".sql"):
                report(entry.name, explain(engine, entry.read_text(), params), args.plans)
        for label, sql in VIEW_READS.items():
            report(label, explain(engine, sql, params), args.plans)
    finally:
        engine.dispose()
        drop_pg_database(url)


if __name__ == "__main__":
    main()
