"""One sync: take the lock, record the run, fetch, and apply the snapshot in one transaction.

``run_sync`` is the single entry point shared by ``regionsync run`` and the daemon. It returns
a :class:`SyncResult` for a run that succeeded or was skipped, and raises a
:class:`~regionsync.errors.RegionSyncError` for one that failed, after recording it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from regionsync import diff, outbox, runs
from regionsync.errors import GuardError, RegionSyncError, one_line
from regionsync.lock import sync_lock
from regionsync.models import BigId, UTCDateTime, history_table
from regionsync.records import Snapshot
from regionsync.runs import Counts
from regionsync.schema import require_current
from regionsync.store import describe_db_error, translated_errors

if TYPE_CHECKING:
    from regionsync.kaleyra import RetryPolicy
    from regionsync.settings import Settings

logger = structlog.get_logger("regionsync.sync")
history = history_table
regions = diff.regions
SKIPPED_REASON = "another sync holds the lock"


class Source(Protocol):
    """Where a snapshot comes from: the Kaleyra API or a saved response."""

    @property
    def description(self) -> str:
        """Where the data comes from, safe to store and log (no secret)."""
        ...

    def fetch(self) -> Snapshot: ...


@dataclass(frozen=True)
class FileSource:
    """A saved API response (``--from-file``): replay or backfill without the API."""

    path: Path

    @property
    def description(self) -> str:
        return f"file:{self.path.resolve()}"

    def fetch(self) -> Snapshot:
        from regionsync.records import load_file

        return load_file(self.path)


class ApiSource:
    """Kaleyra's "Get an Agent's Regions"; the HTTP client is imported only when used."""

    def __init__(self, settings: Settings, *, retry: RetryPolicy | None = None) -> None:
        settings.require_kaleyra()
        self.settings = settings
        self.retry = retry

    @property
    def description(self) -> str:
        return self.settings.regions_url

    def fetch(self) -> Snapshot:
        from regionsync.kaleyra import KaleyraClient

        options: dict[str, Any] = {} if self.retry is None else {"retry": self.retry}
        with KaleyraClient(self.settings, **options) as client:
            return client.fetch()


@dataclass
class SyncResult:
    """How a sync ended: ``succeeded``, ``skipped``, or ``dry-run``."""

    status: str
    run_id: int | None = None
    counts: Counts = field(default_factory=Counts)
    changes: list[diff.Change] = field(default_factory=list)
    duration: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Guard:
    """The mass-removal guard of DESIGN.md §3."""

    max_removal_fraction: float = 0.5
    allow_mass_removal: bool = False

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


def run_sync(
    engine: Engine,
    source: Source,
    *,
    trigger: str = "cli",
    guard: Guard | None = None,
    notify: outbox.OutboxPolicy | None = None,
) -> SyncResult:
    """Sync once under the lock; see the module docstring for how it ends.

    ``notify`` says which changes to queue for the webhook (None: none, only ``NOTIFY``).
    """
    guard = guard or Guard()
    started = time.monotonic()
    require_current(engine)
    log = logger.bind(trigger=trigger, source=source.description)
    with sync_lock(engine) as connection:
        if connection is None:
            with translated_errors("recording a skipped run"), engine.begin() as other:
                run_id = runs.record_skipped(
                    other, trigger=trigger, source=source.description, reason=SKIPPED_REASON
                )
            log.info("sync.skipped", run_id=run_id, reason=SKIPPED_REASON)
            return SyncResult("skipped", run_id, error=SKIPPED_REASON)

        with translated_errors("recording the run"), connection.begin():
            run_id = runs.open_run(connection, trigger=trigger, source=source.description)
            abandoned = runs.close_abandoned(connection, except_run=run_id)
        with structlog.contextvars.bound_contextvars(run_id=run_id):
            log.info("sync.started", closed_abandoned_runs=abandoned)
            try:
                snapshot = _fetch(source, log)
                with translated_errors("applying the sync"):
                    result = _apply(connection, snapshot, run_id, guard, notify)
            except BaseException as error:
                _record_failure(engine, run_id, error, log, started)
                raise
            result.duration = time.monotonic() - started
            _log_changes(result.changes, log)
            log.info(
                "sync.finished",
                status="succeeded",
                duration_s=round(result.duration, 3),
                **result.counts.as_dict(),
            )
            return result


def preview(engine: Engine, source: Source, *, guard: Guard | None = None) -> SyncResult:
    """``--dry-run``: fetch, validate and diff; write nothing, take no lock, record no run."""
    guard = guard or Guard()
    started = time.monotonic()
    require_current(engine)
    log = logger.bind(trigger="dry-run", source=source.description)
    snapshot = _fetch(source, log)
    # Staging happens inside a transaction that is rolled back, temporary tables included.
    with (
        translated_errors("comparing with the database"),
        engine.connect() as connection,
        connection.begin() as transaction,
    ):
        counts, planned = _plan(connection, snapshot, guard)
        transaction.rollback()
    return SyncResult(
        "dry-run", counts=counts, changes=planned.changes, duration=time.monotonic() - started
    )


def _fetch(source: Source, log: structlog.typing.FilteringBoundLogger) -> Snapshot:
    log.info("fetch.started")
    snapshot = source.fetch()
    for rejection in snapshot.rejected:
        log.warning("record.rejected", region_id=rejection.region_id, reason=rejection.reason)
    for region_id in snapshot.duplicates:
        log.warning("record.duplicate", region_id=region_id, resolution="last copy wins")
    log.info(
        "fetch.finished",
        fetched=snapshot.fetched,
        valid=len(snapshot.records),
        rejected=len(snapshot.rejected),
    )
    return snapshot


