"""What ``regionsync status`` reports: recent runs, region counts, and data freshness.

The JSON names are those of the ``sync_health`` view (and ``/healthz``), for the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from regionsync.notify import outbox
from regionsync.store import runs
from regionsync.store.engine import translated_errors
from regionsync.store.lock import LockHolder, lock_holder
from regionsync.store.runs import RunRow
from regionsync.store.schema import require_current
from regionsync.store.tables import regions, sync_runs


@dataclass(frozen=True)
class Freshness:
    """How old the last successful sync is: what ``status``, ``/healthz`` and the
    ``sync_health`` view call fresh or stale."""

    last_success_at: datetime | None
    checked_at: datetime

    @property
    def age(self) -> timedelta | None:
        if self.last_success_at is None:
            return None
        return self.checked_at - self.last_success_at

    def is_fresh(self, max_age: timedelta) -> bool:
        age = self.age
        return age is not None and age < max_age

    def as_json(self) -> dict[str, Any]:
        age = self.age
        return {
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "last_success_age_seconds": None if age is None else round(age.total_seconds(), 3),
        }


@dataclass(frozen=True)
class StatusReport:
    recent_runs: list[RunRow]
    active_regions: int
    removed_regions: int
    last_success_at: datetime | None
    checked_at: datetime
    deliveries: outbox.Backlog | None = None
    #: Failed runs since the last success (all of them when none), as ``sync_health``
    #: counts them: skipped runs count neither way.
    consecutive_failures: int = 0
    #: Active regions whose carrier is enabled.
    enabled_regions: int = 0
    #: Who holds the sync lock right now (PostgreSQL only), see :func:`lock_holder`.
    lock: LockHolder | None = None

    @property
    def lock_warning(self) -> str | None:
        """One line when the sync lock's holder is stuck (held longer than a run can take,
        or waiting for another lock longer than a run ever waits), else None."""
        if self.lock is None or not self.lock.is_stuck():
            return None
        return (
            f"WARNING: the sync lock's holder is stuck ({self.lock.describe()}); "
            "every run is skipped until that session ends"
        )

    @property
    def freshness(self) -> Freshness:
        return Freshness(self.last_success_at, self.checked_at)

    def is_fresh(self, max_age: timedelta) -> bool:
        return self.freshness.is_fresh(max_age)

    def as_json(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            **self.freshness.as_json(),
            "active_regions": self.active_regions,
            "removed_regions": self.removed_regions,
            **(self.deliveries.as_json(self.checked_at) if self.deliveries else {}),
            "consecutive_failures": self.consecutive_failures,
            "lock": self.lock.as_json() if self.lock else None,
            "recent_runs": [run.as_json() for run in self.recent_runs],
        }


@translated_errors("reading the status")
def gather(engine: Engine, *, limit: int = 10) -> StatusReport:
    require_current(engine)
    with engine.connect() as connection:
        recent = runs.recent(connection, limit)
        active, removed, enabled = connection.execute(
            sa.select(
                sa.func.count().filter(regions.c.removed_at.is_(None)),
                sa.func.count().filter(regions.c.removed_at.is_not(None)),
                sa.func.count().filter(regions.c.removed_at.is_(None), regions.c.carrier_enabled),
            )
        ).one()
        last_success = connection.execute(
            sa.select(sa.func.max(sync_runs.c.finished_at)).where(sync_runs.c.status == "succeeded")
        ).scalar_one()
        deliveries = outbox.backlog(connection)
        failures = connection.execute(_consecutive_failures()).scalar_one()
        holder = lock_holder(connection)
    return StatusReport(
        recent_runs=recent,
        active_regions=active,
        removed_regions=removed,
        last_success_at=last_success,
        checked_at=runs.now(),
        deliveries=deliveries,
        consecutive_failures=failures,
        enabled_regions=enabled,
        lock=holder,
    )


def _consecutive_failures() -> sa.Select[Any]:
    table = sync_runs
    last_success = (
        sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0))
        .where(table.c.status == "succeeded")
        .scalar_subquery()
    )
    return (
        sa.select(sa.func.count())
        .select_from(table)
        .where(table.c.status == "failed", table.c.id > last_success)
    )
