"""``REGIONSYNC_SCHEDULE``: an interval (``15m``) or a crontab expression with cron(8) meaning.

A crontab expression is expanded here, field by field, into the set of values each field
matches, as cron(8) (Vixie cron, as Debian ships it) counts them:

- day-of-week ``0`` and ``7`` are Sunday; ``*`` means ``0-7``, so ``*/2`` is Sun, Tue, Thu, Sat;
- names (``jan``-``dec``, ``sun``-``sat``, any case) may stand for numbers, in ranges too;
- ``a-b/n`` takes every n-th value from a; a step needs ``*`` or a range (``5/15`` is refused);
- when day-of-month and day-of-week are both restricted (neither starts with ``*``), a day
  matching either fires; otherwise both must match.

APScheduler 3's own ``CronTrigger.from_crontab`` reads day-of-week ``0`` as Monday, has no
either-day rule, and its ``CronTrigger`` skips a whole day after a daylight-saving change
(e.g. ``0 0 * * *`` in Europe/Berlin fires on March 31 2024, then April 2), so crontabs run
on :class:`CrontabTrigger`, an APScheduler trigger computed from the expanded sets. Around
daylight-saving changes it does what cron(8) does: a time that occurs twice fires once,
unless the minute or hour field starts with ``*``; a fixed time skipped by the clock going
forward fires when the clock jumps.
"""

from __future__ import annotations

import bisect
import calendar
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import structlog
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from regionsync.durations import parse_duration
from regionsync.errors import ConfigError
from regionsync.settings import Settings

logger = structlog.get_logger("regionsync.daemon.schedule")

SETTING = "REGIONSYNC_SCHEDULE"
FIELDS = "minute hour day-of-month month day-of-week"

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

MONTH_NAMES = {name.lower(): number for number, name in enumerate(calendar.month_abbr) if name}
DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

#: How far ahead the next fire time is searched: the Gregorian calendar repeats every 400
#: years (146,097 days, a whole number of weeks), so a day pattern that occurs at all occurs
#: within one cycle; a year more covers the edges. (28 years, the cycle of 1901-2099, is not
#: enough: 2100 is no leap year, so Sunday 29 February skips from 2088 to 2128.)
SEARCH_DAYS = 146_097 + 366
SEARCH_YEARS = 400
#: How far ahead :meth:`CronSpec.longest_gap` looks to size the daemon's period: the near
#: future a running daemon lives in, 28 years and a margin.
HORIZON_DAYS = 29 * 366

#: Extensions of Quartz, Spring and other crons that cron(8) does not have.
_EXTENSIONS = (
    (re.compile(r"\?"), "?", "no specific value"),
    (re.compile(r"#"), "#", "the n-th weekday of the month"),
    (re.compile(r"^(\d*l|lw)$", re.IGNORECASE), "L", "the last day"),
    (re.compile(r"^(\d+w|lw)$", re.IGNORECASE), "W", "the nearest weekday"),
)

_ELEMENT = re.compile(r"^(?P<start>\*|[a-z0-9]+)(?:-(?P<end>[a-z0-9]+))?(?:/(?P<step>[0-9]+))?$")
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_MINUTES = _Field("minute", 0, 59)
_HOURS = _Field("hour", 0, 23)
_DAYS = _Field("day-of-month", 1, 31)
_MONTHS = _Field("month", 1, 12, MONTH_NAMES)
_WEEKDAYS = _Field("day-of-week", 0, 7, DAY_NAMES)


