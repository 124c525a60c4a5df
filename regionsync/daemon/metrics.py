"""The daemon's ``/healthz`` and ``/metrics``, served from a thread on ``REGIONSYNC_METRICS_PORT``.

Health is data freshness: ``/healthz`` answers 200 while the last successful sync recorded
in the database (by any process, so a replica that only records ``skipped`` stays healthy)
is younger than the limit the daemon sets from its schedule, and 503 otherwise, both with a
JSON body. The server binds ``REGIONSYNC_METRICS_HOST`` (loopback by default; a container sets
``0.0.0.0`` so its port can be published or probed), serves nothing but these two read-only
pages, and bounds its connections (see :mod:`regionsync.httpserver`) so that no client can
starve the daemon.

The metrics are made to alert on (see docs/operations.md, *Health and metrics*, and
``docker/prometheus/alerts.yml``): the consecutive failures are the database's count, so a
crash-looping daemon still reaches a threshold; failures carry a bounded ``reason``; the
durations of failed and successful runs are apart; ``process_*`` shows restarts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal, Protocol, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from regionsync import __version__
from regionsync.errors import (
    ConfigError,
    GuardError,
    PermanentSourceError,
    SchemaError,
    StoreError,
    TransientSourceError,
)
from regionsync.httpserver import BoundedHTTPServer, ServerThread
from regionsync.notify.outbox import Backlog
from regionsync.settings import LOOPBACK
from regionsync.status import Freshness, StatusReport
from regionsync.store.runs import Counts
from regionsync.store.tables import HistoryChange, RunOutcome

RUN_OUTCOMES: tuple[RunOutcome, ...] = get_args(RunOutcome)
#: The ``reason`` of a failed run: the error's class, never its message, so the label stays
#: bounded. ``auth``: 401/403; ``channel_disabled``: RCS601 / RCS_CHANNEL_DISABLED;
#: ``rejected``: any other permanent refusal or unusable answer (404, RCS405, a bad body);
#: ``timeout`` and ``transient``: retries spent; ``guard``: a safety guard stopped the apply;
#: ``database``: the database failed or is not migrated; ``internal``: a bug.
FailureReason = Literal[
    "auth", "channel_disabled", "rejected", "timeout", "transient", "guard", "database", "internal"
]
FAILURE_REASONS: tuple[FailureReason, ...] = get_args(FailureReason)
#: The region changes counted per kind, as :class:`~regionsync.store.runs.Counts` counts them
#: (``changed`` includes the untracked-field updates).
CHANGE_KINDS: tuple[HistoryChange, ...] = get_args(HistoryChange)
CHANNEL_DISABLED_CODES = frozenset({"RCS601", "RCS_CHANNEL_DISABLED"})
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Clock = Callable[[], datetime]
Health = Callable[[], tuple[bool, dict[str, Any]]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def failure_reason(error: BaseException) -> FailureReason:
    """The ``reason`` label of a failed run: one of :data:`FAILURE_REASONS`."""
    if isinstance(error, GuardError):
        return "guard"
    if isinstance(error, StoreError | SchemaError):
        return "database"
    if isinstance(error, TransientSourceError):
        return "timeout" if error.code == "timeout" else "transient"
    if isinstance(error, PermanentSourceError):
        if error.code in CHANNEL_DISABLED_CODES:
            return "channel_disabled"
        return "auth" if error.status in (401, 403) else "rejected"
    return "internal"


@dataclass(frozen=True)
class Metric:
    """One metric as declared: the attribute that holds it, its type, name and help, and its
    one label, if any, with the values exported from the start (at 0, so that a rate or an
    alert sees the first increment)."""

    attribute: str
    kind: type[Counter | Gauge | Histogram]
    name: str
    help: str
    label: str | None = None
    values: tuple[str, ...] = ()

    def register(self, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
        labels = () if self.label is None else (self.label,)
        options: dict[str, Any] = {"buckets": DURATION_BUCKETS} if self.kind is Histogram else {}
        metric = self.kind(self.name, self.help, labels, registry=registry, **options)
        for value in self.values:
            metric.labels(value)
        return metric


#: What a process that syncs (the daemon, a fleet worker) counts of its own syncs, in the
#: order ``/metrics`` lists them (after ``process_*`` and ``regionsync_build_info``). No label
#: names an account: at thousands of accounts that would be thousands of series per metric.
RUN_METRICS = (
    Metric(
        "_runs",
        Counter,
        "regionsync_sync_runs",
        "Sync attempts by this process, by how they ended (failed includes attempts the "
        "database was too far gone to record).",
        "status",
        RUN_OUTCOMES,
    ),
    Metric(
        "_failures",
        Counter,
        "regionsync_sync_failures",
        "Failed sync attempts by this process, by the class of error (not its message).",
        "reason",
        FAILURE_REASONS,
    ),
    Metric(
        "_duration",
        Histogram,
        "regionsync_sync_duration_seconds",
        "How long this process's syncs took, fetch and apply, by outcome.",
        "status",
        ("succeeded", "failed"),
    ),
    Metric(
        "_rejected",
        Counter,
        "regionsync_records_rejected",
        "Records the API sent that were rejected (invalid, oversized) by this process's "
        "successful syncs.",
    ),
    Metric(
        "_changes",
        Counter,
        "regionsync_region_changes",
        "Region changes applied by this process's syncs, by kind.",
        "change",
        CHANGE_KINDS,
    ),
)
#: What only a daemon knows, listed after :data:`RUN_METRICS`.
DAEMON_METRICS = (
    Metric(
        "_last_attempt",
        Gauge,
        "regionsync_last_attempt_timestamp_seconds",
        "When this daemon's last sync attempt (any outcome) ended, as a Unix time; "
        "0 before the first.",
    ),
    Metric(
        "_in_progress",
        Gauge,
        "regionsync_sync_started_timestamp_seconds",
        "When the sync now in progress started, as a Unix time; 0 while none runs.",
    ),
    Metric(
        "_last_success",
        Gauge,
        "regionsync_last_success_timestamp_seconds",
        "When the last successful sync (by any process) finished, as a Unix time; "
        "0 when there has been none.",
    ),
    Metric(
        "_regions",
        Gauge,
        "regionsync_regions",
        "Regions in the database: active, or removed (absent from the API).",
        "state",
    ),
    Metric(
        "_enabled",
        Gauge,
        "regionsync_regions_enabled",
        "Active regions whose carrier is enabled.",
    ),
    Metric(
        "_consecutive_failures",
        Gauge,
        "regionsync_consecutive_failures",
        "Failed syncs (by any process) since the last success, as the database records "
        "them, plus this daemon's failures the database has not answered for since.",
    ),
    Metric(
        "_max_age",
        Gauge,
        "regionsync_health_max_age_seconds",
        "/healthz answers 503 when the last success is older than this.",
    ),
    Metric(
        "_period",
        Gauge,
        "regionsync_schedule_period_seconds",
        "The schedule's period (an interval, or a crontab's longest gap between runs); "
        "alerts on staleness count in these.",
    ),
)


def process_registry() -> CollectorRegistry:
    """A registry with ``process_*`` and ``regionsync_build_info``, the first metrics of
    every regionsync process's ``/metrics``."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # ``*_created``: clutter
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    Info(
        "regionsync_build",
        "The regionsync version this process runs.",
        registry=registry,
    ).info({"version": __version__})
    return registry


