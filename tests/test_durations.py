"""Durations as operators write them: ASCII digits and a unit, up to a century, never an
exception (docs/commands.md, *Options are bounded*)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from regionsync.durations import MAX_DURATION, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        (" 15M ", timedelta(minutes=15)),
        ("3 h", timedelta(hours=3)),
        ("36500d", timedelta(days=36500)),
    ],
)
def test_a_duration_is_a_whole_number_and_a_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "\u0661\u0665m",  # Arabic-Indic 15: settings take ASCII digits only, and so do durations
        "\uff11\uff15m",  # full-width 15
        "1\u0665m",
        "0m",
        "1.5h",
        "15",
        "15w",
    ],
)
def test_anything_else_is_not_a_duration(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    "text", ["36501d", "876001h", "2999999d", "999999999999d", "9" * 5000 + "s"]
)
def test_a_duration_longer_than_a_century_is_refused_without_overflow(text: str) -> None:
    assert parse_duration(text) is None


def test_the_longest_duration_is_a_century() -> None:
    assert parse_duration("36500d") == MAX_DURATION == timedelta(days=36500)
