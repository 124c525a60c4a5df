"""A fleet worker's ``/healthz`` and ``/metrics`` on ``REGIONSYNC_METRICS_PORT``, served as the
daemon's are (:class:`regionsync.daemon.metrics.MetricsServer`); docs/fleet.md, *Seen from
outside*.

Two kinds of figures:

- **this replica's own**, counted as they happen: its syncs by outcome, failures by reason,
  durations and changes (the daemon's :data:`~regionsync.daemon.metrics.RUN_METRICS`), the
  syncs it runs now, the jobs it dispatched and the stalled jobs it recovered;
- **the fleet's**, the same on every replica, read from the database by a thread every
  :data:`REFRESH_SECONDS` (each statement bounded by :data:`STATEMENT_TIMEOUT_MS`): accounts
  (paused, due, overdue, failing), the oldest overdue account's lag, and the sync jobs
  waiting and running. ``/metrics`` and ``/healthz`` answer from memory and never wait on the
  database; when it does not answer, those figures read NaN and
  ``regionsync_fleet_database_up`` 0.

No label names an account: at 10,000 accounts a per-account label would be 10,000 series per
metric. ``regionsync status`` and the ``sync_health`` view name the accounts.

``/healthz`` answers 200 while the last read of the database answered (within the last
three refreshes) and no unpaused account has been due for longer than
:data:`~regionsync.daemon.loop.HEALTH_PERIODS` periods of its schedule; 503 otherwise, both
with a JSON body. An account that fails (a refused key) is not overdue (its runs start), so
it never turns a replica unhealthy: the fleet is judged by whether it keeps up.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from prometheus_client import Counter, Gauge, generate_latest
from sqlalchemy.engine import Connection, Engine

from regionsync.daemon.loop import HEALTH_PERIODS
from regionsync.daemon.metrics import (
    RUN_OUTCOMES,
    Metric,
    RunMetrics,
    process_registry,
    serve_metrics,
)
from regionsync.errors import RegionSyncError
from regionsync.fleet.app import QUEUE, SYNC_TASK, FleetStats, SyncEnded
from regionsync.fleet.dispatch import timetables
from regionsync.periods import Lateness, Timetables
from regionsync.settings import Settings
from regionsync.store.engine import create_engine, translated_errors

logger = structlog.get_logger("regionsync.fleet.metrics")

#: How often the fleet's figures are read from the database.
REFRESH_SECONDS = 10.0
#: The most any of those reads may take.
STATEMENT_TIMEOUT_MS = 5000
#: What ``/healthz`` says of a failed read: the details (the database's address) are for the
#: log, not for an unauthenticated page.
UNAVAILABLE = "the database did not answer: see the fleet.figures_unavailable log line"
#: ``procrastinate_jobs.status`` values counted: waiting, running.
JOB_STATUSES = ("todo", "doing")

Clock = Callable[[], datetime]

#: Every account, and for the unpaused ones the latest run that was not skipped.
_ACCOUNTS = sa.text(
    """
    SELECT a.name, a.schedule, a.paused_at, a.created_at, last.started_at, last.status
    FROM accounts AS a
    LEFT JOIN LATERAL (
        SELECT s.started_at, s.status FROM sync_runs AS s
        WHERE s.account = a.name AND s.status <> 'skipped'
        ORDER BY s.id DESC LIMIT 1
    ) AS last ON a.paused_at IS NULL
    """
)
#: The implicit account's latest run that was not skipped (an empty accounts table).
_IMPLICIT = sa.text(
    "SELECT started_at, status FROM sync_runs WHERE account = :name AND status <> 'skipped'"
    " ORDER BY id DESC LIMIT 1"
)
_JOBS = sa.text(
    "SELECT status::text, count(*) FROM procrastinate_jobs"
    " WHERE queue_name = :queue AND task_name = :task AND status IN ('todo', 'doing')"
    " GROUP BY status"
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FleetSnapshot:
    """The fleet as the database showed it at ``checked_at`` (definitions:
    :mod:`regionsync.periods`)."""

    checked_at: datetime
    accounts: int = 0
    paused: int = 0
    due: int = 0
    overdue: int = 0
    #: Unpaused accounts whose latest run (skipped ones aside) failed.
    failing: int = 0
    #: Unpaused accounts due for longer than HEALTH_PERIODS periods: /healthz turns 503.
    behind: int = 0
    #: The overdue account due the longest, and how late it is.
    oldest_overdue: tuple[str, Lateness] | None = None
    jobs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(JOB_STATUSES, 0))

    @property
    def oldest_overdue_seconds(self) -> float:
        return (
            0.0 if self.oldest_overdue is None else self.oldest_overdue[1].due_for.total_seconds()
        )

    def as_json(self) -> dict[str, Any]:
        oldest = None
        if self.oldest_overdue is not None:
            name, late = self.oldest_overdue
            oldest = {"account": name, **late.as_json()}
        return {
            "accounts": self.accounts,
            "paused": self.paused,
            "due": self.due,
            "overdue": self.overdue,
            "failing": self.failing,
            "behind": self.behind,
            "oldest_overdue": oldest,
            "jobs": dict(self.jobs),
        }


def read_fleet(
    connection: Connection, schedules: Timetables, implicit_account: str, now: datetime
) -> FleetSnapshot:
    """Count the accounts by how late they are, and the sync jobs by status."""
    rows: Sequence[Any] = connection.execute(_ACCOUNTS).all()
    if not rows:
        last = connection.execute(_IMPLICIT, {"name": implicit_account}).first()
        rows = [(implicit_account, None, None, None, *(last or (None, None)))]
    paused = due = overdue = failing = behind = 0
    oldest: tuple[str, Lateness] | None = None
    for name, expression, paused_at, created_at, last_start, last_status in rows:
        if paused_at is not None:
            paused += 1
            continue
        failing += last_status == "failed"
        late = schedules.lateness(
            name, expression, last_start=last_start, created_at=created_at, now=now
        )
        if not late.due:
            continue
        due += 1
        if not late.overdue:
            continue
        overdue += 1
        behind += late.periods_late() > HEALTH_PERIODS
        if oldest is None or late.due_for > oldest[1].due_for:
            oldest = (name, late)
    jobs = dict.fromkeys(JOB_STATUSES, 0)
    for status, count in connection.execute(_JOBS, {"queue": QUEUE, "task": SYNC_TASK}):
        jobs[status] = count
    return FleetSnapshot(now, len(rows), paused, due, overdue, failing, behind, oldest, jobs)


#: The fleet's metrics, listed after ``process_*``, ``regionsync_build_info`` and the run
#: metrics. The database figures first.
FLEET_METRICS = (
    Metric(
        "_accounts",
        Gauge,
        "regionsync_fleet_accounts",
        "Accounts (rows of the accounts table, paused ones included; 1 while it is empty: "
        "the settings' account).",
    ),
    Metric("_paused", Gauge, "regionsync_fleet_accounts_paused", "Paused accounts."),
    Metric(
        "_due",
        Gauge,
        "regionsync_fleet_accounts_due",
        "Unpaused accounts due: no run (skipped ones aside) started since their latest due time.",
    ),
    Metric(
        "_overdue",
        Gauge,
        "regionsync_fleet_accounts_overdue",
        "Unpaused accounts due for longer than one period of their schedule.",
    ),
    Metric(
        "_failing",
        Gauge,
        "regionsync_fleet_accounts_failing",
        "Unpaused accounts whose latest run (skipped ones aside) failed.",
    ),
    Metric(
        "_oldest_overdue",
        Gauge,
        "regionsync_fleet_oldest_overdue_seconds",
        "How long the overdue account due the longest has been due; 0 when none is overdue.",
    ),
    Metric(
        "_jobs",
        Gauge,
        "regionsync_fleet_jobs",
        "Sync jobs in the queue, on any replica: waiting (todo) or running (doing).",
        "status",
        JOB_STATUSES,
    ),
    Metric(
        "_database_up",
        Gauge,
        "regionsync_fleet_database_up",
        "1 when the last read of the fleet's figures answered; 0 when it failed (they then "
        "read NaN).",
    ),
    Metric(
        "_refreshed",
        Gauge,
        "regionsync_fleet_refreshed_timestamp_seconds",
        "When the fleet's figures were last read from the database, as a Unix time; 0 before.",
    ),
    Metric(
        "_period",
        Gauge,
        "regionsync_schedule_period_seconds",
        "REGIONSYNC_SCHEDULE's period (an interval, or a crontab's longest gap between runs); "
        "accounts with a schedule of their own are judged by theirs.",
    ),
    Metric(
        "_concurrency",
        Gauge,
        "regionsync_fleet_concurrency",
        "Syncs this replica runs at once at most (--concurrency).",
    ),
    Metric("_running", Gauge, "regionsync_fleet_syncs_running", "Syncs this replica runs now."),
    Metric(
        "_dispatched",
        Counter,
        "regionsync_fleet_jobs_dispatched",
        "Sync jobs deferred by this replica's dispatches.",
    ),
    Metric(
        "_recovered",
        Counter,
        "regionsync_fleet_jobs_recovered",
        "Stalled jobs (their replica stopped heartbeating: killed, frozen) this replica retried.",
    ),
)
#: The figures read from the database: NaN when it does not answer.
_DATABASE_GAUGES = ("_accounts", "_paused", "_due", "_overdue", "_failing", "_oldest_overdue")


class FleetMetrics(FleetStats):
    """What a worker's tasks report (:class:`FleetStats`), and the fleet's figures read by
    :meth:`refresh`, as Prometheus metrics and health. Thread-safe."""

    # Set from FLEET_METRICS.
    _accounts: Gauge
    _paused: Gauge
    _due: Gauge
    _overdue: Gauge
    _failing: Gauge
    _oldest_overdue: Gauge
    _jobs: Gauge
    _database_up: Gauge
    _refreshed: Gauge
    _period: Gauge
    _concurrency: Gauge
    _running: Gauge
    _dispatched: Counter
    _recovered: Counter

    def __init__(
        self,
        engine: Engine,
        schedules: Timetables,
        *,
        implicit_account: str,
        concurrency: int,
        period: timedelta,
        clock: Clock = _utcnow,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.schedules = schedules
        self.implicit_account = implicit_account
        self.concurrency = concurrency
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._metrics_lock = threading.Lock()
        self._snapshot: FleetSnapshot | None = None
        self._error: str | None = "not read yet"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry = process_registry()
        self.runs = RunMetrics(self.registry)
        for metric in FLEET_METRICS:
            setattr(self, metric.attribute, metric.register(self.registry))
        self._period.set(period.total_seconds())
        self._concurrency.set(concurrency)
        self._running.set_function(lambda: self.running)
        self._set_unknown()

    # What the tasks report ---------------------------------------------------------------

    def sync_ended(self, ended: SyncEnded) -> None:
        super().sync_ended(ended)
        if ended.outcome not in RUN_OUTCOMES:
            return  # gone: the account was removed or paused before its job ran; no run
        with self._metrics_lock:
            self.runs.record(
                ended.outcome,
                ended.duration,
                reason=ended.reason,
                counts=ended.counts,
            )

    def jobs_dispatched(self, count: int) -> None:
        super().jobs_dispatched(count)
        self._dispatched.inc(count)

    def job_recovered(self) -> None:
        super().job_recovered()
        self._recovered.inc()

    # The fleet's figures -----------------------------------------------------------------

    def refresh(self) -> FleetSnapshot | None:
        """Read the fleet's figures now; on failure they read NaN until the next read."""
        try:
            with translated_errors("reading the fleet's figures"), self.engine.begin() as c:
                c.execute(sa.text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                snapshot = read_fleet(c, self.schedules, self.implicit_account, self._clock())
        except RegionSyncError as error:
            logger.warning("fleet.figures_unavailable", error=str(error))
            self._unknown(UNAVAILABLE)
            return None
        except Exception:  # a bug must not stop the refresh thread
            logger.exception("fleet.figures_unavailable", error="internal error")
            self._unknown("internal error: see the fleet.figures_unavailable log line")
            return None
        with self._metrics_lock:
            self._snapshot, self._error = snapshot, None
            self._accounts.set(snapshot.accounts)
            self._paused.set(snapshot.paused)
            self._due.set(snapshot.due)
            self._overdue.set(snapshot.overdue)
            self._failing.set(snapshot.failing)
            self._oldest_overdue.set(snapshot.oldest_overdue_seconds)
            for status in JOB_STATUSES:
                self._jobs.labels(status=status).set(snapshot.jobs.get(status, 0))
            self._database_up.set(1)
            self._refreshed.set(snapshot.checked_at.timestamp())
        return snapshot

    def _unknown(self, error: str) -> None:
        with self._metrics_lock:
            self._error = error
            self._set_unknown()

    def _set_unknown(self) -> None:
        for attribute in _DATABASE_GAUGES:
            getattr(self, attribute).set(math.nan)
        for status in JOB_STATUSES:
            self._jobs.labels(status=status).set(math.nan)
        self._database_up.set(0)

    def start(self) -> FleetMetrics:
        """Read the figures now, then every ``refresh_seconds`` from a thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="regionsync-fleet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STATEMENT_TIMEOUT_MS / 1000 + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            self.refresh()

    # What the server answers -------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the database answered within the last three refreshes and no
        unpaused account is due for longer than HEALTH_PERIODS periods; the body says so."""
        now = self._clock()
        with self._metrics_lock:
            snapshot, error = self._snapshot, self._error
        with self._lock:
            worker = {
                "running": self.running,
                "syncs": dict(self.syncs),
                "jobs_dispatched": self.dispatched,
                "jobs_recovered": self.recovered,
            }
        too_old = timedelta(seconds=3 * self.refresh_seconds)
        if snapshot is None or error is not None or now - snapshot.checked_at > too_old:
            status = "database_unavailable"
        elif snapshot.behind:
            status = "behind"
        else:
            status = "ok"
        body: dict[str, Any] = {
            "status": status,
            "checked_at": now.isoformat(),
            "refreshed_at": snapshot.checked_at.isoformat() if snapshot else None,
            "database_error": error,
            "health_periods": HEALTH_PERIODS,
            **(snapshot.as_json() if snapshot else {}),
            "worker": {"concurrency": self.concurrency, **worker},
        }
        return status == "ok", body

    def exposition(self) -> bytes:
        """The Prometheus text; under the lock, so a run's counter and histogram agree."""
        with self._metrics_lock:
            return bytes(generate_latest(self.registry))


@contextlib.contextmanager
def serving(
    settings: Settings, *, concurrency: int, period: timedelta
) -> Iterator[FleetMetrics | None]:
    """With ``REGIONSYNC_METRICS_PORT`` set: the worker's metrics, read once, then served and
    refreshed until the block ends; else None. A port that cannot be bound is a
    :class:`~regionsync.errors.ConfigError`."""
    if settings.metrics_port is None:
        yield None
        return
    engine = create_engine(settings, pool_size=1)  # its own: never waits behind the syncs
    metrics = FleetMetrics(
        engine,
        timetables(settings),
        implicit_account=settings.account,
        concurrency=concurrency,
        period=period,
    )
    try:
        metrics.start()
        server = serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
        try:
            yield metrics
        finally:
            if server is not None:
                server.stop()
    finally:
        metrics.stop()
        engine.dispose()


__all__ = [
    "FLEET_METRICS",
    "REFRESH_SECONDS",
    "FleetMetrics",
    "FleetSnapshot",
    "read_fleet",
    "serving",
]
