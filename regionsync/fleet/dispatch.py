"""Which accounts are due, and their sync jobs deferred: the dispatcher's work.

Each account is synced once per period (its own schedule, else ``REGIONSYNC_SCHEDULE``).
An interval's periods are spread: account ``name`` is due at ``offset(name) + k * period``
(the offset a hash of its name), so a thousand accounts every 15 minutes start a few a
second rather than all at the top of the quarter. A crontab schedule is due at its fire
times. An account is due when no run of it (other than a skipped one) started since its
latest due time, and no job of it is waiting or running: one job per account at a time
(``queueing_lock`` and ``lock`` ``sync:<name>``). A failed run waits for the next period:
a refused key is not hammered. The definition, shared with ``status`` and the fleet's
metrics, is :mod:`regionsync.periods`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from regionsync.daemon.schedule import parse_schedule
from regionsync.periods import Timetables, is_due, latest_due, offset
from regionsync.settings import Settings

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


def timetables(settings: Settings) -> Timetables:
    """Each account's schedule as the dispatcher reads it: its own, else
    ``REGIONSYNC_SCHEDULE``, in ``REGIONSYNC_TIMEZONE``; for ``status`` and the metrics."""
    parse = functools.partial(parse_schedule, timezone=settings.timezone)
    return Timetables(settings.schedule, parse)


def job_lock(account: str) -> str:
    """The ``lock`` and ``queueing_lock`` of an account's sync jobs."""
    return f"sync:{account}"


@dataclass(frozen=True)
class Due:
    """What a dispatch found: the accounts due, and how many were already queued."""

    accounts: list[str]
    queued: int
    considered: int


class Dispatcher:
    """Finds the due accounts; each schedule parsed once (:class:`Timetables`, as ``status``
    and the metrics read them)."""

    def __init__(self, default_schedule: str, timezone: str, implicit_account: str) -> None:
        parse = functools.partial(parse_schedule, timezone=timezone)
        self.timetables = Timetables(default_schedule, parse)
        self.implicit_account = implicit_account

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
            if not is_due(self.timetables.schedule(expression), name, last_start, now):
                continue
            if job_lock(name) in queued:
                skipped += 1
                continue
            due.append(name)
        return Due(due, skipped, len(rows))


__all__ = ["Dispatcher", "Due", "job_lock", "latest_due", "offset", "timetables"]
