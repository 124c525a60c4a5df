"""Where a parse hands each valid record as soon as it is validated, when someone listens.

A sync on PostgreSQL stages the snapshot with ``COPY``: by listening here
(:class:`regionsync.store.changeset.StreamedStage`), it sends each record while the parser is
still validating the next ones, so that PostgreSQL stores them on its own CPU instead of
after the parse. The parse stays the same function for every caller; only a sync that
opened a stage, in its own context, receives the records.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from regionsync.records import RegionRecord


class RecordSink(Protocol):
    def add(self, record: RegionRecord) -> None:
        """Take one valid record; the parse may still replace or hold it (duplicates)."""


current: ContextVar[RecordSink | None] = ContextVar("regionsync_record_sink", default=None)


@contextmanager
def receiving(sink: RecordSink | None) -> Iterator[None]:
    """Inside the block, the parses in this context hand their records to ``sink``."""
    token = current.set(sink)
    try:
        yield
    finally:
        current.reset(token)


__all__ = ["RecordSink", "current", "receiving"]
