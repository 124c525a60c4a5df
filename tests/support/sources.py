"""In-test sources: snapshots built from plain lists through the real parser, and the
parser's steps called on Python objects (a decoded body, one record)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from regionsync.records import RegionRecord, Rejection, Snapshot
from regionsync.source.answer import (
    Origin,
    RecordValidator,
    not_an_object,
    read_answer,
    read_decoded,
)


def region(
    region_id: str,
    *,
    enabled: bool = True,
    hosting: str | None = "NORTH_AMERICA",
    name: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": region_id,
        "region_name": f"/v1/regions/{region_id}",
        "display_name": name or f"Region {region_id}",
        "management_type": "GOOGLE_MANAGED",
        "managment_type_value": 2,
        "carrier_enabled": enabled,
        "hosting_region": hosting,
    }
    record.update(extra)
    return record


def body(data: list[Any]) -> dict[str, Any]:
    return {"code": "RCS902", "message": "Regions fetched successfully", "data": data, "error": {}}


def parse_body(decoded: object, *, source: str, received_at: datetime) -> Snapshot:
    """The snapshot of an already decoded body (``decode_body``'s, or plain objects)."""
    origin = Origin(source=source, where=f"from {source}")
    return read_decoded(decoded, origin, received_at=received_at)


def validate_record(item: object, *, position: int) -> RegionRecord | Rejection:
    """One record of ``data`` as the parser judges it (``position`` counts from 1)."""
    if type(item) is not dict:
        return not_an_object(item, position)
    return RecordValidator()(item, position)


class ListSource:
    """Serves a list of records (changeable between runs); can run a hook inside fetch.

    The records go through JSON bytes, as an API response does, so the parser takes the
    same path as in a real sync (and ``data`` is never consumed by the parser).
    """

    description = "test:list"

    def __init__(self, data: list[Any] | None = None) -> None:
        self.data: list[Any] = data or []
        self.during_fetch: Callable[[], None] | None = None
        self.fetches = 0

    def fetch(self) -> Snapshot:
        self.fetches += 1
        if self.during_fetch is not None:
            self.during_fetch()
        content = json.dumps(body(self.data)).encode()
        origin = Origin(source=self.description, where=f"from {self.description}")
        return read_answer(content, origin, received_at=datetime.now(UTC))


class FailingSource:
    description = "test:failing"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def fetch(self) -> Snapshot:
        raise self.error
