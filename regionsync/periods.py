"""When an account is due, and when it is overdue: the one definition that the fleet's
dispatcher, its ``/metrics`` and ``/healthz``, and ``regionsync status`` share
(docs/fleet.md, *Seen from outside*).

- An account is due at ``offset(name) + k * period`` for an interval schedule (the offset a
  hash of its name, so that a thousand accounts spread over the period), at the fire times
  of a crontab schedule.
- It **is due** when no run of it other than a skipped one (by any process, whatever its
  outcome) started since its latest due time; one never run is due from the start.
- It has been **due since** the first due time after that last start; never run, since it
  was added (``accounts.created_at``; the implicit account of an empty accounts table: its
  latest due time).
- It is **overdue** when it has been due for longer than one period (the interval, or a
  crontab's longest gap between fire times): a whole period went by and nobody synced it.

A failed run counts as a start: an account whose key is refused is *failing*, not overdue,
and waits for its next due time. A skipped run does not count: an account whose lock
someone squats on becomes overdue.

Schedules are parsed elsewhere (:mod:`regionsync.daemon.schedule`); this module takes them as
a :class:`Timetable` and imports no subsystem, so that ``status`` (below the daemon and the
fleet) can judge with it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_TICK = timedelta(microseconds=1)


class Timetable(Protocol):
    """A parsed schedule, as :class:`regionsync.daemon.schedule.Schedule` is one."""

    @property
    def interval(self) -> timedelta | None: ...

    def trigger(self, start: datetime) -> Any: ...

    def period(self, *, now: datetime) -> timedelta: ...


def offset(name: str, period: timedelta) -> timedelta:
    """Where in each period ``name`` is due: stable, and spread evenly over the names."""
    seconds = max(1, int(period.total_seconds()))
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"regionsync").digest()
    return timedelta(seconds=int.from_bytes(digest, "big") % seconds)


def latest_due(schedule: Timetable, name: str, now: datetime) -> datetime | None:
    """The latest moment at or before ``now`` at which ``name`` was due."""
    if schedule.interval is not None:
        period = schedule.interval
        start = _EPOCH + offset(name, period)
        if now < start:
            return start - period
        return start + ((now - start) // period) * period
    trigger: Any = schedule.trigger(now)
    # The crontab's fire times: the latest one not after now (looking back a whole cycle).
    moment = trigger.get_next_fire_time(None, now - _longest_gap(schedule, now))
    latest = None
    while moment is not None and moment <= now:
        latest = moment
        moment = trigger.get_next_fire_time(moment, moment + timedelta(seconds=1))
    return latest


def _longest_gap(schedule: Timetable, now: datetime) -> timedelta:
    """A crontab's longest gap between fire times, computed once per schedule (it walks a
    whole calendar cycle: milliseconds each time, seconds for a thousand accounts)."""
    try:
        return _cached_gap(schedule)  # type: ignore[arg-type]  # a frozen dataclass here
    except TypeError:  # a timetable that cannot be a cache key
        return schedule.period(now=now)


@functools.lru_cache(maxsize=256)
def _cached_gap(schedule: Timetable) -> timedelta:
    return schedule.period(now=datetime.now(UTC))


def first_due_after(schedule: Timetable, name: str, moment: datetime) -> datetime | None:
    """The first moment strictly after ``moment`` at which ``name`` is due."""
    if schedule.interval is not None:
        period = schedule.interval
        start = _EPOCH + offset(name, period)
        return start + ((moment - start) // period + 1) * period
    found: datetime | None = schedule.trigger(moment).get_next_fire_time(None, moment + _TICK)
    return found


def is_due(schedule: Timetable, name: str, last_start: datetime | None, now: datetime) -> bool:
    """Whether ``name`` is due: never run, or no run started since its latest due time."""
    if last_start is None:
        return True
    moment = latest_due(schedule, name, now)
    return moment is not None and last_start < moment


@dataclass(frozen=True)
class Lateness:
    """How late one account is, as of ``checked_at``: ``due_since`` None when not due."""

    due_since: datetime | None
    period: timedelta
    checked_at: datetime

    @property
    def due(self) -> bool:
        return self.due_since is not None

    @property
    def due_for(self) -> timedelta:
        """How long it has been due (zero when it is not)."""
        if self.due_since is None:
            return timedelta(0)
        return max(timedelta(0), self.checked_at - self.due_since)

    @property
    def overdue(self) -> bool:
        """Due for longer than one period."""
        return self.due_for > self.period

    def periods_late(self) -> float:
        """How many periods it has been due for."""
        return self.due_for / self.period if self.period else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "due_since": self.due_since.isoformat() if self.due_since else None,
            "due_for_seconds": round(self.due_for.total_seconds(), 3) if self.due else None,
            "overdue": self.overdue,
            "period_seconds": self.period.total_seconds(),
        }


def lateness(
    schedule: Timetable,
    name: str,
    *,
    last_start: datetime | None,
    created_at: datetime | None,
    now: datetime,
    period: timedelta | None = None,
) -> Lateness:
    """How late ``name`` is (see the module docstring); ``period``: the schedule's, when
    the caller has it already."""
    period = period if period is not None else schedule.period(now=now)
    if not is_due(schedule, name, last_start, now):
        return Lateness(None, period, now)
    if last_start is not None:
        since = first_due_after(schedule, name, last_start)
    elif created_at is not None:
        since = created_at
    else:
        since = latest_due(schedule, name, now)
    return Lateness(min(since or now, now), period, now)


class Timetables:
    """Each account's timetable: its own schedule, else ``default``; each expression parsed
    once, and its period computed once (a crontab's takes a few milliseconds)."""

    def __init__(self, default: str, parse: Callable[[str], Timetable]) -> None:
        self.default = default
        self._parse = parse
        self._parsed: dict[str, tuple[Timetable, timedelta | None]] = {}

    def schedule(self, expression: str | None) -> Timetable:
        return self._entry(expression)[0]

    def period(self, expression: str | None, now: datetime) -> timedelta:
        key = self.default if expression is None else expression
        schedule, period = self._entry(expression)
        if period is None:
            period = schedule.period(now=now)
            self._parsed[key] = (schedule, period)
        return period

    def lateness(
        self,
        name: str,
        expression: str | None,
        *,
        last_start: datetime | None,
        created_at: datetime | None,
        now: datetime,
    ) -> Lateness:
        """How late account ``name``, whose own schedule is ``expression``, is at ``now``."""
        return lateness(
            self.schedule(expression),
            name,
            last_start=last_start,
            created_at=created_at,
            now=now,
            period=self.period(expression, now),
        )

    def _entry(self, expression: str | None) -> tuple[Timetable, timedelta | None]:
        key = self.default if expression is None else expression
        found = self._parsed.get(key)
        if found is None:
            found = self._parsed[key] = (self._parse(key), None)
        return found


__all__ = [
    "Lateness",
    "Timetable",
    "Timetables",
    "first_due_after",
    "is_due",
    "lateness",
    "latest_due",
    "offset",
]
