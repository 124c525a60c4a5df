"""One sync: take the lock, record the run, fetch, and apply the snapshot in one transaction.

``run_sync`` is the single entry point shared by ``regionsync run`` and the daemon. It returns
a :class:`SyncResult` for a run that succeeded or was skipped, and raises a
:class:`~regionsync.errors.RegionSyncError` for one that failed, after recording it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from regionsync.errors import GuardError, RegionSyncError, one_line
from regionsync.logs import redact
from regionsync.notify import outbox
from regionsync.records import Snapshot, Source
from regionsync.region_lines import DEFAULT_LIMIT, RegionLines
from regionsync.settings import DEFAULT_ACCOUNT
from regionsync.store import answers, changeset, runs
from regionsync.store.changeset import Change
from regionsync.store.engine import describe_db_error, translated_errors
from regionsync.store.lock import sync_lock
from regionsync.store.runs import Counts
from regionsync.store.schema import require_current
from regionsync.store.tables import RunTrigger

if TYPE_CHECKING:
    from regionsync.settings import Settings

logger = structlog.get_logger("regionsync.sync")
SKIPPED_REASON = "another sync holds the lock"


@dataclass
class SyncResult:
    """How a sync that did not fail ended (a failed one raises).

    ``changes`` are the first changes by region id, as many as the run logs (all of them
    for a dry run); ``counts`` counts them all. ``reason`` says why a run was skipped.
    """

    status: Literal["succeeded", "skipped", "dry-run"]
    run_id: int | None = None
    account: str = DEFAULT_ACCOUNT
    counts: Counts = field(default_factory=Counts)
    changes: list[Change] = field(default_factory=list)
    duration: float = 0.0
    reason: str | None = None
    #: The answer was the last applied one, the regions untouched since: no diff was needed.
    unchanged_answer: bool = False


@dataclass(frozen=True)
class Guard:
    """The limits a run keeps: the mass-removal and rejected-records guards (docs/sync.md,
    *The sync*), and how many per-region lines it logs (docs/sync.md, *Logs*)."""

    max_removal_fraction: float = 0.5
    allow_mass_removal: bool = False
    max_reject_fraction: float = 0.5
    region_lines: int = DEFAULT_LIMIT

    @classmethod
    def from_settings(cls, settings: Settings, *, allow_mass_removal: bool = False) -> Guard:
        return cls(
            max_removal_fraction=settings.max_removal_fraction,
            allow_mass_removal=allow_mass_removal,
            max_reject_fraction=settings.max_reject_fraction,
            region_lines=settings.log_region_lines,
        )

    def check(self, removing: int, active: int) -> None:
        if self.allow_mass_removal or active == 0 or removing == 0:
            return
        if removing / active > self.max_removal_fraction:
            raise GuardError(
                f"refusing to remove {removing} of {active} active regions "
                f"({removing / active:.0%} > {self.max_removal_fraction:.0%}); if the API is "
                "right, run again with --allow-mass-removal or raise "
                "REGIONSYNC_MAX_REMOVAL_FRACTION"
            )

    def check_rejects(self, snapshot: Snapshot) -> None:
        """Refuse a snapshot made mostly (or only) of rejected records."""
        rejected, fetched = snapshot.rejected_count, snapshot.fetched
        if rejected == 0:
            return
        if rejected == fetched:
            raise GuardError(
                f"every one of the {fetched} records was rejected (the record.rejected lines "
                "say why); nothing was applied"
            )
        if rejected / fetched > self.max_reject_fraction:
            raise GuardError(
                f"refusing to apply: {rejected} of {fetched} records were rejected, more than "
                f"REGIONSYNC_MAX_REJECT_FRACTION ({self.max_reject_fraction:g}) allows; to apply "
                "the valid ones anyway, raise it (1 turns the check off)"
            )


@translated_errors("syncing")
def run_sync(
    engine: Engine,
    source: Source,
    *,
    account: str = DEFAULT_ACCOUNT,
    trigger: RunTrigger = "cli",
    guard: Guard | None = None,
    notify: outbox.OutboxPolicy | None = None,
) -> SyncResult:
    """Sync ``account`` once under its lock; see the module docstring for how it ends.

    ``notify`` says which changes to queue for the webhook (None: none, only ``NOTIFY``).
    """
    guard = guard or Guard()
    started = time.monotonic()
    require_current(engine)
    log = logger.bind(account=account, trigger=trigger, source=source.description)
    with sync_lock(engine, account) as connection:
        if connection is None:
            with engine.begin() as other:
                run_id = runs.open_run(
                    other,
                    account=account,
                    trigger=trigger,
                    source=source.description,
                    skipped=SKIPPED_REASON,
                )
            log.info("sync.skipped", run_id=run_id, reason=SKIPPED_REASON)
            return SyncResult("skipped", run_id, account, reason=SKIPPED_REASON)

        with connection.begin():
            run_id = runs.open_run(
                connection, account=account, trigger=trigger, source=source.description
            )
            abandoned = runs.close_abandoned(connection, account=account, except_run=run_id)
        with structlog.contextvars.bound_contextvars(run_id=run_id):
            log.info("sync.started", closed_abandoned_runs=abandoned)
            lines = RegionLines(log, guard.region_lines)
            seen = Counts()
            try:
                # Translated here rather than only at the entry point: the failure is
                # recorded in sync_runs.error, in our words.
                with translated_errors("applying the sync"):
                    if connection.dialect.name == "postgresql":
                        # One transaction from the fetch on: the parse stages the records as
                        # it validates them (changeset.StreamedStage), which pays off when
                        # there is something to apply, not when the last answer is
                        # remembered (this one likely repeats it).
                        with connection.begin():
                            expected = answers.remembered(connection, account)
                            wanted = expected is None
                            with changeset.streamed_stage(connection, wanted=wanted) as streamed:
                                snapshot = _fetch(source, log, lines)
                            seen = Counts(snapshot.fetched, rejected=snapshot.rejected_count)
                            planned = _settle(
                                connection,
                                snapshot,
                                account,
                                run_id,
                                guard,
                                lines,
                                notify,
                                streamed,
                            )
                    else:
                        # SQLite: the fetch first, then a write transaction taken at once
                        # (BEGIN IMMEDIATE). A deferred one would read, then find another
                        # account's commit in its way and fail as locked instead of waiting.
                        snapshot = _fetch(source, log, lines)
                        seen = Counts(snapshot.fetched, rejected=snapshot.rejected_count)
                        writing = connection.execution_options(sqlite_immediate=True)
                        with writing.begin():
                            planned = _settle(
                                connection, snapshot, account, run_id, guard, lines, notify, None
                            )
            except BaseException as error:
                lines.summarise(f"not stored; counted in sync_runs WHERE id = {run_id}")
                _record_failure(engine, run_id, error, log, started, seen)
                raise
            result = SyncResult(
                "succeeded",
                run_id,
                account,
                counts=_counts(snapshot, planned),
                changes=planned.changes,
                duration=time.monotonic() - started,
                unchanged_answer=planned.shortcut,
            )
            _log_changes(planned, lines)
            lines.summarise(
                f"changes in region_history WHERE sync_run_id = {run_id} (untracked-only "
                f"updates in regions.updated_at); counts in sync_runs WHERE id = {run_id}"
            )
            log.info(
                "sync.finished",
                status="succeeded",
                duration_s=round(result.duration, 3),
                unchanged_answer=result.unchanged_answer,
                **result.counts.as_dict(),
            )
            return result


@translated_errors("comparing with the database")
def preview(
    engine: Engine,
    source: Source,
    *,
    account: str = DEFAULT_ACCOUNT,
    guard: Guard | None = None,
) -> SyncResult:
    """``--dry-run``: fetch, validate and diff in full; write nothing, take no lock, record
    no run."""
    guard = guard or Guard()
    started = time.monotonic()
    require_current(engine)
    log = logger.bind(account=account, trigger="dry-run", source=source.description)
    lines = RegionLines(log, guard.region_lines)
    try:
        snapshot = _fetch(source, log, lines)
        guard.check_rejects(snapshot)
        # Staging happens inside a transaction that is rolled back, temporary tables included.
        with engine.connect() as connection, connection.begin() as transaction:
            planned = _plan(connection, snapshot, account, guard, details=None)
            transaction.rollback()
    finally:
        lines.summarise("not stored (dry run)")
    return SyncResult(
        "dry-run",
        account=account,
        counts=_counts(snapshot, planned),
        changes=planned.changes,
        duration=time.monotonic() - started,
    )


def _fetch(
    source: Source, log: structlog.typing.FilteringBoundLogger, lines: RegionLines
) -> Snapshot:
    log.info("fetch.started")
    snapshot = source.fetch()
    shown = snapshot.rejected[: lines.remaining]
    for rejection in shown:
        lines.warning("record.rejected", region_id=rejection.region_id, reason=rejection.reason)
    lines.omit("record.rejected", snapshot.rejected_count - len(shown))
    for region_id in snapshot.duplicates:
        lines.warning("record.duplicate", region_id=region_id, resolution="last copy wins")
    log.info(
        "fetch.finished",
        fetched=snapshot.fetched,
        valid=len(snapshot.records),
        rejected=snapshot.rejected_count,
    )
    return snapshot


def _plan(
    connection: Connection,
    snapshot: Snapshot,
    account: str,
    guard: Guard,
    details: int | None,
    streamed: changeset.StreamedStage | None = None,
) -> changeset.Plan:
    planned = changeset.plan(
        connection, snapshot, account=account, details=details, streamed=streamed
    )
    guard.check(planned.counts["removed"], planned.active_before)
    return planned


def _apply(
    connection: Connection,
    snapshot: Snapshot,
    account: str,
    run_id: int,
    guard: Guard,
    details: int,
    notify: outbox.OutboxPolicy | None,
    streamed: changeset.StreamedStage | None,
) -> changeset.Plan:
    """Plan, guard and apply in the caller's transaction, the run's row closed in it too."""
    planned = _plan(connection, snapshot, account, guard, details, streamed)
    if planned.total:
        changeset.apply(
            connection, planned, account=account, run_id=run_id, at=snapshot.received_at
        )
    changeset.unstage(connection)
    runs.finish_run(connection, run_id, status="succeeded", counts=_counts(snapshot, planned))

    # Notifications: after the history and counts, in the same transaction.
    outbox.enqueue(connection, run_id=run_id, policy=notify)
    return planned


def _settle(
    connection: Connection,
    snapshot: Snapshot,
    account: str,
    run_id: int,
    guard: Guard,
    lines: RegionLines,
    notify: outbox.OutboxPolicy | None,
    streamed: changeset.StreamedStage | None,
) -> changeset.Plan:
    """In the caller's transaction: the remembered answer again costs only the run's row
    (docs/sync.md, *Nothing to do*); any other answer is planned, guarded and applied."""
    guard.check_rejects(snapshot)
    digest = answers.content_digest(snapshot)
    # Read after the fetch: the regions may have been written while it waited.
    if answers.remembered(connection, account) == digest:
        return _nothing_to_apply(connection, snapshot, run_id)
    planned = _apply(
        connection, snapshot, account, run_id, guard, lines.remaining, notify, streamed
    )
    answers.remember(connection, account, digest, run_id=run_id, snapshot=snapshot)
    return planned


def _nothing_to_apply(connection: Connection, snapshot: Snapshot, run_id: int) -> changeset.Plan:
    """The remembered answer again: what the full diff would find (every record unchanged),
    without staging or diffing; the run's row is the only write."""
    planned = changeset.Plan(unchanged=len(snapshot.records), shortcut=True)
    runs.finish_run(connection, run_id, status="succeeded", counts=_counts(snapshot, planned))
    return planned


