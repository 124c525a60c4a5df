"""The ``sync_runs`` rows: opened as ``running``, closed as succeeded, failed or skipped."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from regionsync.settings import DEFAULT_ACCOUNT
from regionsync.store.tables import RunOutcome, RunStatus, RunTrigger, sync_runs

ABANDONED = "abandoned: the process running it stopped before it finished"


@dataclass
class Counts:
    """What a run counted, named after the ``sync_runs`` columns it fills (and the log fields).

    ``changed`` keeps the column's meaning: present regions with any stored field changed,
    tracked or not, i.e. the changeset's ``changed`` (a tracked field) plus its ``updated``
    (untracked fields only).
    """

    fetched: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    restored: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class RunRow:
    """One ``sync_runs`` row as read back, its fields in the table's column order."""

    id: int
    account: str
    started_at: datetime
    finished_at: datetime | None
    status: RunStatus
    trigger: RunTrigger
    source: str
    fetched: int
    added: int
    changed: int
    unchanged: int
    removed: int
    restored: int
    rejected: int
    error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in asdict(self).items()
        }


def now() -> datetime:
    return datetime.now(UTC)


def open_run(
    connection: Connection,
    *,
    account: str = DEFAULT_ACCOUNT,
    trigger: RunTrigger,
    source: str,
    skipped: str | None = None,
) -> int:
    """Insert a ``running`` row, which the caller commits before the apply starts; or, given
    why the run was ``skipped``, a row closed at once as skipped, the reason in ``error``."""
    moment = now()
    run_id: int = connection.execute(
        sync_runs.insert()
        .values(
            account=account,
            started_at=moment,
            finished_at=None if skipped is None else moment,
            status="running" if skipped is None else "skipped",
            trigger=trigger,
            source=source,
            error=skipped,
            **Counts().as_dict(),
        )
        .returning(sync_runs.c.id)
    ).scalar_one()
    return run_id


def close_abandoned(
    connection: Connection, *, account: str = DEFAULT_ACCOUNT, except_run: int
) -> int:
    """Mark the account's runs left ``running`` by a killed process as failed; only under
    the account's sync lock."""
    result = connection.execute(
        sync_runs.update()
        .where(
            sync_runs.c.account == account,
            sync_runs.c.status == "running",
            sync_runs.c.id != except_run,
        )
        .values(status="failed", finished_at=now(), error=ABANDONED)
    )
    return result.rowcount


def finish_run(
    connection: Connection,
    run_id: int,
    *,
    status: RunOutcome,
    counts: Counts | None = None,
    error: str | None = None,
) -> None:
    values: dict[str, object] = {"status": status, "finished_at": now(), "error": error}
    if counts is not None:
        values.update(counts.as_dict())
    connection.execute(sync_runs.update().where(sync_runs.c.id == run_id).values(**values))


def recent(connection: Connection, limit: int = 10, *, account: str | None = None) -> list[RunRow]:
    """The latest runs (of ``account``, or of all), newest first."""
    query = sa.select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit)
    if account is not None:
        query = query.where(sync_runs.c.account == account)
    rows = connection.execute(query).mappings()
    return [RunRow(**row) for row in rows]
