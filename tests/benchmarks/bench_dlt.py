"""The peer for the benchmark: one dlt run, the fake server's regions merged with ``scd2``.

    python tests/benchmarks/bench_dlt.py REGIONS_URL DATABASE_URL DATASET PIPELINES_DIR

The API key comes from BENCH_API_KEY. It does what a dlt user would write for this API:
fetch the whole list, hand it to a resource with the ``scd2`` merge strategy (rows absent
from a load are retired, changed rows get a new version), load into PostgreSQL with dlt's
defaults. Started by ``python -m tests.benchmarks.bench_sync`` as a complete process, like
regionsync.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    regions_url, database_url, dataset, pipelines_dir = argv
    # Offline and quiet: no telemetry, no progress bars.
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    # dlt insists on a password; under trust authentication (the tests' default) any will do.
    os.environ.setdefault("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", "unused")

    import dlt
    import requests

    response = requests.get(
        regions_url, headers={"api-key": os.environ["BENCH_API_KEY"]}, timeout=(5, 300)
    )
    response.raise_for_status()
    regions = response.json()["data"]

    @dlt.resource(name="regions", write_disposition={"disposition": "merge", "strategy": "scd2"})
    def source() -> object:
        yield regions

    pipeline = dlt.pipeline(
        pipeline_name="regionsync_bench",
        destination=dlt.destinations.postgres(credentials=database_url),
        dataset_name=dataset,
        pipelines_dir=pipelines_dir,
    )
    info = pipeline.run(source())
    info.raise_on_failed_jobs()
    print(f"dlt loaded {len(regions)} regions into {dataset}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
