"""``python -m tests.support.budgeted [--peak-file PATH] SECONDS COMMAND...``: the regionsync
CLI with a short fetch budget.

The fetch budget is 90 s in production; tests that watch a real ``regionsync`` process outlast
a hostile server need it in seconds, with long per-read timeouts so only the budget can end it.
``--peak-file`` writes the process's peak resident memory (``VmHWM``, in KiB) there at exit:
``wait4``'s ``ru_maxrss`` is no use, since Linux carries the parent's peak over ``exec``.
"""

from __future__ import annotations

import atexit
import sys
from pathlib import Path

from regionsync import cli
from regionsync.source import kaleyra


def _write_peak(path: Path) -> None:
    status = Path("/proc/self/status").read_text()
    peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    path.write_text(peak)


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--peak-file"]:
        atexit.register(_write_peak, Path(args[1]))
        args = args[2:]
    kaleyra.DEFAULT_RETRY = kaleyra.RetryPolicy(
        attempts=3,
        total_seconds=float(args[0]),
        backoff_initial=0.01,
        backoff_max=0.05,
        connect_timeout=30,
        read_timeout=30,
    )
    return cli.main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
