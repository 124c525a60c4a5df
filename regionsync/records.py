"""What a "Get an Agent's Regions" body means: typed region records, rejects, or a failure.

The rules are DESIGN.md §1. Records that break them are rejected one by one (the caller
logs them); a body that is not the documented success shape is a :class:`SourceError`,
never "zero regions". The error-body classifier lives here so that a saved response
(``--from-file``) is judged exactly as a live one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from regionsync.errors import PermanentSourceError, SourceError, TransientSourceError, one_line

MAX_BODY_BYTES = 50 * 1024 * 1024
"""The largest body accepted, from the API or a file (a real one is a few kilobytes)."""

PG_INT_MIN, PG_INT_MAX = -(2**31), 2**31 - 1

#: Kaleyra's documented failure codes, by ``code`` and by ``error.error_code``.
TRANSIENT_CODES = frozenset({"RCS502", "RCS500", "RCS_CHANNEL_INTERNAL_ERROR"})
PERMANENT_CODES = frozenset(
    {"RCS601", "RCS405", "RCS701", "RCS_CHANNEL_DISABLED", "METHOD_NOT_ALLOWED"}
)

STRING_FIELDS = ("region_name", "display_name", "management_type", "hosting_region")
VALUE_FIELDS = ("management_type_value", "managment_type_value")  # the docs' spelling second


@dataclass(frozen=True, slots=True)
class RegionRecord:
    """One valid region as the API gave it; ``raw`` is the JSON object as received."""

    id: str
    region_name: str | None
    display_name: str | None
    management_type: str | None
    management_type_value: int | None
    carrier_enabled: bool
    hosting_region: str | None
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record left out of the snapshot, and why (one line)."""

    region_id: str | None
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """One validated response.

    ``records`` are the valid regions, one per id, sorted by id, without any held id.
    ``duplicates`` names the ids whose valid copies differed (the last copy won); an id
    that is held is reported through ``rejected`` instead.
    """

    records: tuple[RegionRecord, ...]
    rejected: tuple[Rejection, ...]
    fetched: int
    source: str
    received_at: datetime
    duplicates: tuple[str, ...] = field(default=())

    @property
    def held_ids(self) -> frozenset[str]:
        """Ids of rejected records: their regions must be left exactly as they are."""
        return frozenset(r.region_id for r in self.rejected if r.region_id is not None)


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def describe_size(size: int) -> str:
    mib = 1024 * 1024
    return f"{size // mib} MiB" if size % mib == 0 else f"{size} bytes"


def _is_empty(value: object) -> bool:
    return value is None or value is False or value in ({}, [], "")


def classify_failure(
    body: object, *, status: int | None, where: str, reason: str = ""
) -> SourceError | None:
    """The failure an answer reports, or None when it reports none (DESIGN.md §1).

    The body decides first (its ``code``, then ``error.error_code``), then the HTTP
    ``status`` (None for a saved file). ``body`` is the decoded JSON (None when it was not
    JSON); ``where`` ends the message (``HTTP 400``, ``in file x.json``) and ``reason`` is
    the HTTP reason phrase. A body that merely has the wrong shape is left to
    :func:`parse_body`.
    """
    code = error = error_code = None
    if isinstance(body, dict):
        code = _text(body.get("code"))
        error = body.get("error")
        error_code = _text(error.get("error_code")) if isinstance(error, dict) else None
    known = TRANSIENT_CODES | PERMANENT_CODES
    reported = not _is_empty(error) or code in known or error_code in known
    label, text = _describe(body, error) if reported else (None, "")

    if label in TRANSIENT_CODES:
        kind: type[SourceError] = TransientSourceError
    elif label in PERMANENT_CODES:
        kind = PermanentSourceError
    elif status is not None and not 200 <= status < 300:
        kind = TransientSourceError if status == 429 or status >= 500 else PermanentSourceError
    elif reported:
        kind = PermanentSourceError
    else:
        return None

    if label is not None:
        name = label
        detail = f"{name} {text} ({where})" if text else f"{name} ({where})"
    elif status is not None:
        name = f"HTTP {status}"
        detail = f"{name} {text or one_line(reason)}".rstrip()
    else:
        name = "error"
        detail = f"an error {text} ({where})" if text else f"an error ({where})"
    if kind is TransientSourceError:
        return TransientSourceError(f"Kaleyra failed: {detail}", code=name, status=status)
    if status in (401, 403) and label not in PERMANENT_CODES:
        return PermanentSourceError(
            f"Kaleyra refused the credentials: {detail}; check KALEYRA_API_KEY and KALEYRA_SID",
            code=name,
            status=status,
        )
    return PermanentSourceError(f"Kaleyra refused: {detail}", code=name, status=status)


def _text(value: object) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _describe(body: object, error: object) -> tuple[str | None, str]:
    """The code and message to name: a known code first, then the error's own."""
    assert isinstance(body, dict)
    code = _text(body.get("code"))
    details = error if isinstance(error, dict) else {}
    error_code = _text(details.get("error_code"))
    error_message = _text(details.get("error_message")) or _text(details.get("message"))
    message = _text(body.get("message"))
    known = TRANSIENT_CODES | PERMANENT_CODES
    label = code if code in known else error_code if error_code in known else error_code or code
    text = error_message or (error if isinstance(error, str) else None) or message or ""
    return label, one_line(text)


def bad_body(problem: str, *, status: int | None = None) -> PermanentSourceError:
    return PermanentSourceError(
        f"Kaleyra's response is not the documented success body: {problem}",
        code="bad-body",
        status=status,
    )


