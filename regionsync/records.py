"""What a fetch yields: valid region records (their ``raw`` as :func:`canonical_json`),
rejections, and the snapshot holding both.

How a body becomes these is :mod:`regionsync.source.answer`; where a snapshot comes from is
a :class:`Source`: the Kaleyra API (:class:`regionsync.source.kaleyra.KaleyraClient`) or a saved
response (:class:`regionsync.source.saved.FileSource`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: a record's ``raw`` text, and every JSON value the
    database stores, so SQLite compares ``raw`` as a value, not as text order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class RegionRecord:
    """One valid region as the API gave it.

    ``raw`` is the record as received, as canonical JSON text (sorted keys, no spaces), held
    compactly and written as it is. ``absent`` names the optional fields the record did not
    report (neither spelling, for the value): "not reported", unlike an explicit ``null``.
    """

    id: str
    region_name: str | None
    display_name: str | None
    management_type: str | None
    management_type_value: int | None
    carrier_enabled: bool
    hosting_region: str | None
    raw: str
    absent: frozenset[str] = frozenset()


OPTIONAL_FIELDS = (
    "region_name",
    "display_name",
    "management_type",
    "management_type_value",
    "hosting_region",
)
"""The stored fields a record may leave out, in :class:`RegionRecord`'s order; its
``absent`` names them."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record left out of the snapshot, and why (one line)."""

    region_id: str | None
    reason: str


def held_ids(rejected: Iterable[Rejection]) -> frozenset[str]:
    """Ids of rejected records: their regions must be left exactly as they are."""
    return frozenset(r.region_id for r in rejected if r.region_id is not None)


@dataclass(frozen=True)
class Snapshot:
    """One validated response.

    ``records`` are the valid regions, one per id, sorted by id, without any held id.
    ``duplicates`` names the ids whose valid copies differed (the last copy won); an id
    that is held is reported through ``rejected`` instead. ``rejected`` lists every
    rejection that names an id, and the first
    :data:`~regionsync.source.answer.LISTED_ANONYMOUS_REJECTIONS` that don't;
    ``unlisted_rejections`` counts the others, so a body of junk costs no memory.
    """

    records: tuple[RegionRecord, ...]
    rejected: tuple[Rejection, ...]
    fetched: int
    source: str
    received_at: datetime
    duplicates: tuple[str, ...] = field(default=())
    unlisted_rejections: int = 0

    @property
    def rejected_count(self) -> int:
        """Every rejected record, listed or not."""
        return len(self.rejected) + self.unlisted_rejections

    @property
    def held_ids(self) -> frozenset[str]:
        """Ids of rejected records: their regions must be left exactly as they are."""
        return held_ids(self.rejected)


class Source(Protocol):
    """Where a snapshot comes from: the Kaleyra API or a saved response."""

    @property
    def description(self) -> str:
        """Where the data comes from, safe to store and log (no secret)."""
        ...

    def fetch(self) -> Snapshot: ...
