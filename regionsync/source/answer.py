"""What an answer of "Get an Agent's Regions" means: a snapshot of records and rejects, or a
classified failure.

:func:`read_answer` is the one way in, for a live response (:mod:`regionsync.source.kaleyra`) and a
saved one (:mod:`regionsync.source.saved`) alike: it decodes the body, classifies a
failure once (the body first, then the HTTP status: docs/contract.md §1), and validates the
records against the rules of docs/contract.md §2. Records that break them are rejected one
by one (the caller logs them); a body that is not the documented success
shape is a :class:`SourceError`, never "zero regions".

Speed and memory matter at 100,000 records: msgspec decodes bodies (the stdlib ``json``
only explains what msgspec refuses). A body made only of documented records decodes
straight into :class:`TypedRecord` structs, validated on the way; any other record costs a
few type checks and one encoding to canonical JSON, and is walked (iteratively, with
limits) only when that text says it may break a bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from regionsync import record_sink
from regionsync.errors import PermanentSourceError, SourceError, TransientSourceError, one_line
from regionsync.records import (
    OPTIONAL_FIELDS,
    RegionRecord,
    Rejection,
    Snapshot,
    canonical_json,
    held_ids,
)

MAX_BODY_BYTES = 50 * 1024 * 1024
"""The largest body accepted, from the API or a file (a real one is a few kilobytes)."""

PG_INT_MIN, PG_INT_MAX = -(2**31), 2**31 - 1

#: Bounds on one record; a record beyond any of them is rejected (docs/contract.md §2).
MAX_ID_CHARS = 255
MAX_STRING_CHARS = 4096
MAX_RECORD_BYTES = 64 * 1024
MAX_DEPTH = 32

LISTED_ANONYMOUS_REJECTIONS = 1000
"""Rejections without an id kept for the log; the rest are only counted (junk is cheap)."""

#: Kaleyra's documented failure codes, by ``code`` and by ``error.error_code``.
TRANSIENT_CODES = frozenset({"RCS502", "RCS500", "RCS_CHANNEL_INTERNAL_ERROR"})
PERMANENT_CODES = frozenset(
    {"RCS601", "RCS405", "RCS701", "RCS_CHANNEL_DISABLED", "METHOD_NOT_ALLOWED"}
)
KNOWN_CODES = TRANSIENT_CODES | PERMANENT_CODES
NOT_FOUND_HINT = (
    "check KALEYRA_SID, KALEYRA_POD or KALEYRA_BASE_URL, and KALEYRA_REGIONS_PATH "
    "(the URL must reach the agent's regions)"
)

STRING_FIELDS = ("region_name", "display_name", "management_type", "hosting_region")
VALUE_FIELDS = ("management_type_value", "managment_type_value")  # the docs' spelling second


@dataclass(frozen=True)
class Origin:
    """Where an answer came from: what its snapshot and its failures say about it."""

    #: The snapshot's source: the URL, or ``file:`` and the file's full path.
    source: str
    #: What ends a failure's message: ``HTTP 400``, ``in file saved.json``.
    where: str
    #: The HTTP status; None for a saved file.
    status: int | None = None
    #: The HTTP reason phrase, named when neither the body nor a code says more.
    reason: str = ""
    content_type: str = ""
    #: What ``Retry-After`` asked, carried by a transient failure.
    retry_after: float | None = None
    #: Applied to a failure's message and code: the client removes its key from them,
    #: should the server echo it back.
    scrub: Callable[[str], str] = str
    #: The saved response's file, named first in its messages.
    path: Path | None = None
    #: What to check when the credentials are refused (401/403).
    credentials: str = "KALEYRA_API_KEY and KALEYRA_SID"

    @classmethod
    def saved(cls, path: Path) -> Origin:
        return cls(source=f"file:{path.resolve()}", where=f"in file {path}", path=path)

    def failure(self, kind: type[SourceError], message: str, code: str) -> SourceError:
        """A failure of this answer, its message and code scrubbed."""
        message, code = self.scrub(message), self.scrub(code)
        if kind is TransientSourceError:
            return TransientSourceError(
                message, code=code, status=self.status, retry_after=self.retry_after
            )
        return kind(message, code=code, status=self.status)

    def bad_body(self, problem: str) -> SourceError:
        message = f"Kaleyra's response is not the documented success body: {problem}"
        if self.path is not None:
            message = f"{self.path}: {message}"
        return self.failure(PermanentSourceError, message, "bad-body")

    def not_json(self, problem: str) -> SourceError:
        if self.path is not None:
            return self.failure(
                PermanentSourceError, f"{self.path} is not JSON: {problem}", "bad-body"
            )
        kind = one_line(self.content_type or "no content type", limit=60)
        return self.bad_body(f"HTTP {self.status} with a body that is not JSON ({kind}): {problem}")


def read_answer(content: bytes, origin: Origin, *, received_at: datetime) -> Snapshot:
    """The snapshot ``content`` holds, or the :class:`SourceError` it means.

    Pass ``content`` without keeping it: it is let go once decoded, so that a large body
    and its records are not all held at once.
    """
    try:
        body = decode_body(content)
    except ValueError as error:
        body, problem = None, str(error)
    else:
        problem = ""
    del content
    if problem:  # a body that is not JSON: the status decides
        raise classify_failure(None, origin) or origin.not_json(problem)
    return read_decoded(body, origin, received_at=received_at)


def read_decoded(body: object, origin: Origin, *, received_at: datetime) -> Snapshot:
    """The snapshot an already decoded body (:func:`decode_body`, or JSON) holds, or the
    :class:`SourceError` it means (``bad-body``, or the code of an error body).

    Records decoded by :func:`decode_body` are released one by one as they are validated,
    so a large body's decoded records and the snapshot's records are not all held at once;
    a list the caller built is left as it is.
    """
    failure = classify_failure(body, origin)
    if failure is not None:
        raise failure
    return _snapshot(body, origin, received_at)


# The failure an answer reports -------------------------------------------------------------


def classify_failure(body: object, origin: Origin) -> SourceError | None:
    """The failure an answer reports, or None when it reports none (docs/contract.md §1).

    The body decides first (its ``code``, then ``error.error_code``), then the HTTP status
    (none for a saved file). ``body`` is the decoded JSON (None when it was not JSON). A
    body that merely has the wrong shape is left to the record parser.
    """
    code = error = error_code = None
    if isinstance(body, dict):
        code = _text(body.get("code"))
        error = body.get("error")
        error_code = _text(error.get("error_code")) if isinstance(error, dict) else None
    reported = not _is_empty(error) or code in KNOWN_CODES or error_code in KNOWN_CODES
    label, text = _describe(body, code, error, error_code) if reported else (None, "")
    status = origin.status

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

    where = origin.where
    if label is not None:
        name = label
        detail = f"{name} {text} ({where})" if text else f"{name} ({where})"
    elif status is not None:
        name = f"HTTP {status}"
        detail = f"{name} {text or one_line(origin.reason)}".rstrip()
    else:
        name = "error"
        detail = f"an error {text} ({where})" if text else f"an error ({where})"
    if kind is TransientSourceError:
        return origin.failure(kind, f"Kaleyra failed: {detail}", name)
    if status in (401, 403) and label not in PERMANENT_CODES:
        return origin.failure(
            kind,
            f"Kaleyra refused the credentials: {detail}; check {origin.credentials}",
            name,
        )
    hint = f"; {NOT_FOUND_HINT}" if status == 404 else ""
    return origin.failure(kind, f"Kaleyra refused: {detail}{hint}", name)


def _text(value: object) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _is_empty(value: object) -> bool:
    return value is None or value is False or value in ({}, [], "")


def _describe(
    body: object, code: str | None, error: object, error_code: str | None
) -> tuple[str | None, str]:
    """The code and message to name: a known code first, then the error's own."""
    assert isinstance(body, dict)
    details = error if isinstance(error, dict) else {}
    error_message = _text(details.get("error_message")) or _text(details.get("message"))
    message = _text(body.get("message"))
    known = KNOWN_CODES
    label: str | None = (
        code if code in known else error_code if error_code in known else error_code or code
    )
    text = error_message or (error if isinstance(error, str) else None) or message or ""
    return label, one_line(text)


