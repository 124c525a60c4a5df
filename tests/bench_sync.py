"""Benchmark: how long a sync takes at 100,000 regions. Prints figures; asserts nothing.

    python -m tests.bench_sync [--regions 100000] [--sqlite]

Uses a throwaway PostgreSQL database (REGIONSYNC_TEST_DATABASE_URL, as the tests do) or a
temporary SQLite file, and measures: the first sync (all added), an unchanged sync, a sync
with 1 % tracked changes and 1 % removals.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import structlog
from sqlalchemy.engine import URL

from regionsync import store
from regionsync.schema import migrate
from regionsync.sync import Guard, run_sync
from tests.sources import ListSource, region
from tests.support import create_pg_database, drop_pg_database, settings_for


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--regions", type=int, default=100_000)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    tmp = tempfile.TemporaryDirectory()
    url = (
        URL.create("sqlite", database=str(Path(tmp.name) / "bench.db"))
        if args.sqlite
        else create_pg_database()
    )
    engine = store.create_engine(settings_for(url))
    try:
        migrate(engine)
        n = args.regions
        source = ListSource([region(f"r{i:06d}", enabled=i % 3 != 0) for i in range(n)])
        guard = Guard(1.0)
        steps = [
            ("first sync (all added)", source.data),
            ("unchanged", source.data),
            (
                "1% flipped, 1% removed",
                [
                    region(f"r{i:06d}", enabled=(i % 3 != 0) ^ (i % 100 == 0))
                    for i in range(n)
                    if i % 100 != 1
                ],
            ),
        ]
        print(f"{engine.dialect.name}, {n} regions")
        for label, data in steps:
            source.data = data
            started = time.perf_counter()
            result = run_sync(engine, source, guard=guard)
            elapsed = time.perf_counter() - started
            c = result.counts
            print(
                f"  {label:<24} {elapsed:7.2f} s  added {c.added} changed {c.changed} "
                f"removed {c.removed} unchanged {c.unchanged}"
            )
    finally:
        engine.dispose()
        if not args.sqlite:
            drop_pg_database(url)
        tmp.cleanup()


if __name__ == "__main__":
    main()
