"""The fast path for the body every real sync gets: msgspec decodes and validates it in C.

A body whose records all have only the documented fields, of the documented JSON types and
within the bounds, decodes straight into typed structs (no dict per record), and a struct
encodes to its record's canonical JSON: the fields are declared in sorted order and absent
ones are omitted. Any other body fails here as a whole and is decoded generically;
:mod:`regionsync.records` then judges it record by record. Both paths give the same
snapshot (``tests/test_records.py`` checks it on generated bodies).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from regionsync.records import MAX_ID_CHARS, MAX_STRING_CHARS, PG_INT_MAX, PG_INT_MIN

Text = Annotated[str, Meta(max_length=MAX_STRING_CHARS)]
Value = Annotated[int, Meta(ge=PG_INT_MIN, le=PG_INT_MAX)]


class TypedRecord(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """A record of the documented fields only; declared in sorted order (see above)."""

    carrier_enabled: bool
    display_name: Text | UnsetType | None = UNSET
    hosting_region: Text | UnsetType | None = UNSET
    id: Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
    management_type: Text | UnsetType | None = UNSET
    management_type_value: Value | UnsetType | None = UNSET
    managment_type_value: Value | UnsetType | None = UNSET
    region_name: Text | UnsetType | None = UNSET


class _Body(Struct):
    data: list[TypedRecord]
    code: Any = UNSET
    message: Any = UNSET
    error: Any = UNSET


_decoder = msgspec.json.Decoder(_Body)
encode = msgspec.json.Encoder().encode


def decode(content: bytes) -> dict[str, Any] | None:
    """The body, its ``data`` a list of :class:`TypedRecord`; None if it is anything else."""
    try:
        typed = _decoder.decode(content)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    body: dict[str, Any] = {
        name: value
        for name in ("code", "message", "error")
        if (value := getattr(typed, name)) is not UNSET
    }
    body["data"] = typed.data
    return body