def _plan(connection: Connection, snapshot: Snapshot, guard: Guard) -> tuple[Counts, diff.Plan]:
    diff.stage(connection, snapshot)
    planned = diff.plan(connection)
    counts = Counts(
        fetched=snapshot.fetched,
        added=planned.count("added"),
        changed=planned.count("changed", "updated"),
        unchanged=planned.unchanged,
        removed=planned.count("removed"),
        restored=planned.count("restored"),
        rejected=len(snapshot.rejected),
    )
    guard.check(counts.removed, planned.active_before)
    return counts, planned


def _apply(
    connection: Connection,
    snapshot: Snapshot,
    run_id: int,
    guard: Guard,
    notify: outbox.OutboxPolicy | None = None,
) -> SyncResult:
    with connection.begin():
        counts, planned = _plan(connection, snapshot, guard)
        if planned.changes:
            _write(connection, run_id, snapshot.received_at)
        diff.unstage(connection)
        runs.finish_run(connection, run_id, status="succeeded", counts=counts)

        # Notifications: after the history and counts, in the same transaction.
        outbox.enqueue(connection, run_id=run_id, policy=notify)
    return SyncResult("succeeded", run_id, counts=counts, changes=planned.changes)


def _write(connection: Connection, run_id: int, at: datetime) -> None:
    """Apply the staged snapshot with set-based statements.

    History is computed from the rows as they were, kept aside, and inserted after the
    upsert so that the rows of newly added regions have their foreign key to point at.
    """
    pending = diff.pending_history
    columns = [c.name for c in pending.columns]
    p = diff.present_changes
    was_absent = p.c.kind.in_(("added", "restored"))
    connection.execute(
        pending.insert().from_select(
            columns,
            sa.select(
                p.c.region_id,
                p.c.kind,
                sa.case((was_absent, sa.null()), else_=p.c.carrier_enabled_before),
                p.c.carrier_enabled_after,
                sa.case((was_absent, sa.null()), else_=p.c.hosting_region_before),
                p.c.hosting_region_after,
            ).where(p.c.kind.in_(("added", "changed", "restored"))),
        )
    )
    connection.execute(
        pending.insert().from_select(
            columns,
            sa.select(
                regions.c.id,
                sa.literal("removed"),
                regions.c.carrier_enabled,
                sa.null(),
                regions.c.hosting_region,
                sa.null(),
            ).where(diff.absent),
        )
    )
    connection.execute(regions.update().where(diff.absent).values(removed_at=at, updated_at=at))
    when = sa.literal(at, UTCDateTime())
    connection.execute(_upsert(connection, when))
    connection.execute(
        history.insert().from_select(
            ["sync_run_id", "changed_at", *columns],
            sa.select(sa.literal(run_id, BigId), when, *pending.c).order_by(pending.c.region_id),
        )
    )


def _upsert(connection: Connection, when: sa.ColumnElement[Any]) -> sa.Executable:
    """INSERT ... ON CONFLICT DO UPDATE that touches only rows with a stored field changed."""
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    staged = diff.staged
    stmt = insert(regions).from_select(
        [*("id", *diff.STORED), "first_seen_at", "updated_at", "removed_at"],
        # SQLite needs a WHERE here to parse INSERT ... SELECT ... ON CONFLICT unambiguously.
        sa.select(
            staged.c.id, *(staged.c[name] for name in diff.STORED), when, when, sa.null()
        ).where(sa.true()),
    )
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[regions.c.id],
        set_={
            **{name: excluded[name] for name in diff.STORED},
            "updated_at": excluded.updated_at,
            "removed_at": None,
        },
        where=sa.or_(
            regions.c.removed_at.is_not(None),
            *(regions.c[name].is_distinct_from(excluded[name]) for name in diff.STORED),
        ),
    )


def _record_failure(
    engine: Engine,
    run_id: int,
    error: BaseException,
    log: structlog.typing.FilteringBoundLogger,
    started: float,
) -> None:
    """Close the run as failed on a fresh connection, in case the sync's own one died.

    The failed apply's transaction was rolled back, its temporary tables with it.
    """
    message = _failure_message(error)
    code = getattr(error, "code", None)
    duration = round(time.monotonic() - started, 3)
    if isinstance(error, RegionSyncError):
        log.error("sync.failed", error=message, code=code, duration_s=duration)
    else:
        log.exception("sync.failed", error=message, duration_s=duration)
    try:
        with engine.begin() as fresh:
            runs.finish_run(fresh, run_id, status="failed", error=message)
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


def _log_changes(changes: list[diff.Change], log: structlog.typing.FilteringBoundLogger) -> None:
    for change in changes:
        log.info(f"region.{change.kind}", region_id=change.region_id, **describe(change))


def describe(change: diff.Change) -> dict[str, Any]:
    """A change as log fields: ``{field: [before, after]}``, raw reduced to a flag."""
    fields = {
        name: [before, after] for name, (before, after) in change.fields.items() if name != "raw"
    }
    out: dict[str, Any] = {"changes": fields}
    if "raw" in change.fields and change.kind in ("changed", "updated"):
        out["raw_changed"] = True
    return out


__all__ = [
    "ApiSource",
    "FileSource",
    "Guard",
    "Source",
    "SyncResult",
    "preview",
    "run_sync",
]
