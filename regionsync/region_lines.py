"""A run's per-region log lines, capped, then summarised in one line.

A terminal or a log pipeline does not want one line per region of a 100,000-region load,
nor one per junk record: the first ``limit`` lines of a run (changes, rejects, duplicates
together) are written, the rest are counted in one ``sync.lines_capped`` line that says
where to read them (``region_history`` for the run's changes).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog

DEFAULT_LIMIT = 100


class RegionLines:
    """At most ``limit`` per-region lines through ``log``; the rest are only counted."""

    def __init__(self, log: structlog.typing.FilteringBoundLogger, limit: int) -> None:
        self.log = log
        self.limit = max(0, limit)
        self.written = 0
        self.omitted: Counter[str] = Counter()

    @property
    def remaining(self) -> int:
        return self.limit - self.written

    def info(self, event: str, **fields: Any) -> None:
        if self._take(event):
            self.log.info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        if self._take(event):
            self.log.warning(event, **fields)

    def omit(self, event: str, count: int) -> None:
        """Count lines that were never built (their rows were not read back)."""
        if count > 0:
            self.omitted[event] += count

    def _take(self, event: str) -> bool:
        if self.written < self.limit:
            self.written += 1
            return True
        self.omitted[event] += 1
        return False

    def summarise(self, rest: str) -> None:
        """One line with what was left out, if anything was; ``rest`` says where it is."""
        if not self.omitted:
            return
        self.log.info(
            "sync.lines_capped",
            limit=self.limit,
            omitted=sum(self.omitted.values()),
            omitted_by_event=dict(sorted(self.omitted.items())),
            rest=rest,
            setting="REGIONSYNC_LOG_REGION_LINES",
        )
