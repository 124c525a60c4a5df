"""The no-change shortcut: an account's last applied answer, remembered by its digest.

Most runs of most accounts change nothing. A run whose answer has the digest of the last
answer applied to the account, while the account's regions have not been written since,
would find nothing to do in the full diff: applying an answer makes the stored regions
match it, so diffing the same content again finds every record unchanged (the property
test in ``tests/store/test_answers.py`` compares both on random sequences). Such a run
skips staging and the diff and records a no-change run.

What keeps it exactly as correct as the diff: the digest covers everything the diff reads
from an answer (every valid record's raw JSON and unreported fields, the ids that rejected
records hold back, and this code's version, which decides how raw JSON becomes fields); and
any write to the account's ``regions`` rows, by a sync or by hand (``UPDATE``, ``DELETE``,
``TRUNCATE``), deletes the remembered digest in the same transaction (triggers installed by
migration 0004), so the next run diffs in full. Not covered: writes made with triggers
disabled (``session_replication_role = replica``, ``ALTER TABLE ... DISABLE TRIGGER``);
emptying ``applied_answers`` is always safe.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from regionsync import __version__
from regionsync.records import Snapshot
from regionsync.store.tables import applied_answers

#: Part of every digest: a new version may read the same JSON into other fields.
DIGEST_FORMAT = f"regionsync {__version__} answer digest 1"


def content_digest(snapshot: Snapshot) -> str:
    """SHA-256 of what the diff reads from ``snapshot``, in a canonical order."""
    digest = hashlib.sha256(DIGEST_FORMAT.encode())
    for record in snapshot.records:  # sorted by id, one per id
        digest.update(b"\x1erecord\x1f")
        digest.update(record.raw.encode())
        if record.absent:
            digest.update(b"\x1fabsent\x1f" + ",".join(sorted(record.absent)).encode())
    for held in sorted(snapshot.held_ids):
        digest.update(b"\x1eheld\x1f" + held.encode())
    return digest.hexdigest()


def remembered(connection: Connection, account: str) -> str | None:
    """The digest of the account's last applied answer, if its regions are as it left them."""
    found: str | None = connection.execute(
        sa.select(applied_answers.c.digest).where(applied_answers.c.account == account)
    ).scalar()
    return found


def remember(
    connection: Connection, account: str, digest: str, *, run_id: int, snapshot: Snapshot
) -> None:
    """After applying ``snapshot`` (in the same transaction): remember its digest."""
    connection.execute(applied_answers.delete().where(applied_answers.c.account == account))
    connection.execute(
        applied_answers.insert().values(
            account=account,
            digest=digest,
            sync_run_id=run_id,
            fetched=snapshot.fetched,
            rejected=snapshot.rejected_count,
        )
    )


__all__ = ["DIGEST_FORMAT", "content_digest", "remember", "remembered"]
