"""The ``sync_runs`` rows: opened as ``running``, closed as succeeded, failed or skipped."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from regionsync.models import sync_runs

ABANDONED = "abandoned: the process running it stopped before it finished"


@dataclass
class Counts:
    fetched: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    restored: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def now() -> datetime:
    return datetime.now(UTC)


def open_run(connection: Connection, *, trigger: str, source: str) -> int:
    """Insert a ``running`` row; the caller commits it before the apply starts."""
    run_id: int = connection.execute(
        sync_runs.insert()
        .values(
            started_at=now(), status="running", trigger=trigger, source=source, **Counts().as_dict()
        )
        .returning(sync_runs.c.id)
    ).scalar_one()
    return run_id


def close_abandoned(connection: Connection, *, except_run: int) -> int:
    """Mark runs left ``running`` by a killed process as failed; only under the sync lock."""
    result = connection.execute(
        sync_runs.update()
        .where(sync_runs.c.status == "running", sync_runs.c.id != except_run)
        .values(status="failed", finished_at=now(), error=ABANDONED)
    )
    return result.rowcount


def finish_run(
    connection: Connection,
    run_id: int,
    *,
    status: str,
    counts: Counts | None = None,
    error: str | None = None,
) -> None:
    values: dict[str, object] = {"status": status, "finished_at": now(), "error": error}
    if counts is not None:
        values.update(counts.as_dict())
    connection.execute(sync_runs.update().where(sync_runs.c.id == run_id).values(**values))


def record_skipped(connection: Connection, *, trigger: str, source: str, reason: str) -> int:
    moment = now()
    run_id: int = connection.execute(
        sync_runs.insert()
        .values(
            started_at=moment,
            finished_at=moment,
            status="skipped",
            trigger=trigger,
            source=source,
            error=reason,
            **Counts().as_dict(),
        )
        .returning(sync_runs.c.id)
    ).scalar_one()
    return run_id


def recent(connection: Connection, limit: int = 10) -> list[sa.RowMapping]:
    return list(
        connection.execute(
            sa.select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit)
        ).mappings()
    )