# Decoding ----------------------------------------------------------------------------------

Text = Annotated[str, Meta(max_length=MAX_STRING_CHARS)]
Value = Annotated[int, Meta(ge=PG_INT_MIN, le=PG_INT_MAX)]


class TypedRecord(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """A record of the documented fields only, of the documented types, within the bounds.

    Declared in sorted order, absent fields omitted: a struct encodes to its record's
    canonical JSON. Both ways a body can go give the same snapshot (``tests/source/test_records.py``
    checks it on generated bodies).
    """

    carrier_enabled: bool
    display_name: Text | UnsetType | None = UNSET
    hosting_region: Text | UnsetType | None = UNSET
    id: Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
    management_type: Text | UnsetType | None = UNSET
    management_type_value: Value | UnsetType | None = UNSET
    managment_type_value: Value | UnsetType | None = UNSET
    region_name: Text | UnsetType | None = UNSET


class _TypedBody(Struct):
    data: list[TypedRecord]
    code: Any = UNSET
    message: Any = UNSET
    error: Any = UNSET


_decode_typed = msgspec.json.Decoder(_TypedBody).decode


class DecodedBody(dict[str, Any]):
    """A body :func:`decode_body` decoded: the parser may release its records."""


def decode_body(content: bytes) -> object:
    """Decode a response body; raises ValueError with a short reason.

    A body made only of documented records (every real one) is decoded and validated by
    msgspec in one pass, its records :class:`TypedRecord` structs that cost no dict each;
    any other body fails that as a whole and is decoded as :func:`decode_json` does, for
    the parser to judge record by record.
    """
    try:
        typed = _decode_typed(content)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        body = decode_json(content)
    else:
        body = {
            name: value
            for name in ("code", "message", "error")
            if (value := getattr(typed, name)) is not UNSET
        }
        body["data"] = typed.data
    return DecodedBody(body) if type(body) is dict else body


def decode_json(content: bytes) -> object:
    """Decode a JSON body (UTF-8/16/32); raises ValueError with a short reason.

    msgspec decodes it (faster than the stdlib, in less memory); what msgspec
    refuses — NaN, lone surrogates, UTF-16 — is decoded, or explained, by the stdlib, so the
    result is always what ``json.loads`` gives.
    """
    try:
        return msgspec.json.decode(content)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    try:
        return json.loads(content)
    except json.JSONDecodeError as error:
        raise ValueError(f"{error.msg} at line {error.lineno} column {error.colno}") from None
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8 text") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def describe_size(size: int) -> str:
    mib = 1024 * 1024
    return f"{size // mib} MiB" if size % mib == 0 else f"{size} bytes"


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


# The records -------------------------------------------------------------------------------


def _snapshot(body: object, origin: Origin, received_at: datetime) -> Snapshot:
    """A success body's records, validated one by one (see :func:`read_decoded`)."""
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    if not isinstance(body, dict):
        raise origin.bad_body(f"a JSON {json_type(body)} instead of an object")
    if "data" not in body:
        raise origin.bad_body("it has no data")
    data = body["data"]
    if not isinstance(data, list):
        raise origin.bad_body(f"data is a JSON {json_type(data)}, not an array")

    fetched = len(data)
    validate = RecordValidator()
    valid: dict[str, RegionRecord] = {}
    differing: set[str] = set()
    rejected: list[Rejection] = []
    unlisted = anonymous = 0
    release = type(body) is DecodedBody
    sink = record_sink.current.get()
    for position, item in enumerate(data, start=1):
        if release:
            data[position - 1] = None
        kind = type(item)
        if kind is TypedRecord or kind is dict:
            outcome = (
                validate.typed(item, position) if kind is TypedRecord else validate(item, position)
            )
            if type(outcome) is RegionRecord:
                if sink is not None:
                    sink.add(outcome)
                earlier = valid.setdefault(outcome.id, outcome)
                if earlier is not outcome:  # the last copy wins
                    valid[outcome.id] = outcome
                    if earlier.raw != outcome.raw:
                        differing.add(outcome.id)
                continue
        else:
            outcome = None
        if anonymous < LISTED_ANONYMOUS_REJECTIONS or (
            type(outcome) is Rejection and outcome.region_id is not None
        ):
            if outcome is None:
                outcome = not_an_object(item, position)
            assert type(outcome) is Rejection
            rejected.append(outcome)
            anonymous += outcome.region_id is None
        else:
            unlisted += 1

    held = held_ids(rejected)
    return Snapshot(
        records=tuple(map(valid.__getitem__, sorted(valid.keys() - held if held else valid))),
        rejected=tuple(rejected),
        fetched=fetched,
        source=origin.source,
        received_at=received_at.astimezone(UTC),
        duplicates=tuple(sorted(differing - held)),
        unlisted_rejections=unlisted,
    )


def not_an_object(item: object, position: int) -> Rejection:
    return Rejection(None, f"record #{position} is a JSON {json_type(item)}, not an object")


class _Missing:
    """The value of a field a record leaves out (``None`` is an explicit JSON null)."""


_MISSING = _Missing()
_SCALARS = frozenset({str, int, bool, type(None)})
_TEXT_OR_NOTHING = frozenset({str, type(None), _Missing})
_NOTHING_ABSENT: frozenset[str] = frozenset()
_NUL = b"\\u0000"
_FIELDS_KNOWN = 8  # id, carrier_enabled, the string fields and both value spellings


class RecordValidator:
    """Validates records one by one; holds what is shared between them.

    A record of the documented fields (every real one) costs a few type tests and one
    msgspec encoding; only when that text could break a bound (long, or holding an escaped
    NUL) or the record holds more than scalars is it walked, with limits. A problem found
    is then described by the slower, thorough checks.
    """

    __slots__ = ("_absent", "_encode", "_encode_typed", "_shared", "_unset")

    def __init__(self) -> None:
        self._encode: Callable[[Any], bytes] = msgspec.json.Encoder(order="sorted").encode
        self._encode_typed = msgspec.json.Encoder().encode
        self._unset = UNSET
        self._shared: dict[str, str] = {}
        self._absent: dict[tuple[str, ...], frozenset[str]] = {}

    def __call__(self, item: dict[Any, Any], position: int) -> RegionRecord | Rejection:
        get = item.get
        region_id = get("id", _MISSING)
        if (
            type(region_id) is not str
            or not 0 < len(region_id) <= MAX_ID_CHARS
            or region_id.isspace()
            or "\x00" in region_id
            or not (region_id.isascii() or _storable_string(region_id))
        ):
            return Rejection(None, f"record #{position}{_id_problem(region_id)}")

        enabled = get("carrier_enabled")
        region_name = get("region_name", _MISSING)
        display_name = get("display_name", _MISSING)
        management_type = get("management_type", _MISSING)
        hosting_region = get("hosting_region", _MISSING)
        value: Any = get("management_type_value", _MISSING)
        docs_value: Any = get("managment_type_value", _MISSING)
        ok = _TEXT_OR_NOTHING
        if (
            type(enabled) is not bool
            or type(region_name) not in ok
            or type(display_name) not in ok
            or type(management_type) not in ok
            or type(hosting_region) not in ok
            or not (
                value is _MISSING
                or value is None
                or (type(value) is int and PG_INT_MIN <= value <= PG_INT_MAX)
            )
            or not (
                docs_value is _MISSING
                or docs_value is None
                or (type(docs_value) is int and PG_INT_MIN <= docs_value <= PG_INT_MAX)
            )
        ):
            return Rejection(region_id, _field_problem(item) or "a field has the wrong type")

        missing = (
            (region_name is _MISSING)
            + (display_name is _MISSING)
            + (management_type is _MISSING)
            + (hosting_region is _MISSING)
            + (value is _MISSING)
            + (docs_value is _MISSING)
        )
        text = None
        if len(item) == _FIELDS_KNOWN - missing:  # only the documented, checked fields
            try:
                encoded = self._encode(item)
            except ValueError:
                encoded = b""  # a lone surrogate: _text says so
            if 0 < len(encoded) <= MAX_STRING_CHARS + 2 and _NUL not in encoded:
                text = encoded.decode()  # too short to hold a long string or to be too large
        if text is None:
            text, problem = self._text(item)
            if problem is not None:
                return Rejection(region_id, problem)

        if value is _MISSING:
            value = docs_value  # the correct spelling wins when both are present
        return self._record(
            region_id,
            region_name,
            display_name,
            management_type,
            value,
            enabled,
            hosting_region,
            text,
            _MISSING,
        )

    def typed(self, item: TypedRecord, position: int) -> RegionRecord | Rejection:
        """A record msgspec already validated (:class:`TypedRecord`)."""
        encoded = self._encode_typed(item)
        unset = self._unset
        region_id = item.id
        if _NUL in encoded or region_id.isspace():  # what the schema cannot say
            return self(_plain_json(encoded), position)
        value = item.management_type_value
        if value is unset:
            value = item.managment_type_value
        return self._record(
            region_id,
            item.region_name,
            item.display_name,
            item.management_type,
            value,
            item.carrier_enabled,
            item.hosting_region,
            encoded.decode(),
            unset,
        )

    def _record(
        self,
        region_id: str,
        region_name: Any,
        display_name: Any,
        management_type: Any,
        value: Any,
        enabled: bool,
        hosting_region: Any,
        text: str,
        missing: object,
    ) -> RegionRecord:
        """The record of checked values; ``missing`` marks the fields it leaves out."""
        absent = _NOTHING_ABSENT
        if (
            region_name is missing
            or display_name is missing
            or management_type is missing
            or hosting_region is missing
            or value is missing
        ):
            absent = self._absent_fields(
                region_name, display_name, management_type, value, hosting_region, missing
            )
            region_name = None if region_name is missing else region_name
            display_name = None if display_name is missing else display_name
            management_type = None if management_type is missing else management_type
            hosting_region = None if hosting_region is missing else hosting_region
            value = None if value is missing else value
        shared = self._shared
        if len(shared) < 1000:  # a few values repeat in every record: keep one copy of each
            if management_type is not None:
                management_type = shared.setdefault(management_type, management_type)
            if hosting_region is not None:
                hosting_region = shared.setdefault(hosting_region, hosting_region)
        return RegionRecord(
            region_id,
            region_name,
            display_name,
            management_type,
            value,
            enabled,
            hosting_region,
            text,
            absent,
        )

    def _text(self, item: dict[Any, Any]) -> tuple[str, str | None]:
        """The canonical text of a record, or why it breaks a bound; the thorough path."""
        encoded: bytes | None = None
        if all(type(value) in _SCALARS for value in item.values()):
            try:
                encoded = self._encode(item)
            except ValueError:
                encoded = None  # a lone surrogate: the walk says so
        if (
            encoded is None
            or len(encoded) > MAX_STRING_CHARS + 2  # quotes: a longer string needs more
            or _NUL in encoded
        ):
            problem, has_float = inspect_value(item)
            if problem is not None:
                return "", problem
            if has_float:  # msgspec writes some floats differently (1e16, not 1e+16)
                encoded = canonical_json(item).encode()
            elif encoded is None:
                encoded = self._encode(item)
        if len(encoded) > MAX_RECORD_BYTES:
            return "", f"the record's JSON is larger than {MAX_RECORD_BYTES // 1024} KiB"
        return encoded.decode(), None

    def _absent_fields(self, *values: object) -> frozenset[str]:
        """The optional fields whose value is ``missing``, the last argument (one set each);
        the values come in :data:`~regionsync.records.OPTIONAL_FIELDS`' order."""
        *fields, missing = values
        names = tuple(name for name, v in zip(OPTIONAL_FIELDS, fields, strict=True) if v is missing)
        absent = self._absent.get(names)
        if absent is None:
            absent = self._absent[names] = frozenset(names)
        return absent


def _id_problem(region_id: object) -> str:
    """What is wrong with an id, as the end of "record #N...": it names no usable region."""
    if region_id is _MISSING:
        return " has no id"
    if not isinstance(region_id, str):
        return f": id is a JSON {json_type(region_id)}, not a string"
    if not region_id.strip():
        return ": id is an empty string"
    if len(region_id) > MAX_ID_CHARS:
        return f": id is longer than {MAX_ID_CHARS} characters"
    return f": id {UNSTORABLE_STRING}"


def _plain_json(encoded: bytes) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(encoded)
    return plain


def _field_problem(item: dict[Any, Any]) -> str | None:
    """Why a record's documented fields are unusable, if they are."""
    enabled = item.get("carrier_enabled")
    if type(enabled) is not bool:
        if "carrier_enabled" not in item:
            return "carrier_enabled is missing"
        return f"carrier_enabled is a JSON {json_type(enabled)}, not a boolean"
    for name in STRING_FIELDS:
        value = item.get(name)
        if value is not None and type(value) is not str:
            return f"{name} is a JSON {json_type(value)}, not a string"
    for name in VALUE_FIELDS:
        value = item.get(name)
        if value is None or (type(value) is int and PG_INT_MIN <= value <= PG_INT_MAX):
            continue
        if isinstance(value, float):
            return f"{name} is {value!r}, not an integer"
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} is a JSON {json_type(value)}, not an integer"
        return f"{name} is outside the integer range {PG_INT_MIN}..{PG_INT_MAX}"
    return None


