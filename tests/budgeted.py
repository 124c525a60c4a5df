"""``python -m tests.budgeted SECONDS COMMAND...``: the regionsync CLI with a short fetch budget.

The fetch budget is 90 s in production; tests that watch a real ``regionsync`` process outlast
a hostile server need it in seconds, with long per-read timeouts so only the budget can end it.
"""

from __future__ import annotations

import sys

from regionsync import cli, kaleyra


def main() -> int:
    budget = float(sys.argv[1])
    kaleyra.DEFAULT_RETRY = kaleyra.RetryPolicy(
        attempts=3,
        total_seconds=budget,
        backoff_initial=0.01,
        backoff_max=0.05,
        connect_timeout=30,
        read_timeout=30,
    )
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
