"""Values made safe for a terminal, and laid out as a plain-text table.

Region names come from an API: a hostile ``display_name`` could carry escape sequences
that rewrite the screen or the window title, so control and format characters (ESC, CR,
bidi overrides...) are shown escaped, and long values are cut. CSV is read by spreadsheets
too, which would run a name such as ``=HYPERLINK(...)`` as a formula: such cells are
neutralised unless the raw form is asked for.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Any

#: Unicode categories a terminal would act on instead of showing: controls, format
#: characters (bidi overrides, zero-width), line and paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp"})
MAX_CELL = 80


def clean(text: str, *, limit: int | None = MAX_CELL) -> str:
    """``text`` with unsafe characters escaped (``\\x1b``, ``\\u202e``) and cut to ``limit``."""
    shown = "".join(
        (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        if unicodedata.category(ch) in _UNSAFE
        else ch
        for ch in text
    )
    if limit is not None and len(shown) > limit:
        return shown[: limit - 1] + "…"
    return shown


def cell(value: Any, *, limit: int | None = MAX_CELL) -> str:
    """A value as table text: booleans as yes/no, times in UTC to the second, NULL empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return clean(str(value), limit=limit)


#: What makes a spreadsheet read a cell as a formula (OWASP, *CSV Injection*).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any, *, raw: bool = False) -> str:
    """A value for CSV: ``true``/``false``, ISO 8601 times, NULL empty, numbers as they are.

    Text comes from the API, so by default a cell a spreadsheet would run as a formula gets
    a leading ``'`` (OWASP's advice), and then control characters are escaped as in a
    table. ``raw`` writes text exactly as stored, for programs rather than spreadsheets. A
    number (``management_type_value = -1``) is never prefixed: it cannot be a formula, and
    a ``'`` would turn it into text.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if raw or isinstance(value, int | float):
        return str(value)
    text = str(value)
    return clean(f"'{text}" if text.startswith(_FORMULA_STARTS) else text, limit=None)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return [
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]


__all__ = ["cell", "clean", "csv_cell", "table"]
