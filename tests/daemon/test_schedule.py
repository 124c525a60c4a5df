"""REGIONSYNC_SCHEDULE means what cron(8) means: hand-computed fire times, and generated ones."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from regionsync.daemon.schedule import CrontabTrigger, next_fire_times, parse_schedule
from regionsync.errors import ConfigError
from tests.support import settings_for
from tests.support.cli import Invoke

#: A Friday, noon UTC.
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def fires(expression: str, count: int, *, zone: str = "UTC", now: datetime = NOW) -> list[str]:
    return [t.isoformat() for t in parse_schedule(expression, zone).next_fire_times(count, now=now)]


def days(*stamps: str, at: str = "00:00:00", offset: str = "+00:00") -> list[str]:
    return [f"{stamp}T{at}{offset}" for stamp in stamps]


# Hand-computed against a 2024 calendar (March 1 is a Friday).


@pytest.mark.parametrize("dow", ["0", "7", "sun", "SUN", "Sun"])
def test_sunday_is_0_and_7_and_its_name(dow: str) -> None:
    assert fires(f"0 0 * * {dow}", 3) == days("2024-03-03", "2024-03-10", "2024-03-17")


def test_saturday_and_sunday_as_6_and_7() -> None:
    assert fires("0 0 * * 6,7", 3) == days("2024-03-02", "2024-03-03", "2024-03-09")


def test_a_range_ending_in_7_reaches_sunday() -> None:
    assert fires("0 0 * * 5-7", 4) == days("2024-03-02", "2024-03-03", "2024-03-08", "2024-03-09")


def test_a_day_of_week_step_counts_from_sunday() -> None:
    # */2 over 0-7 is 0,2,4,6: Sun, Tue, Thu, Sat. Noon itself is not "next".
    assert fires("0 12 * * */2", 5) == days(
        "2024-03-02", "2024-03-03", "2024-03-05", "2024-03-07", "2024-03-09", at="12:00:00"
    )


def test_a_stepped_range_of_weekdays() -> None:
    # 1-5/2 is Mon, Wed, Fri.
    assert fires("0 0 * * 1-5/2", 4) == days("2024-03-04", "2024-03-06", "2024-03-08", "2024-03-11")


def test_day_names_in_lists_and_ranges_any_case() -> None:
    assert fires("30 6 * * MON,wed", 3) == days(
        "2024-03-04", "2024-03-06", "2024-03-11", at="06:30:00"
    )
    assert fires("0 0 * * sun-tue", 4) == days(
        "2024-03-03", "2024-03-04", "2024-03-05", "2024-03-10"
    )


def test_month_names() -> None:
    assert fires("0 0 1 jan,JUL *", 3) == days("2024-07-01", "2025-01-01", "2025-07-01")


def test_both_day_fields_restricted_fire_on_either() -> None:
    # The 13th or any Friday.
    assert fires("0 0 13 * 5", 6) == days(
        "2024-03-08", "2024-03-13", "2024-03-15", "2024-03-22", "2024-03-29", "2024-04-05"
    )


def test_a_day_of_month_starting_with_star_must_match_too() -> None:
    # */10 is 1, 11, 21, 31; with a Friday: both, because the field starts with '*'.
    assert fires("0 0 */10 * 5", 3) == days("2024-05-31", "2024-06-21", "2024-10-11")


def test_a_day_of_week_starting_with_star_must_match_too() -> None:
    # */5 over 0-7 is Sunday and Friday; only a 13th that is one of them fires.
    assert fires("0 0 13 * */5", 3) == days("2024-09-13", "2024-10-13", "2024-12-13")


def test_minute_and_hour_lists_ranges_and_steps() -> None:
    assert fires("5,10-12 * * * *", 5) == [
        "2024-03-01T12:05:00+00:00",
        "2024-03-01T12:10:00+00:00",
        "2024-03-01T12:11:00+00:00",
        "2024-03-01T12:12:00+00:00",
        "2024-03-01T13:05:00+00:00",
    ]
    assert fires("*/20 9-10 * * *", 7) == [
        *(f"2024-03-02T{h}:{m}:00+00:00" for h in ("09", "10") for m in ("00", "20", "40")),
        "2024-03-03T09:00:00+00:00",
    ]


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@hourly", ["2024-03-01T13:00:00+00:00", "2024-03-01T14:00:00+00:00"]),
        ("@daily", days("2024-03-02", "2024-03-03")),
        ("@midnight", days("2024-03-02", "2024-03-03")),
        ("@weekly", days("2024-03-03", "2024-03-10")),
        ("@monthly", days("2024-04-01", "2024-05-01")),
        ("@yearly", days("2025-01-01", "2026-01-01")),
        ("@annually", days("2025-01-01", "2026-01-01")),
    ],
)
def test_aliases(alias: str, expected: list[str]) -> None:
    assert fires(alias, 2) == expected


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("30s", ["2024-03-01T12:00:30+00:00", "2024-03-01T12:01:00+00:00"]),
        ("15m", ["2024-03-01T12:15:00+00:00", "2024-03-01T12:30:00+00:00"]),
        ("2h", ["2024-03-01T14:00:00+00:00", "2024-03-01T16:00:00+00:00"]),
        ("1d", ["2024-03-02T12:00:00+00:00", "2024-03-03T12:00:00+00:00"]),
    ],
)
def test_intervals_count_from_the_start(interval: str, expected: list[str]) -> None:
    assert fires(interval, 2) == expected


def test_an_interval_is_elapsed_time_across_a_clock_change() -> None:
    # Berlin goes back from 03:00 CEST to 02:00 CET at 01:00 UTC on 2024-10-27.
    assert fires("15m", 4, zone="Europe/Berlin", now=datetime(2024, 10, 27, 0, 20, tzinfo=UTC)) == [
        "2024-10-27T02:35:00+02:00",
        "2024-10-27T02:50:00+02:00",
        "2024-10-27T02:05:00+01:00",
        "2024-10-27T02:20:00+01:00",
    ]


def test_crontab_times_are_wall_clock_times_of_the_time_zone() -> None:
    # Noon UTC is 07:00 in New York, which moves to daylight time on Sunday 2024-03-10:
    # 09:00 stays 09:00.
    weekdays = ("2024-03-01", "2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07", "2024-03-08")
    assert fires("0 9 * * 1-5", 7, zone="America/New_York") == [
        *days(*weekdays, at="09:00:00", offset="-05:00"),
        "2024-03-11T09:00:00-04:00",
    ]
    assert fires("0 0 * * *", 1, zone="Asia/Kolkata") == ["2024-03-02T00:00:00+05:30"]


def test_no_day_is_skipped_after_the_clock_goes_forward() -> None:
    # APScheduler's own CronTrigger jumps from March 31 to April 2 here.
    now = datetime(2024, 3, 29, 12, tzinfo=UTC)
    assert fires("0 0 * * *", 4, zone="Europe/Berlin", now=now) == [
        "2024-03-30T00:00:00+01:00",
        "2024-03-31T00:00:00+01:00",
        "2024-04-01T00:00:00+02:00",
        "2024-04-02T00:00:00+02:00",
    ]
    assert fires("0 0 1 * *", 2, zone="Europe/Berlin", now=now) == [
        "2024-04-01T00:00:00+02:00",
        "2024-05-01T00:00:00+02:00",
    ]


def test_a_fixed_time_skipped_by_the_clock_fires_when_it_jumps() -> None:
    # 02:00-03:00 does not exist in Berlin on 2024-03-31; cron(8) runs such jobs at 03:00.
    now = datetime(2024, 3, 29, 12, tzinfo=UTC)
    assert fires("30 2 * * *", 3, zone="Europe/Berlin", now=now) == [
        "2024-03-30T02:30:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:30:00+02:00",
    ]
    assert fires("15,45 2 * * *", 4, zone="Europe/Berlin", now=now) == [
        "2024-03-30T02:15:00+01:00",
        "2024-03-30T02:45:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:15:00+02:00",
    ]


def test_a_wildcard_schedule_follows_the_new_clock_when_it_jumps() -> None:
    now = datetime(2024, 3, 31, 0, 50, tzinfo=UTC)  # 01:50 CET
    assert fires("*/30 * * * *", 3, zone="Europe/Berlin", now=now) == [
        "2024-03-31T03:00:00+02:00",
        "2024-03-31T03:30:00+02:00",
        "2024-03-31T04:00:00+02:00",
    ]


def test_a_repeated_hour_fires_a_fixed_time_once_and_a_wildcard_twice() -> None:
    # 02:00-03:00 happens twice in Berlin on 2024-10-27.
    assert fires(
        "30 2 * * *", 3, zone="Europe/Berlin", now=datetime(2024, 10, 25, 12, tzinfo=UTC)
    ) == ["2024-10-26T02:30:00+02:00", "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]
    assert fires(
        "*/30 * * * *", 5, zone="Europe/Berlin", now=datetime(2024, 10, 26, 23, 50, tzinfo=UTC)
    ) == [
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:30:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T02:30:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]


def test_next_fire_times_reads_the_settings() -> None:
    configured = settings_for(
        "sqlite:///unused.db", REGIONSYNC_SCHEDULE="0 0 * * 7", REGIONSYNC_TIMEZONE="Asia/Tokyo"
    )
    assert [t.isoformat() for t in next_fire_times(configured, 2, now=NOW)] == days(
        "2024-03-03", "2024-03-10", offset="+09:00"
    )
    default = settings_for("sqlite:///unused.db")
    assert next_fire_times(default, 1, now=NOW) == [NOW + timedelta(minutes=15)]


@pytest.mark.parametrize(
    ("expression", "now", "period"),
    [
        ("15m", NOW, timedelta(minutes=15)),
        ("*/15 * * * *", NOW, timedelta(minutes=15)),
        ("0 9 * * 1-5", NOW, timedelta(days=3)),  # Friday 09:00 to Monday 09:00
        ("*/5 9-17 * * 1-5", NOW, timedelta(hours=63, minutes=5)),  # Fri 17:55 to Mon 09:00
        ("0 0,12 * * *", NOW, timedelta(hours=12)),
        ("0 0 1 * *", NOW, timedelta(days=31)),
        ("0 0 29 2 *", NOW, timedelta(days=4 * 365 + 1)),
    ],
)
def test_the_period_is_the_longest_gap_between_fire_times(
    expression: str, now: datetime, period: timedelta
) -> None:
    assert parse_schedule(expression).period(now=now) == period


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("", "got 0 fields"),
        ("* * * *", "got 4 fields"),
        ("0 * * * * *", "got 6 fields"),
        ("0 0 * * 8", "day-of-week field '8': 8 is outside 0-7"),
        ("60 * * * *", "minute field '60': 60 is outside 0-59"),
        ("0 24 * * *", "hour field '24'"),
        ("0 0 0 * *", "day-of-month field '0': 0 is outside 1-31"),
        ("0 0 * 13 *", "month field '13'"),
        ("5/15 * * * *", "a step needs '*' or a range, e.g. 5-59/15"),
        ("*/0 * * * *", "the step must be at least 1"),
        ("30-10 * * * *", "the range runs backwards"),
        ("0 0 * * fri-mon", "the range runs backwards"),
        ("*-5 * * * *", "'*' cannot start a range"),
        ("mon * * * *", "'mon' is not a number"),
        ("0 0 * * funday", "'funday' is not a number or a 3-letter name"),
        ("0 0 * * monday", "'monday' is not a number or a 3-letter name"),
        ("0 0 L * *", "'L' uses 'L' (the last day), an extension of other crons that cron(8)"),
        ("0 0 5L * *", "day-of-month field '5L': '5L' uses 'L'"),
        ("0 0 * * 5l", "day-of-week field '5l': '5l' uses 'L'"),
        ("0 0 15W * *", "'15W' uses 'W' (the nearest weekday)"),
        ("0 0 LW * *", "'LW' uses 'L'"),
        ("0 0 ? * *", "'?' uses '?' (no specific value), an extension"),
        ("0 0 * * 1#2", "'1#2' uses '#' (the n-th weekday of the month)"),
        ("0 0 * JUL-Xyz *", "month field 'JUL-Xyz': 'Xyz' is not a number or a 3-letter name"),
        ("0 0 * * MON/2", "e.g. MON-7/2"),
        ("1.5h", "'1.5h' is not an interval: use a whole number of s, m, h or d, e.g. 90m"),
        ("0.5d", "e.g. 12h"),
        ("2,5m", "e.g. 150s"),
        ("0 0 1,,2 * *", "cannot read ''"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("@reboot", "unknown alias '@reboot'"),
        ("0m", "is not an interval"),
        ("15x", "is not an interval"),
    ],
)
def test_invalid_schedules_name_the_setting_and_the_reason(expression: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_schedule(expression)
    assert caught.value.setting == "REGIONSYNC_SCHEDULE"
    assert problem in caught.value.problem
    assert str(caught.value).startswith("REGIONSYNC_SCHEDULE: ")


def test_no_leap_year_in_2100_does_not_end_a_sparse_schedule() -> None:
    # Sunday 29 February: the 28-year cycle breaks at 2100, which is no leap year.
    assert fires("0 0 29 2 */7", 5) == days(
        "2032-02-29", "2060-02-29", "2088-02-29", "2128-02-29", "2156-02-29"
    )
    assert fires("0 0 29 2 */7", 1, now=datetime(2089, 1, 1, tzinfo=UTC)) == days("2128-02-29")


def test_a_trigger_with_no_next_fire_time_says_so() -> None:
    schedule = parse_schedule("0 0 29 2 *")
    # A spec that never fires: parsing refuses one, so build it by hand.
    never = replace(schedule.cron, days=frozenset({30}))
    trigger = CrontabTrigger(never, ZoneInfo("UTC"), "0 0 30 2 *")
    with capture_logs() as logs:
        assert trigger.get_next_fire_time(None, NOW) is None
    assert logs == [
        {
            "event": "schedule.exhausted",
            "log_level": "error",
            "schedule": "0 0 30 2 *",
            "after": NOW.isoformat(),
            "searched_years": 400,
            "hint": "REGIONSYNC_SCHEDULE never fires again; the daemon will not sync until "
            "restarted with another schedule",
        }
    ]


def test_a_day_that_exists_only_on_one_weekday_rule_still_fires() -> None:
    # Both day fields restricted: February 30 never comes, but February's Fridays do.
    assert fires("0 0 30 2 5", 3) == days("2025-02-07", "2025-02-14", "2025-02-21")


# Generated expressions, checked against cron(8)'s rule written out again here.


@dataclass(frozen=True)
class Field:
    text: str
    values: frozenset[int]


MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@st.composite
def fields(draw: st.DrawFn, low: int, high: int, names: tuple[str, ...] = ()) -> Field:
    def show(n: int) -> str:
        index = n - low
        if names and index < len(names) and draw(st.booleans()):
            name = names[index]
            return draw(st.sampled_from([name, name.upper(), name.title()]))
        return str(n)

    texts, values = [], set()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["*", "*/n", "a", "a-b", "a-b/n"]))
        a = draw(st.integers(low, high))
        b = draw(st.integers(a, high))
        n = draw(st.integers(1, high - low + 1))
        if kind == "*":
            texts.append("*")
            values.update(range(low, high + 1))
        elif kind == "*/n":
            texts.append(f"*/{n}")
            values.update(range(low, high + 1, n))
        elif kind == "a":
            texts.append(show(a))
            values.add(a)
        elif kind == "a-b":
            texts.append(f"{show(a)}-{show(b)}")
            values.update(range(a, b + 1))
        else:
            texts.append(f"{show(a)}-{show(b)}/{n}")
            values.update(range(a, b + 1, n))
    return Field(",".join(texts), frozenset(values))


@dataclass(frozen=True)
class Cron:
    minute: Field
    hour: Field
    dom: Field
    month: Field
    dow: Field

    @property
    def text(self) -> str:
        return " ".join(f.text for f in (self.minute, self.hour, self.dom, self.month, self.dow))

    def day_matches(self, day: date) -> bool:
        """cron(8): both day fields restricted (not starting with *) means either; else both."""
        weekdays = {d % 7 for d in self.dow.values}
        by_dom = day.day in self.dom.values
        by_dow = day.isoweekday() % 7 in weekdays
        either = not self.dom.text.startswith("*") and not self.dow.text.startswith("*")
        return day.month in self.month.values and (
            (by_dom or by_dow) if either else (by_dom and by_dow)
        )

    def can_fire(self) -> bool:
        longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}
        either = not self.dom.text.startswith("*") and not self.dow.text.startswith("*")
        return either or any(
            d <= longest.get(m, 31) for m in self.month.values for d in self.dom.values
        )


crons = st.builds(
    Cron,
    minute=fields(0, 59),
    hour=fields(0, 23),
    dom=fields(1, 31),
    month=fields(1, 12, MONTHS),
    dow=fields(0, 7, WEEKDAYS),
)
moments = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)
# Zones without daylight-saving time, so that every wall-clock minute happens exactly once.
ZONES = ("UTC", "Asia/Kolkata", "Asia/Tokyo")


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cron=crons, now=moments, zone=st.sampled_from(ZONES))
def test_generated_crontabs_fire_exactly_at_the_matching_minutes(
    cron: Cron, now: datetime, zone: str
) -> None:
    if not cron.can_fire():
        with pytest.raises(ConfigError, match="never fires"):
            parse_schedule(cron.text, zone)
        return
    schedule = parse_schedule(cron.text, zone)
    got = schedule.next_fire_times(6, now=now)
    assert got, cron.text
    tz = ZoneInfo(zone)
    times_of_day = sorted((h, m) for h in cron.hour.values for m in cron.minute.values)
    expected = []
    day = now.astimezone(tz).date()
    while day <= got[-1].date():
        if cron.day_matches(day):
            for h, m in times_of_day:
                moment = datetime.combine(day, time(h, m), tz)
                if now < moment <= got[-1]:
                    expected.append(moment)
        day += timedelta(days=1)
    assert got == expected, cron.text
    period = schedule.period(now=now)
    assert all(b - a <= period for a, b in itertools.pairwise(got)), cron.text


# The command.


def test_schedule_command_prints_sundays_for_day_of_week_0_and_7(invoke: Invoke) -> None:
    for dow in ("0", "7"):
        started = datetime.now(UTC)
        done = invoke(
            "schedule",
            "--count",
            "3",
            env={"REGIONSYNC_SCHEDULE": f"30 4 * * {dow}", "REGIONSYNC_TIMEZONE": "Europe/Paris"},
        )
        assert done.returncode == 0, done.stderr
        printed = [datetime.fromisoformat(line) for line in done.stdout.splitlines()]
        assert len(printed) == 3
        local = [moment.astimezone(ZoneInfo("Europe/Paris")) for moment in printed]
        for moment, wall in zip(printed, local, strict=True):
            assert (wall.isoweekday(), wall.hour, wall.minute) == (7, 4, 30)
            assert moment.utcoffset() == wall.utcoffset()  # printed in the configured zone
        assert started < printed[0] <= started + timedelta(days=7)
        assert [(b.date() - a.date()).days for a, b in itertools.pairwise(local)] == [7, 7]


def test_schedule_command_prints_an_interval_from_now(invoke: Invoke) -> None:
    started = datetime.now(UTC)
    done = invoke("schedule", env={"REGIONSYNC_SCHEDULE": "90s"})
    assert done.returncode == 0, done.stderr
    printed = [datetime.fromisoformat(line) for line in done.stdout.splitlines()]
    assert len(printed) == 5
    assert started + timedelta(seconds=90) <= printed[0] < started + timedelta(seconds=100)
    assert {b - a for a, b in itertools.pairwise(printed)} == {timedelta(seconds=90)}


def test_schedule_command_refuses_a_bad_expression_with_exit_2(invoke: Invoke) -> None:
    done = invoke("schedule", env={"REGIONSYNC_SCHEDULE": "0 0 * * 8"})
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "regionsync: error: REGIONSYNC_SCHEDULE: day-of-week field '8': 8 is outside 0-7"
    ]
