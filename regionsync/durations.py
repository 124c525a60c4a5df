"""Durations as operators write them: ``30s``, ``15m``, ``3h``, ``1d``."""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: The longest duration read anywhere (docs/commands.md, *Options are bounded*): past any
#: freshness limit or history an operator means, and far inside what ``timedelta`` and dates
#: can hold once subtracted.
MAX_DURATION = timedelta(days=36500)
#: ASCII digits only, as every setting: ``\d`` would also take Arabic-Indic or full-width ones.
_PATTERN = re.compile(r"\s*([0-9]{1,12})\s*([smhd])\s*", re.IGNORECASE | re.ASCII)


def parse_duration(text: str) -> timedelta | None:
    """The duration ``text`` means, or None when it is not ``<n><s|m|h|d>`` from 1s to
    :data:`MAX_DURATION` (the bound is checked before a ``timedelta`` could overflow)."""
    match = _PATTERN.fullmatch(text)
    if match is None:
        return None
    seconds = int(match.group(1)) * UNITS[match.group(2).lower()]
    if not 0 < seconds <= MAX_DURATION.total_seconds():
        return None
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """A short human form: ``2h 5m``, ``40s``."""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])
