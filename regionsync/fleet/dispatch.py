"""Which accounts are due, and their sync jobs deferred: the dispatcher's work.

Each account is synced once per period (its own schedule, else ``REGIONSYNC_SCHEDULE``).
An interval's periods are spread: account ``name`` is due at ``offset(name) + k * period``
(the offset a hash of its name), so a thousand accounts every 15 minutes start a few a
second rather than all at the top of the quarter. A crontab schedule is due at its fire
times. An account is due when no run of it (other than a skipped one) started since its
latest due time, and no job of it is waiting or running: one job per account at a time
(``queueing_lock`` and ``lock`` ``sync:<name>``). A failed run waits for the next period:
a refused key is not hammered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from regionsync.daemon.schedule import Schedule, parse_schedule

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

#: Unpaused accounts and when each last started a run that was not skipped.
_LAST_STARTS = sa.text(
    """
    SELECT a.name, a.schedule, last.started_at
    FROM accounts AS a
    LEFT JOIN LATERAL (
        SELECT s.started_at FROM sync_runs AS s
        WHERE s.account = a.name AND s.status <> 'skipped'
        ORDER BY s.id DESC LIMIT 1
    ) AS last ON true
    WHERE a.paused_at IS NULL
    ORDER BY a.name
    """
)
#: The implicit account (an empty accounts table): its last start.
_IMPLICIT_LAST_START = sa.text(
    "SELECT max(started_at) FROM sync_runs WHERE account = :name AND status <> 'skipped'"
)
#: Accounts with a sync job waiting or running.
_QUEUED = sa.text(
    "SELECT queueing_lock FROM procrastinate_jobs"
    " WHERE status IN ('todo', 'doing') AND task_name = :task AND queueing_lock IS NOT NULL"
)


def job_lock(account: str) -> str:
    """The ``lock`` and ``queueing_lock`` of an account's sync jobs."""
    return f"sync:{account}"


def offset(name: str, period: timedelta) -> timedelta:
    """Where in each period ``name`` is due: stable, and spread evenly over the names."""
    seconds = max(1, int(period.total_seconds()))
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"regionsync").digest()
    return timedelta(seconds=int.from_bytes(digest, "big") % seconds)


def latest_due(schedule: Schedule, name: str, now: datetime) -> datetime | None:
    """The latest moment at or before ``now`` at which ``name`` was due."""
    if schedule.interval is not None:
        period = schedule.interval
        start = _EPOCH + offset(name, period)
        if now < start:
            return start - period
        return start + ((now - start) // period) * period
    trigger: Any = schedule.trigger(now)
    # The crontab's fire times: the latest one not after now (looking back a whole cycle).
    moment = trigger.get_next_fire_time(None, now - schedule.period(now=now))
    latest = None
    while moment is not None and moment <= now:
        latest = moment
        moment = trigger.get_next_fire_time(moment, moment + timedelta(seconds=1))
    return latest


@dataclass(frozen=True)
class Due:
    """What a dispatch found: the accounts due, and how many were already queued."""

    accounts: list[str]
    queued: int
    considered: int


class Dispatcher:
    """Finds the due accounts; schedules are parsed once per expression."""

    def __init__(self, default_schedule: str, timezone: str, implicit_account: str) -> None:
        self.default = parse_schedule(default_schedule, timezone)
        self.timezone = timezone
        self.implicit_account = implicit_account
        self._schedules: dict[str, Schedule] = {}

    def schedule(self, expression: str | None) -> Schedule:
        if expression is None:
            return self.default
        found = self._schedules.get(expression)
        if found is None:
            found = self._schedules[expression] = parse_schedule(expression, self.timezone)
        return found

    def due(self, connection: Connection, task_name: str, now: datetime) -> Due:
        rows: Sequence[Any] = connection.execute(_LAST_STARTS).all()
        if not rows:
            last = connection.execute(
                _IMPLICIT_LAST_START, {"name": self.implicit_account}
            ).scalar()
            rows = [(self.implicit_account, None, last)]
        queued = set(connection.execute(_QUEUED, {"task": task_name}).scalars())
        due, skipped = [], 0
        for name, expression, last_start in rows:
            moment = latest_due(self.schedule(expression), name, now)
            if last_start is not None and (moment is None or last_start >= moment):
                continue
            if job_lock(name) in queued:
                skipped += 1
                continue
            due.append(name)
        return Due(due, skipped, len(rows))


__all__ = ["Dispatcher", "Due", "job_lock", "latest_due", "offset"]
