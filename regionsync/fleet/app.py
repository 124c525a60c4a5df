"""The fleet's procrastinate app: its connector to the regionsync database, and its tasks.

- ``regionsync.sync_account(account)``: one account's sync, through
  :func:`regionsync.sync.run_sync` (the code path of ``run --account`` and the daemon); the
  job carries the account's name only, never its key. A failed sync is recorded in
  ``sync_runs`` and is not a failed job: the next period tries again.
- ``regionsync.dispatch``: periodic; defers the due accounts (:mod:`.dispatch`) in one
  batch, in the transaction that found them, under a lock only one replica gets.
- ``regionsync.recover_stalled``: periodic; a job left ``doing`` by a replica that stopped
  heartbeating (killed, frozen) is retried, so its account is synced by another replica.
- ``regionsync.deliver``: deferred after a sync that queued notifications, and periodic, so
  the outbox drains through one delivery pass at a time.
- ``regionsync.prune_runs``: periodic (every :data:`PRUNE_CRON`), unless
  ``REGIONSYNC_RUNS_RETENTION`` is ``off``; deletes old runs that wrote nothing, in small
  batches (docs/operations.md, *Run retention*).

One periodic job per period across all replicas is procrastinate's own guarantee; each
task also takes a ``queueing_lock`` so that a slow one never piles up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from procrastinate import App, PsycopgConnector, SyncPsycopgConnector, exceptions, jobs
from procrastinate.manager import JobManager
from sqlalchemy import text
from sqlalchemy.engine import Engine

from regionsync.accounts import account_source, select_account
from regionsync.daemon.metrics import FailureReason, failure_reason
from regionsync.errors import RegionSyncError
from regionsync.fleet.dispatch import Dispatcher, job_lock
from regionsync.notify.delivery import Notifier
from regionsync.notify.outbox import OutboxPolicy
from regionsync.settings import Settings
from regionsync.store.lock import derived_key
from regionsync.store.retention import RunPruner
from regionsync.store.runs import Counts
from regionsync.sync import Guard, run_sync

logger = structlog.get_logger("regionsync.fleet")

SYNC_TASK = "regionsync.sync_account"
QUEUE = "regionsync"
#: A replica that has not heartbeaten for this long is taken for dead: its jobs are retried.
STALLED_AFTER_SECONDS = 20
HEARTBEAT_SECONDS = 5
#: How often stalled jobs are looked for (crontab with seconds).
RECOVERY_CRON = "* * * * * */10"
#: How often old runs are pruned, and for how long at most: a pass holds one of the
#: replica's worker slots, never for long.
PRUNE_CRON = "*/10 * * * *"
PRUNE_SECONDS = 60.0
#: Only one replica dispatches at a time (a transaction-level advisory lock).
DISPATCH_LOCK_KEY = derived_key(int.from_bytes(b"regionsy", "big", signed=True), "dispatch")


def dispatch_period(period: timedelta) -> int:
    """Seconds between dispatches: a fifteenth of the schedule's period, between 1 s and a
    minute, and a divisor of 60 (so that a crontab with seconds can say it)."""
    wanted = max(1, min(60, int(period.total_seconds() // 15)))
    return max(d for d in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60) if d <= wanted)


def dispatch_cron(seconds: int) -> str:
    return "* * * * *" if seconds == 60 else f"* * * * * */{seconds}"


def connector(settings: Settings, *, max_size: int = 10) -> PsycopgConnector:
    """procrastinate's connector to the regionsync database and schema."""
    url = settings.database_url.set(drivername="postgresql")
    options = f"-c search_path={settings.db_schema}"
    return PsycopgConnector(
        conninfo=url.render_as_string(hide_password=False),
        kwargs={"options": options, "application_name": "regionsync-worker"},
        min_size=1,
        max_size=max_size,
    )


@dataclass(frozen=True)
class SyncEnded:
    """How one sync job ended: ``outcome`` succeeded, skipped, failed, or gone (the account
    was removed or paused before its job ran: no run); how long it took (None: nothing was
    synced); a failure's ``reason`` and a run's ``counts``, for the metrics."""

    outcome: str
    duration: float | None = None
    reason: FailureReason = "internal"
    counts: Counts | None = None


@dataclass
class FleetStats:
    """What this replica did: syncs by outcome and running now, jobs dispatched and
    recovered. The tasks report here (from their threads: it is locked);
    :class:`regionsync.fleet.metrics.FleetMetrics` extends it to export them."""

    syncs: dict[str, int] = field(default_factory=dict)
    recovered: int = 0
    dispatched: int = 0
    running: int = 0
    last_dispatch_at: datetime | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def sync_started(self) -> None:
        with self._lock:
            self.running += 1

    def sync_ended(self, ended: SyncEnded) -> None:
        with self._lock:
            self.running -= 1
            self.syncs[ended.outcome] = self.syncs.get(ended.outcome, 0) + 1

    def jobs_dispatched(self, count: int) -> None:
        with self._lock:
            self.dispatched += count
            self.last_dispatch_at = datetime.now(UTC)

    def job_recovered(self) -> None:
        with self._lock:
            self.recovered += 1