class RunMetrics:
    """:data:`RUN_METRICS`: a process's own sync attempts. Not locked: the owner records and
    renders under a lock of its own, so that a run's counter and histogram agree."""

    # Set from RUN_METRICS.
    _runs: Counter
    _failures: Counter
    _duration: Histogram
    _rejected: Counter
    _changes: Counter

    def __init__(self, registry: CollectorRegistry) -> None:
        for metric in RUN_METRICS:
            setattr(self, metric.attribute, metric.register(registry))

    def record(
        self,
        status: RunOutcome,
        duration: float | None,
        *,
        reason: FailureReason = "internal",
        counts: Counts | None = None,
    ) -> None:
        """Count one attempt; ``duration`` is None for a skipped one (nothing was synced);
        ``reason`` labels a failure; ``counts``: a finished run's rejected records and
        changes."""
        self._runs.labels(status=status).inc()
        if duration is not None:
            self._duration.labels(status=status).observe(duration)
        if status == "failed":
            self._failures.labels(reason=reason).inc()
        if counts is not None:
            self._rejected.inc(counts.rejected)
            for kind in CHANGE_KINDS:
                self._changes.labels(change=kind).inc(getattr(counts, kind))


class DaemonMetrics:
    """What one daemon process knows about its syncs, as Prometheus metrics and health.

    Thread-safe: the scheduler's worker records, the HTTP server's threads read.
    """

    # Set from DAEMON_METRICS.
    _last_attempt: Gauge
    _in_progress: Gauge
    _last_success: Gauge
    _regions: Gauge
    _enabled: Gauge
    _consecutive_failures: Gauge
    _max_age: Gauge
    _period: Gauge

    def __init__(
        self, *, max_age: timedelta, period: timedelta | None = None, clock: Clock = _utcnow
    ) -> None:
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._last_success_at: datetime | None = None
        self._recorded_failures = 0  # the database's count, as of the last status refresh
        self._failures_since = 0  # this daemon's failures since that refresh
        self._report: StatusReport | None = None
        self.registry = process_registry()
        self.runs = RunMetrics(self.registry)
        for metric in DAEMON_METRICS:
            setattr(self, metric.attribute, metric.register(self.registry))
        self._max_age.set(max_age.total_seconds())
        self._period.set((period or max_age).total_seconds())
        self.notifications = NotificationMetrics(self.registry, clock)

    def sync_started(self) -> None:
        """A sync begins: a hung one then shows as an old start, not only as staleness."""
        with self._lock:
            self._in_progress.set(self._clock().timestamp())

    def record_run(
        self,
        status: RunOutcome,
        duration: float | None,
        *,
        reason: FailureReason = "internal",
        counts: Counts | None = None,
    ) -> None:
        """Count one attempt; ``duration`` is None for a skipped one (nothing was synced).

        ``reason`` (one of :data:`FAILURE_REASONS`) labels a failure; ``counts`` are a
        finished run's rejected records and changes.
        """
        with self._lock:
            self.runs.record(status, duration, reason=reason, counts=counts)
            if status == "succeeded":
                self._recorded_failures = self._failures_since = 0
            elif status == "failed":
                self._failures_since += 1
            self._consecutive_failures.set(self._recorded_failures + self._failures_since)
            self._in_progress.set(0)
            self._last_attempt.set(self._clock().timestamp())

    def record_status(self, report: StatusReport) -> None:
        """Take region counts, the last success and the failure count from the database."""
        with self._lock:
            self._report = report
            self._last_success_at = report.last_success_at
            if report.last_success_at is not None:
                self._last_success.set(report.last_success_at.timestamp())
            self._regions.labels(state="active").set(report.active_regions)
            self._regions.labels(state="removed").set(report.removed_regions)
            self._enabled.set(report.enabled_regions)
            self._recorded_failures, self._failures_since = report.consecutive_failures, 0
            self._consecutive_failures.set(self._recorded_failures)
        self.notifications.record_backlog(report.deliveries)

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._recorded_failures + self._failures_since

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the data is fresh, and the JSON body ``/healthz`` answers with.

        The database's facts carry the names of the ``sync_health`` view and of
        ``regionsync status --json``, as of the last time the database answered (plus, for
        ``consecutive_failures``, this daemon's failures since then).
        """
        now = self._clock()
        with self._lock:
            last, report = self._last_success_at, self._report
            failures = self._recorded_failures + self._failures_since
        freshness = Freshness(last, now)
        fresh = freshness.is_fresh(self.max_age)
        body = {
            "status": "ok" if fresh else "stale",
            **freshness.as_json(),
            "max_age_seconds": self.max_age.total_seconds(),
            "consecutive_failures": failures,
            "active_regions": report.active_regions if report else None,
            "removed_regions": report.removed_regions if report else None,
            "checked_at": now.isoformat(),
            **self.notifications.health(now),
        }
        return fresh, body

    def exposition(self) -> bytes:
        """The Prometheus text; under the lock, so a run's counter and histogram agree."""
        with self._lock:
            return bytes(generate_latest(self.registry))


class Exposed(Protocol):
    """What a :class:`MetricsServer` serves: the daemon's metrics, or a fleet worker's."""

    def exposition(self) -> bytes: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...


class _Server(BoundedHTTPServer):
    metrics: Exposed
    health: Health


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "regionsync"
    sys_version = ""
    head_only = False

    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds would drown the sync's own lines."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            fresh, body = self.server.health()
            self._send(200 if fresh else 503, json.dumps(body).encode(), "application/json")
        elif path == "/metrics":
            self._send(200, self.server.metrics.exposition(), CONTENT_TYPE_LATEST)
        else:
            self._send(404, b'{"error": "see /healthz and /metrics"}', "application/json")

    def do_HEAD(self) -> None:
        """What GET answers, headers only: probes and scrapers that only check the status."""
        self.head_only = True
        try:
            self.do_GET()
        finally:
            self.head_only = False

    def _send(self, status: int, content: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not self.head_only:
            self.wfile.write(content)


class MetricsServer:
    """``/healthz`` and ``/metrics`` over HTTP, from a daemon thread, on bounded connections.

    ``health`` answers ``/healthz`` (default: ``metrics.health``), so the daemon can add
    what it knows beyond run outcomes.
    """

    def __init__(
        self,
        metrics: Exposed,
        port: int,
        host: str = LOOPBACK,
        *,
        health: Health | None = None,
        max_connections: int = 16,
        idle_timeout: float = 5.0,
        lifetime: float = 10.0,
    ) -> None:
        server = _Server(
            (host, port),
            _Handler,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            lifetime=lifetime,
        )
        server.metrics = metrics
        server.health = health or metrics.health
        self._serving = ServerThread(server, name="regionsync-metrics")

    @property
    def port(self) -> int:
        return self._serving.port

    def start(self) -> MetricsServer:
        self._serving.start()
        return self

    def stop(self) -> None:
        self._serving.stop()


def serve_metrics(
    metrics: Exposed, host: str, port: int | None, *, health: Health | None = None
) -> MetricsServer | None:
    """Start serving on ``REGIONSYNC_METRICS_PORT``, if it is set; a port that cannot be
    bound is a :class:`ConfigError` (exit 2) naming the setting."""
    if port is None:
        return None
    try:
        return MetricsServer(metrics, port, host, health=health).start()
    except OSError as error:
        raise ConfigError(
            "REGIONSYNC_METRICS_PORT",
            f"cannot listen on {host} port {port}: {error.strerror or error}",
        ) from None


# Notifications (see docs/notifications.md) -----------------------------------------------

DELIVERY_OUTCOMES = ("delivered", "retried", "failed")
#: Webhook deliveries, listed after :data:`DAEMON_METRICS`.
NOTIFICATION_METRICS = (
    Metric(
        "_deliveries",
        Counter,
        "regionsync_notification_deliveries",
        "Webhook delivery attempts by this process, by outcome: delivered, retried (failed, "
        "to be tried again) or failed (given up: refused by the receiver, or too old).",
        "outcome",
        DELIVERY_OUTCOMES,
    ),
    Metric(
        "_pending",
        Gauge,
        "regionsync_notifications_pending",
        "Webhook deliveries written but not yet accepted by the receiver.",
    ),
    Metric(
        "_oldest",
        Gauge,
        "regionsync_notifications_oldest_pending_age_seconds",
        "Age of the oldest pending webhook delivery; 0 when none is pending.",
    ),
)


class NotificationMetrics:
    """Webhook deliveries: this process's attempts by outcome, and the outbox's backlog.

    The backlog comes from the database (read after every run, like the region counts); the
    oldest pending delivery's age is computed at each scrape.
    """

    # Set from NOTIFICATION_METRICS.
    _deliveries: Counter
    _pending: Gauge
    _oldest: Gauge

    def __init__(self, registry: CollectorRegistry, clock: Clock = _utcnow) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._backlog: Backlog | None = None
        for metric in NOTIFICATION_METRICS:
            setattr(self, metric.attribute, metric.register(registry))
        self._pending.set_function(self._pending_count)
        self._oldest.set_function(self._oldest_age)

    def _read(self) -> Backlog | None:
        with self._lock:
            return self._backlog

    def _pending_count(self) -> float:
        backlog = self._read()
        return 0.0 if backlog is None else float(backlog.pending)

    def _oldest_age(self) -> float:
        backlog = self._read()
        age = None if backlog is None else backlog.oldest_pending_age(self._clock())
        return age or 0.0

    def record_pass(self, *, delivered: int, retried: int, failed: int) -> None:
        for outcome, count in (("delivered", delivered), ("retried", retried), ("failed", failed)):
            if count:
                self._deliveries.labels(outcome=outcome).inc(count)

    def record_backlog(self, backlog: Backlog | None) -> None:
        with self._lock:
            self._backlog = backlog

    def health(self, now: datetime) -> dict[str, Any]:
        """The outbox fields of ``/healthz`` (they do not change its status code)."""
        backlog = self._read()
        return {} if backlog is None else backlog.as_json(now)


__all__ = [
    "DaemonMetrics",
    "Exposed",
    "MetricsServer",
    "NotificationMetrics",
    "RunMetrics",
    "process_registry",
    "serve_metrics",
]
