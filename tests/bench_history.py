"""Benchmark: the example queries and views on a large history. Prints plans and timings.

    python -m tests.bench_history [--regions 10000] [--changes 100]

Builds a throwaway PostgreSQL database with ``regions`` x ``changes`` history rows (default
one million) spread over a year, then runs EXPLAIN ANALYZE on every example query.
"""

from __future__ import annotations

import argparse
import time
from importlib.resources import files

import sqlalchemy as sa

from regionsync import store
from regionsync.schema import migrate
from tests.support import create_pg_database, drop_pg_database, settings_for

FILL = """
INSERT INTO sync_runs (id, started_at, finished_at, status, trigger, source,
                       fetched, added, changed, unchanged, removed, restored, rejected)
SELECT n, now() - interval '365 days' + n * interval '1 hour' * 8760 / (:changes * 80 + 1),
       now() - interval '365 days' + n * interval '1 hour' * 8760 / (:changes * 80 + 1)
             + interval '5 seconds',
       CASE WHEN n % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 'daemon', 'bench',
       0, 0, 0, 0, 0, 0, 0
FROM generate_series(1, :changes * 80) AS n;

INSERT INTO regions (id, region_name, display_name, management_type, management_type_value,
                     carrier_enabled, hosting_region, raw, first_seen_at, updated_at, removed_at)
SELECT 'r' || lpad(i::text, 6, '0'), '/v1/regions/r' || i, 'Region ' || i, 'GOOGLE_MANAGED', 2,
       (i % 4 <> 0), CASE WHEN i % 3 = 0 THEN 'EUROPE' ELSE 'NORTH_AMERICA' END,
       jsonb_build_object('id', 'r' || i), now() - interval '365 days', now(),
       CASE WHEN i % 20 = 0 THEN now() - interval '3 days' END
FROM generate_series(1, :regions) AS i;

INSERT INTO region_history (region_id, sync_run_id, changed_at, change,
                            carrier_enabled_before, carrier_enabled_after,
                            hosting_region_before, hosting_region_after)
SELECT 'r' || lpad(i::text, 6, '0'), 1 + (k * 80) + (i % 79),
       now() - interval '365 days'
             + (1 + (k * 80) + (i % 79)) * interval '1 hour' * 8760 / (:changes * 80 + 1),
       CASE WHEN k = 0 THEN 'added' ELSE 'changed' END,
       CASE WHEN k = 0 THEN NULL ELSE (k % 2 = 0) END, (k % 2 = 1) = false,
       CASE WHEN k = 0 THEN NULL ELSE
            CASE WHEN i % 3 = 0 THEN 'EUROPE' ELSE 'NORTH_AMERICA' END END,
       CASE WHEN i % 3 = 0 THEN 'EUROPE' ELSE 'NORTH_AMERICA' END
FROM generate_series(1, :regions) AS i, generate_series(0, :changes - 1) AS k;
ANALYZE;
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--regions", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--plans", action="store_true", help="print whole plans")
    args = parser.parse_args()
    url = create_pg_database()
    engine = store.create_engine(settings_for(url))
    try:
        migrate(engine)
        started = time.perf_counter()
        with engine.begin() as c:
            for statement in FILL.split(";\n"):
                if statement.strip():
                    c.execute(
                        sa.text(statement), {"regions": args.regions, "changes": args.changes}
                    )
            rows = c.execute(sa.text("SELECT count(*) FROM region_history")).scalar_one()
        print(f"seeded {rows} history rows in {time.perf_counter() - started:.1f} s")
        for entry in sorted(files("regionsync.queries").iterdir(), key=lambda p: p.name):
            if not entry.name.endswith(".sql"):
                continue
            sql = entry.read_text()
            with engine.connect() as c:
                plan = [
                    r[0]
                    for r in c.execute(
                        sa.text("EXPLAIN (ANALYZE, BUFFERS) " + sql.rstrip().rstrip(";")),
                        {"region_id": "r000042"},
                    )
                ]
            total = next(line for line in plan if line.startswith("Execution Time"))
            print(f"{entry.name:<44} {total}")
            shown = plan if args.plans else [line for line in plan if "Scan" in line][:4]
            for line in shown:
                print(f"    {line.strip()[:140]}")
    finally:
        engine.dispose()
        drop_pg_database(url)


if __name__ == "__main__":
    main()