UNSTORABLE_STRING = "holds a NUL character or invalid Unicode, which cannot be stored"


def _storable_string(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inspect_value(value: object) -> tuple[str | None, bool]:
    """Why a decoded JSON value breaks a record bound, if it does, and whether it holds a float.

    Iterative, and it stops early: past :data:`MAX_DEPTH` levels, or once the strings and
    values seen already make more than :data:`MAX_RECORD_BYTES` of JSON.
    """
    has_float = False
    budget = MAX_RECORD_BYTES
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        budget -= 1
        if isinstance(current, str):
            if len(current) > MAX_STRING_CHARS:
                return f"a string is longer than {MAX_STRING_CHARS} characters", has_float
            if not _storable_string(current):
                return f"a string {UNSTORABLE_STRING}", has_float
            budget -= len(current)
        elif isinstance(current, float):
            if current != current or current in (float("inf"), float("-inf")):
                return "a number is NaN or infinite, which JSON cannot store", has_float
            has_float = True
        elif isinstance(current, dict | list):
            if depth > MAX_DEPTH:
                return f"the record is nested deeper than {MAX_DEPTH} levels", has_float
            budget -= len(current)  # a comma each, at least: never stack more than fits
            if budget < 0:
                break
            if isinstance(current, dict):
                stack.extend((key, depth) for key in current)
                stack.extend((item, depth + 1) for item in current.values())
            else:
                stack.extend((item, depth + 1) for item in current)
        if budget < 0:
            break
    if budget < 0:
        return f"the record's JSON is larger than {MAX_RECORD_BYTES // 1024} KiB", has_float
    return None, has_float
