"""What the daemon reports beyond run outcomes: ticks it skipped, and a stuck sync lock.

A tick that finds the previous sync still running (APScheduler's ``max_instances``) or the
lock held by someone else syncs nothing; left unreported, a hung sync or a session squatting
on the lock looks healthy from outside until the data goes stale. These are added to
``/metrics`` (in the daemon's registry) and to the ``/healthz`` body. See docs/operations.md,
*Health and metrics*.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any, Literal

from prometheus_client import Counter, Gauge

from regionsync.daemon.metrics import DaemonMetrics
from regionsync.store.lock import STUCK_AFTER, LockHolder

SkipReason = Literal["still_running", "lock_held"]
SKIP_REASONS: tuple[SkipReason, ...] = ("still_running", "lock_held")


class DaemonHealth:
    """Skipped ticks, the sync in progress and the lock holder; thread-safe."""

    def __init__(self, metrics: DaemonMetrics, *, stuck_after: timedelta = STUCK_AFTER) -> None:
        self.metrics = metrics
        self.stuck_after = stuck_after
        self._lock = threading.Lock()
        self._skipped = dict.fromkeys(SKIP_REASONS, 0)
        self._running_since: float | None = None
        self._holder: LockHolder | None = None
        self._held_for = timedelta(0)
        self._first_seen: tuple[tuple[int, object], float] | None = None
        self._ticks = Counter(
            "regionsync_ticks_skipped",
            "Scheduled ticks that started no sync: the previous one was still running in "
            "this daemon (still_running) or another session held the lock (lock_held).",
            ["reason"],
            registry=metrics.registry,
        )
        for reason in SKIP_REASONS:
            self._ticks.labels(reason=reason)
        self._stuck = Gauge(
            "regionsync_lock_stuck",
            "1 while the sync lock has been held longer than a run can take, or its holder "
            "has waited for another lock longer than a run ever waits, else 0.",
            registry=metrics.registry,
        )
        self._held = Gauge(
            "regionsync_lock_held_seconds",
            "How long the sync lock has been held at least, when last checked (0: free).",
            registry=metrics.registry,
        )

    def sync_started(self) -> None:
        with self._lock:
            self._running_since = time.monotonic()

    def sync_finished(self) -> None:
        with self._lock:
            self._running_since = None

    def running_for(self) -> float | None:
        """Seconds the sync in progress has been running, or None."""
        with self._lock:
            since = self._running_since
        return None if since is None else time.monotonic() - since

    def tick_skipped(self, reason: SkipReason) -> int:
        """Count one skipped tick; returns how many were skipped for this reason."""
        with self._lock:
            self._skipped[reason] += 1
            total = self._skipped[reason]
        self._ticks.labels(reason=reason).inc()
        return total

    def record_lock(self, holder: LockHolder | None) -> None:
        """Take the holder seen now; a holder seen before keeps the time it was first seen."""
        now = time.monotonic()
        with self._lock:
            self._holder = holder
            if holder is None:
                self._first_seen, self._held_for = None, timedelta(0)
            else:
                key = (holder.pid, holder.backend_start)
                if self._first_seen is None or self._first_seen[0] != key:
                    self._first_seen = (key, now)
                seen_for = timedelta(seconds=now - self._first_seen[1])
                self._held_for = max(holder.held_at_least, seen_for)
            held = self._held_for
            stuck = holder is not None and (held > self.stuck_after or holder.waits_too_long())
        self._held.set(held.total_seconds())
        self._stuck.set(1 if stuck else 0)

    def lock_report(self) -> dict[str, Any] | None:
        with self._lock:
            holder, held = self._holder, self._held_for
        if holder is None:
            return None
        report = holder.as_json(self.stuck_after)
        report["held_at_least_seconds"] = round(held.total_seconds(), 3)
        report["stuck"] = held > self.stuck_after or holder.waits_too_long()
        return report

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``: freshness decides the status; the rest is there to explain it."""
        fresh, body = self.metrics.health()
        running = self.running_for()
        with self._lock:
            skipped = dict(self._skipped)
        body["sync_running_for_seconds"] = None if running is None else round(running, 3)
        body["ticks_skipped"] = skipped
        body["lock"] = self.lock_report()
        return fresh, body


__all__ = ["SKIP_REASONS", "DaemonHealth", "SkipReason"]
