"""A saved API response (``regionsync run --from-file``): replay or backfill without the API.

The file is judged exactly as a live answer is (:func:`regionsync.source.answer.read_answer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from regionsync.errors import PermanentSourceError
from regionsync.records import Snapshot
from regionsync.source.answer import MAX_BODY_BYTES, Origin, describe_size, read_answer


@dataclass(frozen=True)
class FileSource:
    """A :class:`~regionsync.records.Source` reading a saved response."""

    path: Path

    @property
    def description(self) -> str:
        return f"file:{self.path.resolve()}"

    def fetch(self) -> Snapshot:
        return load_file(self.path)


def load_file(path: Path, *, max_bytes: int = MAX_BODY_BYTES) -> Snapshot:
    """A saved API response, validated like a live one.

    ``received_at`` is the time of reading, not the file's age: history times must only
    grow from run to run.
    """
    return read_answer(
        _read(path, max_bytes),  # not kept here: the decoded body replaces it
        Origin.saved(path),
        received_at=datetime.now(UTC),
    )


def _read(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as handle:
            content = handle.read(max_bytes + 1)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise PermanentSourceError(f"cannot read {path}: {reason}", code="file") from None
    if len(content) > max_bytes:
        raise PermanentSourceError(
            f"{path} is larger than {describe_size(max_bytes)}, the most a response may be",
            code="too-large",
        )
    return content