@dataclass(frozen=True)
class CronSpec:
    """A crontab expression expanded into the values each field matches (Sunday = 0)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool
    #: The minute or hour field starts with ``*``: cron(8)'s "wildcard" jobs, which follow
    #: the new wall clock after a daylight-saving change instead of firing once.
    wildcard_time: bool

    @property
    def either_day(self) -> bool:
        """cron(8)'s rule: both day fields restricted means a day matching either fires."""
        return self.days_restricted and self.weekdays_restricted

    @property
    def times_of_day(self) -> list[int]:
        """The minutes after midnight it fires at, in order."""
        return sorted(h * 60 + m for h in self.hours for m in self.minutes)

    def matching_days(self, start: date, count: int) -> Iterator[date]:
        """The days it fires on among the ``count`` days from ``start``, in order.

        Month by month, over the days the fields allow, so that a sparse schedule
        (29 February on a Sunday) is found centuries ahead in a few thousand steps.
        """
        end = start + timedelta(days=count)
        candidates = range(1, 32) if self.either_day else sorted(self.days)
        year, month = start.year, start.month
        while date(year, month, 1) < end:
            if month in self.months:
                first_weekday, length = calendar.monthrange(year, month)
                for number in candidates:
                    if number > length:
                        break
                    day = date(year, month, number)
                    # monthrange gives the 1st's weekday with Monday = 0; cron counts Sunday = 0.
                    weekday = (first_weekday + number) % 7
                    if start <= day < end and self._day_rule(number, weekday):
                        yield day
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)

    def _day_rule(self, number: int, weekday: int) -> bool:
        """Day ``number`` of a month in :attr:`months`, falling on ``weekday``: does it fire?"""
        if self.either_day:
            return number in self.days or weekday in self.weekdays
        return number in self.days and weekday in self.weekdays

    def longest_gap(self, start: date) -> timedelta:
        """The longest wall-clock time between consecutive fire times from ``start`` on."""
        times = self.times_of_day
        within_day = max((b - a for a, b in itertools.pairwise(times)), default=0)
        firing = list(self.matching_days(start, HORIZON_DAYS))
        if len(firing) < 2:
            return timedelta(days=HORIZON_DAYS)
        widest_days = max((b - a).days for a, b in itertools.pairwise(firing))
        across_days = widest_days * 1440 - (times[-1] - times[0])
        return timedelta(minutes=max(within_day, across_days))


class CrontabTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler ships no type hints
    """An APScheduler trigger firing when a :class:`CronSpec` matches the wall clock."""

    def __init__(self, spec: CronSpec, timezone: ZoneInfo, expression: str = "") -> None:
        self.spec = spec
        self.timezone = timezone
        self.expression = expression
        self._times = spec.times_of_day

    def __str__(self) -> str:
        return f"cron[{self.expression}, {self.timezone.key}]"

    def __repr__(self) -> str:
        return f"<CrontabTrigger {self.expression!r} timezone={self.timezone.key!r}>"

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The first fire time after the previous one, or at or after ``now`` at first."""
        if previous_fire_time is not None:
            moment = previous_fire_time.astimezone(UTC) + timedelta(microseconds=1)
        else:
            moment = now
        found = self.first_at_or_after(moment)
        if found is None:
            # APScheduler drops a job whose trigger returns None: never silently.
            logger.error(
                "schedule.exhausted",
                schedule=self.expression,
                after=moment.isoformat(),
                searched_years=SEARCH_YEARS,
                hint=f"{SETTING} never fires again; the daemon will not sync until restarted "
                "with another schedule",
            )
        return found

    def first_at_or_after(self, moment: datetime) -> datetime | None:
        """The first fire time at or after ``moment``, in UTC.

        UTC because Python compares two datetimes of one time zone by wall time, ignoring
        ``fold``: the two 02:30 of a night the clock goes back would compare equal.
        """
        moment = moment.astimezone(UTC)
        local = moment.astimezone(self.timezone)
        # A day before, in case the clock fell back across midnight.
        first_day = local.date() - timedelta(days=1)
        for day in self.spec.matching_days(first_day, SEARCH_DAYS):
            if self._clock_changes(day):
                found = [t for t in self._instants_on(day) if t >= moment]
                if found:
                    return min(found)
            elif day == local.date():
                index = bisect.bisect_left(self._times, _minute_ceiling(local))
                if index < len(self._times):
                    return self._wall(day, self._times[index]).astimezone(UTC)
            elif day > local.date():
                return self._wall(day, self._times[0]).astimezone(UTC)
        return None

    def _clock_changes(self, day: date) -> bool:
        start = datetime.combine(day, time(0), self.timezone).utcoffset()
        end = datetime.combine(day + timedelta(days=1), time(0), self.timezone).utcoffset()
        return start != end

    def _wall(self, day: date, minute_of_day: int) -> datetime:
        hour, minute = divmod(minute_of_day, 60)
        return datetime.combine(day, time(hour, minute), self.timezone)

    def _instants_on(self, day: date) -> list[datetime]:
        """Every fire time (in UTC) of a day on which the clock changes, as cron(8) does."""
        instants: list[datetime] = []
        for minute_of_day in self._times:
            first = self._wall(day, minute_of_day)
            second = first.replace(fold=1)
            if first.utcoffset() == second.utcoffset():
                instants.append(first)
            elif _exists(first):
                # Repeated by the clock going back: fixed times fire once.
                instants += [first, second] if self.spec.wildcard_time else [first]
            elif not self.spec.wildcard_time:
                # Skipped by the clock going forward: fixed times fire when it jumps.
                instants.append(self._jump_after(second))
        return sorted({instant.astimezone(UTC) for instant in instants})

    def _jump_after(self, before: datetime) -> datetime:
        """The instant the clock jumps forward, found from a moment shortly before it."""
        moment = before.astimezone(UTC)
        offset = moment.astimezone(self.timezone).utcoffset()
        while (moment + _MINUTE).astimezone(self.timezone).utcoffset() == offset:
            moment += _MINUTE
        return moment + _MINUTE


def _exists(wall: datetime) -> bool:
    """Whether a local time exists (is not skipped by the clock going forward)."""
    back = wall.astimezone(UTC).astimezone(wall.tzinfo)
    return back.replace(tzinfo=None, fold=0) == wall.replace(tzinfo=None, fold=0)


def _minute_ceiling(local: datetime) -> int:
    minute = local.hour * 60 + local.minute
    return minute + 1 if local.second or local.microsecond else minute


@dataclass(frozen=True)
class Schedule:
    """A parsed ``REGIONSYNC_SCHEDULE``: an ``interval`` or a ``cron`` spec, in ``timezone``."""

    expression: str
    timezone: ZoneInfo
    interval: timedelta | None = None
    cron: CronSpec | None = None

    def trigger(self, start: datetime) -> BaseTrigger:
        """The APScheduler trigger for a daemon started at ``start`` (which also runs then)."""
        if self.interval is not None:
            # In UTC: an interval is elapsed time, whatever the wall clock does.
            return IntervalTrigger(
                seconds=int(self.interval.total_seconds()),
                start_date=start.astimezone(UTC) + self.interval,
                timezone=UTC,
            )
        assert self.cron is not None
        return CrontabTrigger(self.cron, self.timezone, self.expression)

    def next_fire_times(self, count: int, *, now: datetime) -> list[datetime]:
        """The next ``count`` fire times after ``now`` (for an interval: of a daemon started
        at ``now``), as the daemon's trigger computes them."""
        trigger = self.trigger(now)
        times: list[datetime] = []
        previous: datetime | None = None
        while len(times) < count:
            fire = trigger.get_next_fire_time(previous, now)
            if fire is None:
                break
            if fire > now:
                times.append(fire.astimezone(self.timezone))
            previous = fire
        return times

    def period(self, *, now: datetime) -> timedelta:
        """The interval, or for a crontab the longest gap between consecutive fire times.

        The daemon sizes its misfire grace time and its health limit from this.
        """
        if self.interval is not None:
            return self.interval
        assert self.cron is not None
        return self.cron.longest_gap(now.astimezone(self.timezone).date())

    def describe(self) -> str:
        if self.interval is not None:
            return f"every {self.expression}"
        return f"cron {self.expression!r} ({self.timezone.key})"


def parse_schedule(expression: str, timezone: str = "UTC") -> Schedule:
    """Parse an interval or a crontab expression; raises :class:`ConfigError` naming the
    setting and what is wrong."""
    text = " ".join(expression.split())
    zone = ZoneInfo(timezone)
    if re.fullmatch(r"\d+ ?[a-zA-Z]+", text):
        interval = parse_duration(text)
        if interval is None:
            raise ConfigError(
                SETTING, f"{text!r} is not an interval: use a positive number with s, m, h or d"
            )
        return Schedule(text, zone, interval=interval)
    if re.fullmatch(r"[0-9]*[.,][0-9]+ ?[a-zA-Z]+", text):
        raise ConfigError(SETTING, f"{text!r} is not an interval: {_whole_hint(text)}")
    return Schedule(text, zone, cron=parse_crontab(text))


def _whole_hint(text: str) -> str:
    """What to write instead of a fractional interval such as ``1.5h``."""
    match = re.fullmatch(r"([0-9]*)[.,]([0-9]+) ?([smhd])", text, re.IGNORECASE)
    advice = "use a whole number of s, m, h or d"
    if match is None:
        return advice
    number = float(f"{match.group(1) or 0}.{match.group(2)}")
    seconds = number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(3).lower()]
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{advice}, e.g. {int(seconds / size)}{unit}"
    return advice


