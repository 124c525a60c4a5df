"""The docs pages as the tests read them: a page of ``docs/``, and one section of it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_HEADING = re.compile(r"(#+) (.+)")


def page(name: str) -> str:
    """The Markdown of ``docs/<name>``."""
    return (DOCS / name).read_text()


def section(text: str, heading: str) -> str:
    """The part of ``text`` under ``heading`` (at any level), up to the next heading of the
    same level or above; headings inside fenced code do not count."""
    level = 0
    found: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else _HEADING.fullmatch(line)
        if level and match and len(match.group(1)) <= level:
            break
        if level:
            found.append(line)
        elif match and match.group(2) == heading:
            level = len(match.group(1))
    if not level:
        raise LookupError(f"no heading {heading!r}")
    return "\n".join(found) + "\n"