def _counts(snapshot: Snapshot, planned: changeset.Plan) -> Counts:
    return Counts(
        fetched=snapshot.fetched,
        added=planned.counts["added"],
        changed=planned.counts["changed"] + planned.counts["updated"],
        unchanged=planned.unchanged,
        removed=planned.counts["removed"],
        restored=planned.counts["restored"],
        rejected=snapshot.rejected_count,
    )


def _record_failure(
    engine: Engine,
    run_id: int,
    error: BaseException,
    log: structlog.typing.FilteringBoundLogger,
    started: float,
    counts: Counts,
) -> None:
    """Close the run as failed on a fresh connection, in case the sync's own one died.

    The failed apply's transaction was rolled back, its temporary tables with it; ``counts``
    holds what the fetch saw (records received and rejected), nothing applied.
    """
    # An internal error's text is foreign: keep the database password out of sync_runs.error.
    message = redact(_failure_message(error), [engine.url.password or ""])
    code = getattr(error, "code", None)
    duration = round(time.monotonic() - started, 3)
    if isinstance(error, RegionSyncError):
        log.error("sync.failed", error=message, code=code, duration_s=duration)
    else:
        log.exception("sync.failed", error=message, duration_s=duration)
    # Deliberately caught, not translated: failing to record the failure must not hide the
    # error that ended the run, which the caller re-raises.
    try:
        with engine.begin() as fresh:
            runs.finish_run(fresh, run_id, status="failed", error=message, counts=counts)
    except sa.exc.SQLAlchemyError as db_error:
        log.error(
            "sync.failure_not_recorded",
            error=describe_db_error(db_error),
            hint="the next run will close this one as abandoned",
        )


def _failure_message(error: BaseException) -> str:
    if isinstance(error, RegionSyncError):
        return one_line(str(error), limit=500)
    if isinstance(error, KeyboardInterrupt | SystemExit):
        return "interrupted before it finished"
    return one_line(f"internal error: {type(error).__name__}: {error}", limit=500)


def _log_changes(planned: changeset.Plan, lines: RegionLines) -> None:
    """The changes read back (at most the lines left), the others only counted."""
    logged = dict.fromkeys(changeset.KINDS, 0)
    for change in planned.changes:
        lines.info(f"region.{change.kind}", region_id=change.region_id, **change.describe())
        logged[change.kind] += 1
    for kind, number in planned.counts.items():
        lines.omit(f"region.{kind}", number - logged[kind])


__all__ = [
    "Guard",
    "SyncResult",
    "preview",
    "run_sync",
]