def parse_body(body: object, *, source: str, received_at: datetime) -> Snapshot:
    """Validate an already-decoded success body into a :class:`Snapshot`.

    Raises :class:`SourceError` (``bad-body``, or the code of an error body) for anything
    but the documented success shape.
    """
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    if not isinstance(body, dict):
        raise bad_body(f"a JSON {json_type(body)} instead of an object")
    failure = classify_failure(body, status=None, where=f"from {source}")
    if failure is not None:
        raise failure
    if "data" not in body:
        raise bad_body("it has no data")
    data = body["data"]
    if not isinstance(data, list):
        raise bad_body(f"data is a JSON {json_type(data)}, not an array")

    valid: dict[str, RegionRecord] = {}
    differing: set[str] = set()
    rejected: list[Rejection] = []
    for position, item in enumerate(data, start=1):
        outcome = validate_record(item, position=position)
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
            continue
        earlier = valid.get(outcome.id)
        if earlier is not None and not json_equal(earlier.raw, outcome.raw):
            differing.add(outcome.id)
        valid[outcome.id] = outcome

    held = {r.region_id for r in rejected if r.region_id is not None}
    return Snapshot(
        records=tuple(valid[i] for i in sorted(valid) if i not in held),
        rejected=tuple(rejected),
        fetched=len(data),
        source=source,
        received_at=received_at.astimezone(UTC),
        duplicates=tuple(sorted(differing - held)),
    )


def validate_record(item: object, *, position: int) -> RegionRecord | Rejection:
    """One record of ``data`` (``position`` counts from 1, for records without an id)."""
    if not isinstance(item, dict):
        return Rejection(None, f"record #{position} is a JSON {json_type(item)}, not an object")
    if "id" not in item:
        return Rejection(None, f"record #{position} has no id")
    region_id = item["id"]
    if not isinstance(region_id, str):
        return Rejection(
            None, f"record #{position}: id is a JSON {json_type(region_id)}, not a string"
        )
    if not region_id.strip():
        return Rejection(None, f"record #{position}: id is an empty string")
    unstorable = _unstorable(item)
    if unstorable is not None:
        usable = _storable_string(region_id)
        return Rejection(region_id if usable else None, unstorable)

    def reject(reason: str) -> Rejection:
        return Rejection(region_id, reason)

    if "carrier_enabled" not in item:
        return reject("carrier_enabled is missing")
    enabled = item["carrier_enabled"]
    if not isinstance(enabled, bool):
        return reject(f"carrier_enabled is a JSON {json_type(enabled)}, not a boolean")

    strings: dict[str, str | None] = {}
    for name in STRING_FIELDS:
        value = item.get(name)
        if value is not None and not isinstance(value, str):
            return reject(f"{name} is a JSON {json_type(value)}, not a string")
        strings[name] = value

    values: dict[str, int | None] = {}
    for name in VALUE_FIELDS:
        value = item.get(name)
        if value is None:
            values[name] = None
            continue
        if isinstance(value, float):
            return reject(f"{name} is {value!r}, not an integer")
        if isinstance(value, bool) or not isinstance(value, int):
            return reject(f"{name} is a JSON {json_type(value)}, not an integer")
        if not PG_INT_MIN <= value <= PG_INT_MAX:
            return reject(f"{name} is outside the integer range {PG_INT_MIN}..{PG_INT_MAX}")
        values[name] = value
    correct, docs = VALUE_FIELDS
    management_value = values[correct] if correct in item else values[docs]

    return RegionRecord(
        id=region_id,
        region_name=strings["region_name"],
        display_name=strings["display_name"],
        management_type=strings["management_type"],
        management_type_value=management_value,
        carrier_enabled=enabled,
        hosting_region=strings["hosting_region"],
        raw=item,
    )


def _storable_string(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unstorable(value: object) -> str | None:
    """Why a JSON value cannot be stored as text/JSONB (NUL, lone surrogate, NaN), if so."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, str):
            if not _storable_string(current):
                return "a string holds a NUL character or invalid Unicode, which cannot be stored"
        elif isinstance(current, float):
            if not math.isfinite(current):
                return "a number is NaN or infinite, which JSON cannot store"
        elif isinstance(current, dict):
            stack.extend(current.keys())
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return None


def json_equal(a: object, b: object) -> bool:
    """Equality of JSON values: key order is no difference, ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, int | float):
        return isinstance(b, int | float) and a == b
    return type(a) is type(b) and a == b


def decode_json(content: bytes) -> object:
    """Decode JSON bytes (UTF-8/16/32); raises ValueError with a short reason."""
    try:
        return json.loads(content)
    except json.JSONDecodeError as error:
        raise ValueError(f"{error.msg} at line {error.lineno} column {error.colno}") from None
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8 text") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def load_file(path: Path, *, max_bytes: int = MAX_BODY_BYTES) -> Snapshot:
    """A saved API response (``--from-file``), validated like a live one.

    ``received_at`` is the time of reading, not the file's age: history times must only
    grow from run to run.
    """
    where = f"in file {path}"
    try:
        with path.open("rb") as handle:
            content = handle.read(max_bytes + 1)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise PermanentSourceError(f"cannot read {path}: {reason}", code="file") from None
    received_at = datetime.now(UTC)
    if len(content) > max_bytes:
        raise PermanentSourceError(
            f"{path} is larger than {describe_size(max_bytes)}, the most a response may be",
            code="too-large",
        )
    try:
        body = decode_json(content)
    except ValueError as error:
        raise PermanentSourceError(f"{path} is not JSON: {error}", code="bad-body") from None
    failure = classify_failure(body, status=None, where=where)
    if failure is not None:
        raise failure
    try:
        return parse_body(body, source=f"file:{path.resolve()}", received_at=received_at)
    except PermanentSourceError as error:
        raise PermanentSourceError(f"{path}: {error}", code=error.code) from None
