"""Durations as operators write them: ``30s``, ``15m``, ``3h``, ``1d``."""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhd])\s*$", re.IGNORECASE)


def parse_duration(text: str) -> timedelta | None:
    """The duration ``text`` means, or None when it is not of the form ``<n><s|m|h|d>``."""
    match = _PATTERN.match(text)
    if not match or int(match.group(1)) == 0:
        return None
    return timedelta(seconds=int(match.group(1)) * UNITS[match.group(2).lower()])


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
