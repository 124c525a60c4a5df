"""``regionsync daemon``: an APScheduler loop around :func:`regionsync.sync.run_sync`.

One sync at start, then on ``REGIONSYNC_SCHEDULE``: each tick syncs every account (the
``KALEYRA_*`` settings' one account while the accounts table is empty), one after another,
skipping paused ones and those whose own schedule is not due yet (an own schedule is
honoured at the daemon's ticks: it can make an account sync less often, not more; see
docs/accounts.md). The job never raises: a failed sync
(API down, database down, guard tripped) is logged, recorded when the database allows it,
and the next tick tries again. After a tick, at most hourly, it deletes old runs that wrote
nothing (docs/operations.md, *Run retention*). Job options:

- ``max_instances=1``: a sync still running when the next tick comes makes APScheduler skip
  that tick (the advisory lock would make it ``skipped`` anyway); the daemon reports every
  skipped tick (``daemon.tick_skipped``, a metric, ``/healthz``), and a sync cannot run for
  long because its fetch ends within the fetch budget whatever the API does;
- ``coalesce=True``: ticks missed while the process could not run (suspended host, clock
  jump) become one run;
- ``misfire_grace_time`` = the schedule's period (the interval, or a crontab's longest gap
  between fire times): APScheduler's default of 1 s would drop a run that starts a second
  late, while a run later than a whole period is never needed because the next tick is due.

Stopping: the first SIGTERM or SIGINT takes no new runs, lets a sync in progress finish
(within the fetch budget and its apply) and exits 0; a second one exits at once with 128 +
the signal number (130 for SIGINT, 143 for SIGTERM), leaving the run in progress
``running`` until the next sync closes it as abandoned.
The signal handler only writes a byte to a pipe; a thread reads it and stops the scheduler
(or, at the second signal, logs and exits), so no lock is ever taken inside a signal handler.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from sqlalchemy.engine import Engine

from regionsync import gc_pause
from regionsync.accounts import Account, account_source, configured_accounts
from regionsync.daemon.health import DaemonHealth
from regionsync.daemon.metrics import (
    DaemonMetrics,
    MetricsServer,
    failure_reason,
    serve_metrics,
)
from regionsync.daemon.schedule import Schedule, load_schedule, parse_schedule
from regionsync.errors import RegionSyncError, StoreError
from regionsync.notify.delivery import Notifier
from regionsync.notify.outbox import OutboxPolicy
from regionsync.records import Source
from regionsync.settings import Settings
from regionsync.source.kaleyra import KaleyraClient
from regionsync.status import StatusReport, gather
from regionsync.store.engine import create_engine, translated_errors
from regionsync.store.retention import RunPruner
from regionsync.store.schema import require_current
from regionsync.sync import Guard, run_sync

logger = structlog.get_logger("regionsync.daemon.loop")

JOB_ID = "sync"
#: /healthz turns 503 when the last success is older than this many periods: two missed or
#: failed runs in a row are tolerated, the third is not.
HEALTH_PERIODS = 3
#: The daemon prunes old runs (docs/operations.md, *Run retention*) after a tick, at most
#: this often, for at most PRUNE_SECONDS: the next tick is never held up for long.
PRUNE_EVERY = timedelta(hours=1)
PRUNE_SECONDS = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_daemon(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. Raises :class:`ConfigError` or
    :class:`~regionsync.errors.SchemaError` (exit 2) when it cannot start."""
    # The program starts every command with the cyclic collector off (regionsync.__main__);
    # a process that runs for days needs it, between syncs (which pause it, gc_pause).
    gc.enable()
    schedule = load_schedule(settings)
    period = schedule.period(now=datetime.now(UTC))
    engine = create_engine(settings)
    try:
        reachable = _check_database(engine)
        source = _settings_source(engine, settings, reachable=reachable)
        metrics = DaemonMetrics(max_age=period * HEALTH_PERIODS, period=period)
        health = DaemonHealth(metrics)
        server = _serve_metrics(health, settings.metrics_host, settings.metrics_port)
        try:
            daemon = Daemon(
                engine,
                source,
                schedule=schedule,
                guard=Guard.from_settings(settings),
                metrics=metrics,
                period=period,
                notifier=Notifier.from_settings(engine, settings.notifications),
                notify=OutboxPolicy.from_settings(settings.notifications),
                health=health,
                settings=settings,
                pruner=RunPruner.from_settings(engine, settings, max_seconds=PRUNE_SECONDS),
            )
            if reachable:
                daemon.refresh_status()
            logger.info(
                "daemon.started",
                schedule=schedule.describe(),
                timezone=settings.timezone,
                misfire_grace_s=daemon.misfire_grace_time,
                health_max_age_s=metrics.max_age.total_seconds(),
                metrics_port=server.port if server else None,
                metrics_host=settings.metrics_host if server else None,
                database=settings.database_display,
                source=source.description if source else "the accounts table",
                webhook=settings.notifications.webhook_display,
                pid=os.getpid(),
            )
            return daemon.run()
        finally:
            if server is not None:
                server.stop()
    finally:
        engine.dispose()