def parse_crontab(expression: str) -> CronSpec:
    """Expand a 5-field crontab expression (or an ``@daily``-style alias) as cron(8) does.

    Messages echo the expression as written; only name lookups ignore case.
    """
    shown = expression.strip()
    text = shown
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            known = ", ".join(ALIASES)
            raise ConfigError(SETTING, f"unknown alias {shown!r}; use one of {known}")
        text = ALIASES[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        raise ConfigError(
            SETTING,
            f"expected an interval like 15m or 5 crontab fields ({FIELDS}), "
            f"got {len(parts)} field{'' if len(parts) == 1 else 's'} in {shown!r}",
        )
    minute, hour, dom, month, dow = parts
    spec = CronSpec(
        minutes=_expand(minute, _MINUTES),
        hours=_expand(hour, _HOURS),
        days=_expand(dom, _DAYS),
        months=_expand(month, _MONTHS),
        weekdays=frozenset(d % 7 for d in _expand(dow, _WEEKDAYS)),
        days_restricted=not dom.startswith("*"),
        weekdays_restricted=not dow.startswith("*"),
        wildcard_time=minute.startswith("*") or hour.startswith("*"),
    )
    if not spec.either_day and not any(
        day <= _longest_month(m) for m in spec.months for day in spec.days
    ):
        raise ConfigError(SETTING, f"{shown!r} never fires: no such day in the months it names")
    return spec


def _expand(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for element in text.split(","):
        _refuse_extensions(element, field, text)
        match = _ELEMENT.match(element.lower())
        if not match:
            raise _field_error(field, text, f"cannot read {element!r}")
        start_text, end_text, step_text = match.group("start", "end", "step")
        if start_text == "*":
            if end_text is not None:
                raise _field_error(field, text, f"{element!r}: '*' cannot start a range")
            start, end = field.low, field.high
        else:
            start = _number(start_text, field, text, element)
            if end_text is None and step_text is not None:
                raise _field_error(
                    field,
                    text,
                    f"{element!r}: a step needs '*' or a range, "
                    f"e.g. {element.split('/')[0]}-{field.high}/{step_text}",
                )
            end = start if end_text is None else _number(end_text, field, text, element)
        if start > end:
            raise _field_error(field, text, f"{element!r}: the range runs backwards")
        step = 1 if step_text is None else int(step_text)
        if step < 1:
            raise _field_error(field, text, f"{element!r}: the step must be at least 1")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _refuse_extensions(element: str, field: _Field, text: str) -> None:
    for pattern, name, meaning in _EXTENSIONS:
        if pattern.search(element):
            raise _field_error(
                field,
                text,
                f"{element!r} uses '{name}' ({meaning}), an extension of other crons "
                "that cron(8) lacks",
            )


def _number(token: str, field: _Field, text: str, element: str) -> int:
    """``token`` is lower-cased; the message shows it as written in ``element``."""
    if token.isdigit():
        value = int(token)
    elif field.names is not None and token in field.names:
        value = field.names[token]
    else:
        written = element[element.lower().index(token) :][: len(token)]
        allowed = "a number" if field.names is None else "a number or a 3-letter name"
        raise _field_error(field, text, f"{written!r} is not {allowed}")
    if not field.low <= value <= field.high:
        raise _field_error(field, text, f"{value} is outside {field.low}-{field.high}")
    return value


def _field_error(field: _Field, text: str, why: str) -> ConfigError:
    return ConfigError(SETTING, f"{field.name} field {text!r}: {why}")


def _longest_month(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def load_schedule(settings: Settings) -> Schedule:
    """The configured schedule, in the configured time zone."""
    return parse_schedule(settings.schedule, settings.timezone)


def next_fire_times(
    settings: Settings, count: int, *, now: datetime | None = None
) -> list[datetime]:
    """What ``regionsync schedule --count N`` prints: the next fire times after ``now``."""
    return load_schedule(settings).next_fire_times(count, now=now or datetime.now(UTC))


__all__ = [
    "CronSpec",
    "CrontabTrigger",
    "Schedule",
    "load_schedule",
    "next_fire_times",
    "parse_crontab",
    "parse_schedule",
]
