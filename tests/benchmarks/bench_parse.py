"""Benchmark: how long turning a body into records takes, and its peak memory. Asserts nothing.

    python -m tests.benchmarks.bench_parse [--regions 100000] [--junk 5000000] [--code DIR]

Writes a synthetic success body of N regions (UUID ids, the sample's field sizes) and a
~10 MB body of junk records to a temporary directory, then times ``load_file`` on each in a
fresh Python process (so peak RSS is that process's own): the seconds (and CPU seconds, the
steadier figure on a shared machine), the RSS before the parse and the peak during it.
``--code DIR`` imports ``regionsync`` from another checkout, to compare with an older one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

CHILD = """
import json, os, sys, time
from pathlib import Path

def status_mib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0

code = os.environ.get("BENCH_CODE")
if code:
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, code)

from regionsync.errors import SourceError
from regionsync.source.saved import load_file

before = status_mib("VmRSS")
started, cpu = time.perf_counter(), time.process_time()
try:
    snapshot = load_file(Path(sys.argv[1]), max_bytes=200 * 1024 * 1024)
    outcome = f"{len(snapshot.records)} records, {snapshot.fetched} fetched"
except SourceError as error:
    outcome = "failed: " + str(error)[:100]
elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
peak = status_mib("VmHWM")
print(json.dumps({"seconds": elapsed, "cpu": cpu, "rss_before_mib": before, "peak_mib": peak,
                  "outcome": outcome}))
"""

HOSTING = ["NORTH_AMERICA", "EUROPE", "ASIA_PACIFIC", "HOSTING_REGION_US"]


def regions_body(n: int) -> bytes:
    rng = random.Random(7)  # noqa: S311 - reproducible test data, not a secret
    data = [
        {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "region_name": f"/v1/regions/carrier-{i}-{rng.randrange(10**6)}",
            "display_name": f"Country {i % 250}: Carrier {i}",
            "management_type": "GOOGLE_MANAGED",
            "managment_type_value": 2,
            "carrier_enabled": i % 3 != 0,
            "hosting_region": HOSTING[i % len(HOSTING)],
        }
        for i in range(n)
    ]
    body = {"code": "RCS902", "message": "Regions fetched successfully", "data": data}
    return json.dumps(body).encode()


def junk_body(n: int) -> bytes:
    return b'{"code": "RCS902", "data": [' + b",".join([b"0"] * n) + b"]}"


def measure(path: Path, code: str | None) -> dict[str, object]:
    env = dict(os.environ)
    if code:
        env["BENCH_CODE"] = code
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--regions", type=int, default=100_000)
    parser.add_argument("--junk", type=int, default=5_000_000)
    parser.add_argument("--code", help="a checkout whose regionsync to measure instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            (f"{args.regions} regions", regions_body(args.regions)),
            (f"{args.junk} junk records", junk_body(args.junk)),
        ]
        for label, content in cases:  # the bodies as the fake server sends them
            path = Path(tmp) / "body.json"
            path.write_bytes(content)
            result = measure(path, args.code)
            print(
                f"{label:<24} {len(content) / 2**20:6.1f} MiB body  "
                f"{result['seconds']:6.2f} s ({result['cpu']:.2f} s CPU)  "
                f"RSS {result['rss_before_mib']:.0f} -> "
                f"peak {result['peak_mib']:.0f} MiB  ({result['outcome']})"
            )


if __name__ == "__main__":
    main()