def make_app(
    settings: Settings,
    engine: Engine,
    *,
    period: timedelta,
    stats: FleetStats | None = None,
) -> tuple[App, FleetStats]:
    """The app with its tasks bound to ``engine`` and ``settings``, reporting to ``stats``
    (a new :class:`FleetStats` by default)."""
    app = App(connector=connector(settings), import_paths=[])
    stats = stats if stats is not None else FleetStats()
    guard = Guard.from_settings(settings)
    notify = OutboxPolicy.from_settings(settings.notifications)
    notifier = Notifier.from_settings(engine, settings.notifications)
    dispatcher = Dispatcher(settings.schedule, settings.timezone, settings.account)
    every = dispatch_period(period)

    @app.task(name=SYNC_TASK, queue=QUEUE)
    def sync_account(account: str) -> None:
        stats.sync_started()
        ended = SyncEnded("failed")  # should anything escape
        try:
            ended = _sync_account(engine, settings, account, guard, notify)
        finally:
            stats.sync_ended(ended)
        if ended.outcome == "succeeded" and notifier is not None:
            _defer_quietly(deliver.configure(queueing_lock="deliver"))

    @app.periodic(cron=dispatch_cron(every), periodic_id="dispatch")
    @app.task(name="regionsync.dispatch", queue=QUEUE, queueing_lock="dispatch")
    def dispatch(timestamp: int) -> None:
        stats.jobs_dispatched(dispatch_due(app, engine, dispatcher, datetime.now(UTC)))

    @app.periodic(cron=RECOVERY_CRON, periodic_id="recover")
    @app.task(name="regionsync.recover_stalled", queue=QUEUE, queueing_lock="recover")
    async def recover_stalled(timestamp: int) -> None:
        stalled = await app.job_manager.get_stalled_jobs(
            seconds_since_heartbeat=STALLED_AFTER_SECONDS
        )
        for job in stalled:
            await app.job_manager.retry_job(job)
            stats.job_recovered()
            logger.warning(
                "fleet.job_recovered",
                task=job.task_name,
                account=job.task_kwargs.get("account"),
                job_id=job.id,
                hint="its replica stopped heartbeating; another one runs it",
            )

    pruner = RunPruner.from_settings(engine, settings, max_seconds=PRUNE_SECONDS)
    if pruner is not None:

        @app.periodic(cron=PRUNE_CRON, periodic_id="prune")
        @app.task(name="regionsync.prune_runs", queue=QUEUE, queueing_lock="prune")
        def prune_runs(timestamp: int) -> None:
            pruner.prune()

    @app.periodic(cron=dispatch_cron(every), periodic_id="deliver")
    @app.task(name="regionsync.deliver", queue=QUEUE, queueing_lock="deliver")
    def deliver(timestamp: int | None = None) -> None:
        if notifier is not None:
            notifier.deliver_pending()

    return app, stats


def _defer_quietly(deferrer: Any) -> None:
    with contextlib.suppress(exceptions.AlreadyEnqueued):  # one is waiting: it will do
        deferrer.defer()


def _sync_account(
    engine: Engine,
    settings: Settings,
    name: str,
    guard: Guard,
    notify: OutboxPolicy | None,
) -> SyncEnded:
    """One account's sync as a job, and how it ended."""
    log = logger.bind(account=name)
    try:
        account = select_account(engine, settings, name)
    except RegionSyncError as error:
        log.info("fleet.account_gone", reason=str(error))
        return SyncEnded("gone")
    if account.paused_at is not None:
        log.info("fleet.account_paused", paused_at=account.paused_at.isoformat())
        return SyncEnded("gone")
    started = time.monotonic()
    try:
        source = account_source(account, settings)
        result = run_sync(
            engine, source, account=name, trigger="worker", guard=guard, notify=notify
        )
    except RegionSyncError as error:
        log.warning("fleet.sync_failed", error=str(error))  # recorded in sync_runs
        return SyncEnded("failed", time.monotonic() - started, failure_reason(error))
    except Exception:
        log.exception("fleet.sync_failed", error="internal error")
        return SyncEnded("failed", time.monotonic() - started, "internal")
    if result.status == "skipped":
        return SyncEnded("skipped", counts=result.counts)
    return SyncEnded(result.status, result.duration, counts=result.counts)


def dispatch_due(app: App, engine: Engine, dispatcher: Dispatcher, now: datetime) -> int:
    """Defer a sync job for every due account, in one batch; returns how many. Under a
    transaction-level advisory lock: a second dispatcher at the same moment does nothing."""
    with engine.begin() as connection:
        got = connection.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": DISPATCH_LOCK_KEY}
        ).scalar_one()
        if not got:
            return 0
        found = dispatcher.due(connection, SYNC_TASK, now)
        if found.accounts:
            batch = [
                jobs.Job(
                    id=None,
                    queue=QUEUE,
                    lock=job_lock(name),
                    queueing_lock=job_lock(name),
                    task_name=SYNC_TASK,
                    task_kwargs={"account": name},
                )
                for name in found.accounts
            ]
            # In this transaction, on its connection: procrastinate's own defer query,
            # through its sync connector (which needs no pool of its own for that).
            raw = connection.connection.driver_connection
            JobManager(SyncPsycopgConnector()).batch_defer_jobs(batch, connection=raw)
    logger.info(
        "fleet.dispatched",
        deferred=len(found.accounts),
        already_queued=found.queued,
        accounts=found.considered,
    )
    return len(found.accounts)


def worker_name() -> str:
    return f"regionsync@{socket.gethostname()}"


__all__ = [
    "QUEUE",
    "SYNC_TASK",
    "FleetStats",
    "SyncEnded",
    "connector",
    "dispatch_due",
    "dispatch_period",
    "make_app",
]
