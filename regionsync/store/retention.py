"""Run retention (docs/operations.md, *Run retention*): ``sync_runs`` stays bounded.

At a run every 15 minutes per account, most runs change nothing, and each leaves one row.
Rows older than ``REGIONSYNC_RUNS_RETENTION`` go when the run wrote nothing: ``succeeded``
with nothing added, changed, removed or restored, or ``skipped`` (another sync held the
lock). Kept whatever their age:

- ``failed`` runs: the health history (outages, ``consecutive_failures``, the error line an
  operator looks for weeks later); they stop piling up once a failing account is paused;
- every run that a ``region_history`` row, a ``notification_deliveries`` row or the no-change
  shortcut's memory (``applied_answers``) references (checked with ``NOT EXISTS``; the
  foreign keys would refuse the first two anyway);
- an account's latest success and every run after it: a run goes only once a later
  successful run of its account exists, so ``status``, ``sync_health``, the dispatcher and
  the health events, which read the latest run and the latest success, see what they saw.

How, beside readers and syncs: a pass walks the primary key from a cursor up to the newest
run started before the cutoff, ``batch_size`` ids a batch. Each batch is one ``DELETE`` in a
short transaction of its own under a short ``lock_timeout``; a ``DELETE`` takes no lock a
reader takes, and a sync only inserts and updates runs too recent to be pruned. A batch that
meets a lock or a reference made meanwhile ends the pass (nothing is lost: the next call
starts there again), and a pass stops after ``max_seconds``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa
import structlog
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from regionsync.settings import Settings
from regionsync.store.engine import LOCK_NOT_AVAILABLE, describe_db_error
from regionsync.store.runs import now
from regionsync.store.tables import (
    RunStatus,
    applied_answers,
    notification_deliveries,
    region_history,
    sync_runs,
)

logger = structlog.get_logger("regionsync.store.retention")

#: Ids a batch looks at, so a statement deletes at most this many rows.
BATCH_SIZE = 1000
#: The longest a batch waits for a row lock or a table lock (a migration's) before the pass
#: ends, to be tried again by the next call.
LOCK_WAIT = timedelta(seconds=1)
#: How often a pass starts again from the first run rather than from where the last ended:
#: runs behind the cursor become prunable when a later success of their account arrives
#: (a paused account resumed) or the row that referenced them goes.
RESCAN_EVERY = timedelta(days=1)
#: The statuses of runs that never write: a skipped run, or a success with zero counts.
PRUNABLE: tuple[RunStatus, ...] = ("succeeded", "skipped")
#: PostgreSQL's SQLSTATE for a foreign key violated: a reference made during the batch.
FOREIGN_KEY_VIOLATION = "23503"

Stopped = Literal["done", "time", "lock", "reference"]


@dataclass(frozen=True)
class PruneReport:
    """What one pass did. ``cursor`` is the last run id it looked at; ``stopped`` says why it
    ended: ``done`` (it reached the cutoff), ``time`` (``max_seconds``), ``lock`` (a lock it
    would have waited for) or ``reference`` (a run was referenced while being deleted)."""

    deleted: int
    examined: int
    batches: int
    seconds: float
    cursor: int
    stopped: Stopped

    @property
    def complete(self) -> bool:
        return self.stopped == "done"


def prunable(cutoff: datetime) -> list[sa.ColumnElement[bool]]:
    """The conditions a run meets to be deleted (the module docstring's rules)."""
    runs = sync_runs.c
    later = sync_runs.alias("later")
    return [
        runs.status.in_(PRUNABLE),
        runs.started_at < cutoff,
        runs.added == 0,
        runs.changed == 0,
        runs.removed == 0,
        runs.restored == 0,
        sa.exists().where(
            later.c.account == runs.account, later.c.status == "succeeded", later.c.id > runs.id
        ),
        ~sa.exists().where(
            region_history.c.sync_run_id == runs.id, region_history.c.account == runs.account
        ),
        ~sa.exists().where(notification_deliveries.c.sync_run_id == runs.id),
        ~sa.exists().where(
            applied_answers.c.account == runs.account, applied_answers.c.sync_run_id == runs.id
        ),
    ]


def _last_before(connection: Connection, cutoff: datetime) -> int:
    """The id of the newest prunable-status run started before ``cutoff``, 0 if none: where
    a pass stops. One backward probe of (status, started_at) per status."""
    newest = 0
    for status in PRUNABLE:
        found = connection.execute(
            sa.select(sync_runs.c.id)
            .where(sync_runs.c.status == status, sync_runs.c.started_at < cutoff)
            .order_by(sync_runs.c.started_at.desc(), sync_runs.c.id.desc())
            .limit(1)
        ).scalar()
        newest = max(newest, found or 0)
    return newest


def _batch(
    connection: Connection, *, after: int, upto: int, size: int, cutoff: datetime
) -> tuple[int, int, int]:
    """Delete the prunable runs among the next ``size`` ids after ``after`` (up to ``upto``);
    returns (the last id looked at, how many runs were looked at, rows deleted)."""
    ids = (
        sa.select(sync_runs.c.id)
        .where(sync_runs.c.id > after, sync_runs.c.id <= upto)
        .order_by(sync_runs.c.id)
        .limit(size)
        .subquery()
    )
    end, examined = connection.execute(sa.select(sa.func.max(ids.c.id), sa.func.count())).one()
    if end is None:
        return upto, 0, 0
    deleted = connection.execute(
        sync_runs.delete().where(sync_runs.c.id > after, sync_runs.c.id <= end, *prunable(cutoff))
    ).rowcount
    return int(end), int(examined), deleted


def prune_runs(
    engine: Engine,
    retention: timedelta,
    *,
    after: int = 0,
    at: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    max_seconds: float | None = 30.0,
    lock_wait: timedelta = LOCK_WAIT,
) -> PruneReport:
    """One pass: delete the runs that wrote nothing and started more than ``retention``
    before ``at`` (now), from id ``after`` on, ``batch_size`` ids a statement, each batch in
    its own transaction; stops at ``max_seconds`` (None: when done). Raises SQLAlchemy's
    errors other than a lock or a reference met (the caller translates them)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    started = time.monotonic()
    cutoff = (at or now()) - retention
    wait_ms = max(1, int(lock_wait.total_seconds() * 1000))
    postgres = engine.dialect.name == "postgresql"
    deleted = examined = batches = 0
    cursor = after
    stopped: Stopped = "done"
    with engine.begin() as connection:
        upto = _last_before(connection, cutoff)
    while cursor < upto:
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            stopped = "time"
            break
        try:
            immediate = engine.connect().execution_options(sqlite_immediate=True)
            with immediate as connection, connection.begin():
                if postgres:
                    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")
                end, looked, gone = _batch(
                    connection, after=cursor, upto=upto, size=batch_size, cutoff=cutoff
                )
        except exc.DBAPIError as error:
            met = _met(error)
            if met is None:
                raise
            stopped = met
            logger.info("runs.prune_interrupted", reason=met, error=describe_db_error(error))
            break
        batches += 1
        deleted += gone
        examined += looked
        cursor = end
    return PruneReport(
        deleted=deleted,
        examined=examined,
        batches=batches,
        seconds=time.monotonic() - started,
        cursor=cursor,
        stopped=stopped,
    )


def _met(error: exc.DBAPIError) -> Literal["lock", "reference"] | None:
    """Whether ``error`` is a lock waited for too long or a reference made during the batch:
    the pass ends there and the next call tries again."""
    state = getattr(error.orig, "sqlstate", None)
    if state == LOCK_NOT_AVAILABLE:
        return "lock"
    if state == FOREIGN_KEY_VIOLATION or (
        isinstance(error, exc.IntegrityError) and "FOREIGN KEY" in str(error.orig).upper()
    ):
        return "reference"
    if isinstance(error, exc.OperationalError) and "locked" in str(error.orig):
        return "lock"  # SQLite: busy past busy_timeout
    return None


class RunPruner:
    """Prunes on behalf of a long-running process (the daemon, a worker), remembering where
    its last pass ended so that a call looks only at the runs that aged past the cutoff
    since, and starting from the first run again every :data:`RESCAN_EVERY`. Never raises:
    a failure is logged, and the next call tries again."""

    def __init__(
        self,
        engine: Engine,
        retention: timedelta,
        *,
        batch_size: int = BATCH_SIZE,
        max_seconds: float | None = 30.0,
        rescan_every: timedelta = RESCAN_EVERY,
    ) -> None:
        self.engine = engine
        self.retention = retention
        self.batch_size = batch_size
        self.max_seconds = max_seconds
        self.rescan_every = rescan_every
        self.cursor = 0
        self._pass_started: float | None = None
        self._caught_up = False

    @classmethod
    def from_settings(
        cls, engine: Engine, settings: Settings, *, max_seconds: float | None = 30.0
    ) -> RunPruner | None:
        """The pruner ``REGIONSYNC_RUNS_RETENTION`` asks for; None when it is ``off``."""
        if settings.runs_retention is None:
            return None
        return cls(engine, settings.runs_retention, max_seconds=max_seconds)

    def prune(self, at: datetime | None = None) -> PruneReport | None:
        """One pass from the cursor; logs ``runs.pruned`` with its counts. None if it failed."""
        clock = time.monotonic()
        if self._pass_started is None or (
            self._caught_up and clock - self._pass_started >= self.rescan_every.total_seconds()
        ):
            self.cursor, self._pass_started, self._caught_up = 0, clock, False
        try:
            report = prune_runs(
                self.engine,
                self.retention,
                after=self.cursor,
                at=at,
                batch_size=self.batch_size,
                max_seconds=self.max_seconds,
            )
        except exc.SQLAlchemyError as error:
            logger.warning(
                "runs.prune_failed",
                error=describe_db_error(error),
                hint="the next prune tries again",
            )
            return None
        self.cursor = report.cursor
        self._caught_up = self._caught_up or report.complete
        logger.info(
            "runs.pruned",
            deleted=report.deleted,
            examined=report.examined,
            batches=report.batches,
            seconds=round(report.seconds, 3),
            stopped=report.stopped,
            retention_s=int(self.retention.total_seconds()),
        )
        return report


__all__ = ["BATCH_SIZE", "PruneReport", "RunPruner", "prunable", "prune_runs"]