def _settings_source(engine: Engine, settings: Settings, *, reachable: bool) -> Source | None:
    """The source of the settings' one account, checked at start (a missing KALEYRA_*
    setting is exit 2), unless the accounts table holds the accounts (then None)."""
    if reachable:
        try:
            found = configured_accounts(engine, settings)
        except StoreError:
            found = []
        if found and not found[0].implicit:
            return None
    elif not settings.kaleyra_sid:
        return None  # the accounts are read from the database once it answers
    return KaleyraClient(settings.require_kaleyra())


def _check_database(engine: Engine) -> bool:
    """Refuse an unmigrated schema (exit 2); an unreachable database is only logged."""
    try:
        with translated_errors("reading the schema revision"):
            require_current(engine)
    except StoreError as error:
        logger.warning(
            "daemon.database_unavailable",
            error=str(error),
            hint="starting anyway; each run tries again",
        )
        return False
    return True


def _serve_metrics(health: DaemonHealth, host: str, port: int | None) -> MetricsServer | None:
    return serve_metrics(health.metrics, host, port, health=health.health)


class Daemon:
    """The scheduler, its one job, and the stop protocol described in the module docstring."""

    def __init__(
        self,
        engine: Engine,
        source: Source | None,
        *,
        schedule: Schedule,
        guard: Guard,
        metrics: DaemonMetrics,
        period: timedelta,
        notifier: Notifier | None = None,
        notify: OutboxPolicy | None = None,
        health: DaemonHealth | None = None,
        settings: Settings | None = None,
        pruner: RunPruner | None = None,
    ) -> None:
        """``source``: the settings' one account's; ``settings``: where the accounts are
        read from at each tick (None: ``source`` is the only account, ``default``);
        ``pruner``: deletes old runs after a tick, at most every :data:`PRUNE_EVERY`."""
        self.engine = engine
        self.pruner = pruner
        self._pruned_at: float | None = None
        self.settings = settings
        #: When each account with a schedule of its own is next due.
        self._due: dict[str, datetime] = {}
        self.notifier = notifier
        self.notify = notify
        self.source = source
        self.schedule = schedule
        self.guard = guard
        self.metrics = metrics
        self.health = health or DaemonHealth(metrics)
        self.misfire_grace_time = max(1, int(period.total_seconds()))
        self.scheduler = BlockingScheduler(
            timezone=schedule.timezone,
            executors={"default": ThreadPoolExecutor(max_workers=1)},
        )
        self._trigger: Any = None
        self._state = threading.Condition()
        self._stopping = False
        self._running = False
        self._wake_read, self._wake_write = os.pipe()

    # The job -------------------------------------------------------------------------

    def sync_once(self) -> None:
        """One scheduled sync; never raises, so a failure never stops the daemon."""
        with self._state:
            if self._stopping:
                logger.info("daemon.run_not_started", reason="the daemon is stopping")
                return
            self._running = True
        self.health.sync_started()
        try:
            self._sync()
        finally:
            self.health.sync_finished()
            with self._state:
                self._running = False
                self._state.notify_all()

    def _on_max_instances(self, event: JobSubmissionEvent) -> None:
        """APScheduler skipped a tick because the previous sync is still running."""
        running = self.health.running_for()
        skipped = self.health.tick_skipped("still_running")
        logger.warning(
            "daemon.tick_skipped",
            reason="the previous sync is still running",
            running_for_s=None if running is None else round(running, 3),
            skipped_so_far=skipped,
        )

    def _sync(self) -> None:
        database_down = skipped = False
        try:
            due = self._due_accounts()
        except RegionSyncError as error:
            database_down = isinstance(error, StoreError)
            self.metrics.sync_started()
            self.metrics.record_run("failed", 0.0, reason=failure_reason(error))
            logger.warning("daemon.run_failed", error=str(error))
            due = []
        for account, source in due:
            outcome = self._sync_account(account, source)
            database_down = outcome == "database_down"
            skipped = skipped or outcome == "skipped"
            if database_down:
                break  # the other accounts would wait for it too; the next tick tries again
        if not database_down:  # no second wait for a database that just failed to answer
            self.deliver_notifications()
            self.refresh_status()
            if skipped:
                self._report_lock_held()
            self.prune_runs()
        self._log_next_run()

    def _due_accounts(self) -> list[tuple[Account, Source]]:
        """The accounts to sync at this tick, with their sources."""
        if self.settings is None:
            assert self.source is not None
            return [(Account("default"), self.source)]
        now = datetime.now(UTC)
        due = []
        for account in configured_accounts(self.engine, self.settings):
            if account.implicit:
                source = self.source or account_source(account, self.settings)
                return [(account, source)]
            if account.paused_at is not None:
                continue
            if account.schedule is not None:
                if self._due.get(account.name, now) > now:
                    continue
                self._due[account.name] = self._next_due(account.schedule, now)
            due.append((account, account_source(account, self.settings)))
        return due

    def _next_due(self, expression: str, now: datetime) -> datetime:
        assert self.settings is not None
        trigger = parse_schedule(expression, self.settings.timezone).trigger(now)
        upcoming: datetime | None = trigger.get_next_fire_time(None, now)
        # A little early is still due: the daemon's own tick may come just before it.
        return (upcoming or now + timedelta(days=365)) - timedelta(seconds=1)

    def _sync_account(self, account: Account, source: Source) -> str:
        """One account's sync, recorded in the metrics and the log; returns how it ended:
        succeeded, skipped, failed or database_down."""
        started = time.monotonic()
        self.metrics.sync_started()
        try:
            with gc_pause.paused():
                result = run_sync(
                    self.engine,
                    source,
                    account=account.name,
                    trigger="daemon",
                    guard=self.guard,
                    notify=self.notify,
                )
        except RegionSyncError as error:
            database_down = isinstance(error, StoreError)
            self.metrics.record_run(
                "failed", time.monotonic() - started, reason=failure_reason(error)
            )
            logger.warning(
                "daemon.run_failed",
                account=account.name,
                error=str(error),
                consecutive_failures=self.metrics.consecutive_failures,
            )
            return "database_down" if database_down else "failed"
        except Exception as error:
            self.metrics.record_run("failed", time.monotonic() - started, reason="internal")
            logger.exception(
                "daemon.run_failed",
                account=account.name,
                error=f"internal error: {type(error).__name__}: {error}",
                consecutive_failures=self.metrics.consecutive_failures,
            )
            return "failed"
        if result.status == "skipped":
            self.metrics.record_run("skipped", None, counts=result.counts)
            return "skipped"
        self.metrics.record_run("succeeded", result.duration, counts=result.counts)
        return "succeeded"

    def deliver_notifications(self) -> None:
        """Deliver the outbox after the run (this one's and any left pending), bounded."""
        if self.notifier is None:
            return
        report = self.notifier.deliver_pending()
        self.metrics.notifications.record_pass(
            delivered=len(report.delivered),
            retried=report.retried_attempts,
            failed=len(report.failed) + len(report.expired),
        )

    def prune_runs(self) -> None:
        """Delete old runs that wrote nothing, if the last prune was an hour ago or more."""
        clock = time.monotonic()
        last = self._pruned_at
        if self.pruner is None or (last is not None and clock - last < PRUNE_EVERY.total_seconds()):
            return
        self._pruned_at = clock
        self.pruner.prune()

    def refresh_status(self) -> StatusReport | None:
        """Update the health, region and lock gauges from the database, if it answers."""
        try:
            report = gather(self.engine, limit=1)
        except RegionSyncError as error:
            logger.debug("daemon.status_unavailable", error=str(error))
            return None
        self.metrics.record_status(report)
        self.health.record_lock(report.lock)
        return report

    def _report_lock_held(self) -> None:
        skipped = self.health.tick_skipped("lock_held")
        lock = self.health.lock_report() or {}
        log = logger.warning if lock.get("stuck") else logger.info
        log(
            "daemon.tick_skipped",
            reason="another session holds the sync lock",
            skipped_so_far=skipped,
            holder_pid=lock.get("pid"),
            holder_user=lock.get("user"),
            held_at_least_s=lock.get("held_at_least_seconds"),
            stuck=lock.get("stuck", False),
        )

    def _log_next_run(self) -> None:
        now = datetime.now(UTC)
        upcoming = self._trigger.get_next_fire_time(None, now) if self._trigger else None
        if upcoming is not None:
            logger.info(
                "daemon.next_run",
                at=upcoming.astimezone(self.schedule.timezone).isoformat(),
                in_s=round((upcoming - now).total_seconds(), 3),
            )

    # The loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Sync now, then on the schedule, until a signal; returns the exit code."""
        now = datetime.now(UTC)
        self._trigger = self.schedule.trigger(now)
        self.scheduler.add_job(
            self.sync_once,
            trigger=self._trigger,
            id=JOB_ID,
            name="regionsync sync",
            next_run_time=now,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=self.misfire_grace_time,
        )
        self.scheduler.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        watcher = threading.Thread(target=self._watch_signals, name="regionsync-stop", daemon=True)
        watcher.start()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            self.scheduler.start()
            self._wait_for_sync()
        finally:
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)
            os.close(self._wake_write)
            os.close(self._wake_read)
        logger.info("daemon.stopped")
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        os.write(self._wake_write, bytes([signum]))

    def _watch_signals(self) -> None:
        """Wait for the first signal's byte and stop the scheduler; then for a second one,
        and exit at once. Ends when the pipe closes (the daemon stopped)."""
        signum = self._next_signal()
        if signum is None:
            return
        self._stop(signum)
        signum = self._next_signal()
        if signum is None:
            return
        logger.error(
            "daemon.killed",
            signal=signal.Signals(signum).name,
            hint="a sync in progress stays 'running' until the next sync closes it as abandoned",
        )
        os._exit(128 + signum)

    def _next_signal(self) -> int | None:
        """The number of the next signal received; None once the pipe is closed."""
        try:
            return os.read(self._wake_read, 1)[0]
        except (OSError, IndexError):
            return None

    def _stop(self, signum: int) -> None:
        """Take no new runs and stop the scheduler (a sync in progress goes on)."""
        with self._state:
            self._stopping = True
            busy = self._running
        extra = {"hint": "send the signal again to exit at once"} if busy else {}
        logger.info(
            "daemon.stopping", signal=signal.Signals(signum).name, waiting_for_sync=busy, **extra
        )
        while True:
            try:
                self.scheduler.shutdown(wait=False)
                return
            except SchedulerNotRunningError:
                time.sleep(0.05)  # the signal came before the scheduler had started

    def _wait_for_sync(self) -> None:
        """Let a sync in progress finish; a second signal still interrupts this wait."""
        with self._state:
            self._stopping = True
            while self._running:
                self._state.wait(timeout=0.5)


__all__ = ["Daemon", "run_daemon"]
