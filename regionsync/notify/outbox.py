"""The notification outbox: what a sync's transaction queues, and the rows delivery works on.

:func:`enqueue` runs inside the apply transaction, after the run's history and counts are
written: the deliveries it queues and the ``NOTIFY`` it issues commit or roll back with the
changes they report. Delivery (``regionsync.notify.delivery``) reads and updates the rows after
commit. See docs/notifications.md.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from regionsync.durations import format_duration
from regionsync.settings import NOTIFY_ON_CHOICES, NotificationSettings
from regionsync.store.runs import Counts
from regionsync.store.runs import now as utcnow
from regionsync.store.tables import (
    DeliveryStatus,
    notification_deliveries,
    region_history,
    regions,
    sync_runs,
)

CHANNEL = "regionsync_changes"
EVENT_TYPE = "regions.changed"
#: A run's changes are split into several deliveries past either limit.
MAX_CHANGES_PER_DELIVERY = 1000
MAX_DELIVERY_BYTES = 256 * 1024
#: The run's counts a notification reports: the ``sync_runs`` columns :class:`Counts` fills.
COUNTED = tuple(counted.name for counted in fields(Counts))
CHANGED = ("added", "changed", "removed", "restored")


@dataclass(frozen=True)
class OutboxPolicy:
    """What the apply transaction queues for webhooks: which changes, in parts of what size."""

    notify_on: frozenset[str] = field(default_factory=lambda: frozenset(NOTIFY_ON_CHOICES))
    max_changes: int = MAX_CHANGES_PER_DELIVERY
    max_bytes: int = MAX_DELIVERY_BYTES

    @classmethod
    def from_settings(cls, settings: NotificationSettings) -> OutboxPolicy | None:
        """None when no webhook is configured: then only ``NOTIFY`` is issued."""
        return cls(notify_on=settings.notify_on) if settings.enabled else None


def new_id() -> str:
    """A delivery's id, unique across databases so receivers can deduplicate on it."""
    return f"msg_{uuid.uuid4().hex}"


def enqueue(connection: Connection, *, run_id: int, policy: OutboxPolicy | None) -> int:
    """In the apply transaction: queue the run's deliveries and notify listeners.

    Call it after the run's history rows and counts are written. Returns the number of
    deliveries queued (0 when no webhook is configured or every change is filtered out).
    """
    run = connection.execute(
        sa.select(sync_runs.c.account, *(sync_runs.c[name] for name in COUNTED)).where(
            sync_runs.c.id == run_id
        )
    ).one()
    account = run.account
    counts = dict(zip(COUNTED, run[1:], strict=True))
    if any(counts[name] for name in CHANGED):
        _notify_listeners(connection, run_id, account, counts)
    if policy is None:
        return 0
    changes, changed_at = _changes(connection, account, run_id, policy.notify_on)
    if not changes:
        return 0
    chunks = _split(changes, max_changes=policy.max_changes, max_bytes=policy.max_bytes)
    rows = []
    for part, chunk in enumerate(chunks, start=1):
        payload = {
            "type": EVENT_TYPE,
            "timestamp": changed_at.isoformat(),
            "data": {
                "account": account,
                "run_id": run_id,
                "changed_at": changed_at.isoformat(),
                "counts": counts,
                "notified": len(changes),
                "part": part,
                "parts": len(chunks),
                "changes": chunk,
            },
        }
        rows.append(
            {
                "id": new_id(),
                "account": account,
                "sync_run_id": run_id,
                "part": part,
                "parts": len(chunks),
                "status": "pending",
                "attempts": 0,
                "payload": payload,
            }
        )
    moment = utcnow()
    connection.execute(
        notification_deliveries.insert(),
        [{**row, "created_at": moment, "next_attempt_at": moment} for row in rows],
    )
    return len(rows)


def _split(
    changes: list[dict[str, Any]], *, max_changes: int, max_bytes: int
) -> list[list[dict[str, Any]]]:
    """Consecutive parts of at most ``max_changes`` changes and about ``max_bytes`` of JSON."""
    chunks: list[list[dict[str, Any]]] = []
    size = 0
    for change in changes:
        cost = len(json.dumps(change, ensure_ascii=False).encode())
        if not chunks or len(chunks[-1]) >= max_changes or size + cost > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(change)
        size += cost
    return chunks


def _notify_listeners(
    connection: Connection, run_id: int, account: str, counts: dict[str, int]
) -> None:
    """``NOTIFY regionsync_changes``: PostgreSQL delivers it to listeners at commit only."""
    if connection.dialect.name != "postgresql":
        return
    schema = connection.execute(sa.select(sa.func.current_schema())).scalar_one()
    payload = {
        "run_id": run_id,
        "account": account,
        "schema": schema,
        **{k: counts[k] for k in CHANGED},
    }
    connection.execute(
        sa.select(sa.func.pg_notify(CHANNEL, json.dumps(payload, separators=(",", ":"))))
    )


def _wanted(notify_on: frozenset[str]) -> sa.ColumnElement[bool]:
    """The history rows ``REGIONSYNC_NOTIFY_ON`` asks for, as one WHERE clause."""
    h = region_history.c
    kinds = [kind for kind in ("added", "removed", "restored") if kind in notify_on]
    flips = [
        h[f"{name}_before"].is_distinct_from(h[f"{name}_after"])
        for name in ("carrier_enabled", "hosting_region")
        if name in notify_on
    ]
    clauses: list[sa.ColumnElement[bool]] = []
    if kinds:
        clauses.append(h.change.in_(kinds))
    if flips:
        clauses.append(sa.and_(h.change == "changed", sa.or_(*flips)))
    return sa.or_(*clauses) if clauses else sa.false()


def _changes(
    connection: Connection, account: str, run_id: int, notify_on: frozenset[str]
) -> tuple[list[dict[str, Any]], datetime]:
    h, r = region_history.c, regions.c
    result = connection.execute(
        sa.select(
            h.region_id,
            r.display_name,
            h.change,
            h.carrier_enabled_before,
            h.carrier_enabled_after,
            h.hosting_region_before,
            h.hosting_region_after,
            h.changed_at,
        )
        .join_from(region_history, regions, sa.and_(r.account == h.account, r.id == h.region_id))
        .where(h.account == account, h.sync_run_id == run_id, _wanted(notify_on))
        .order_by(h.id)
    ).all()
    changes = [
        {
            "region_id": row.region_id,
            "display_name": row.display_name,
            "kind": row.change,
            "carrier_enabled": {
                "before": row.carrier_enabled_before,
                "after": row.carrier_enabled_after,
            },
            "hosting_region": {
                "before": row.hosting_region_before,
                "after": row.hosting_region_after,
            },
        }
        for row in result
    ]
    return changes, (result[0].changed_at if result else utcnow())


# What delivery and operators read and write ---------------------------------------------


def expire(connection: Connection, *, now: datetime, max_age: timedelta) -> list[str]:
    """Give up on pending deliveries older than ``max_age``; returns their ids."""
    error = f"gave up: still undelivered after {format_duration(max_age)}"
    expired = connection.execute(
        notification_deliveries.update()
        .where(
            notification_deliveries.c.status == "pending",
            notification_deliveries.c.created_at < now - max_age,
        )
        .values(status="failed", last_error=error)
        .returning(notification_deliveries.c.id)
    ).scalars()
    return sorted(expired)


def due(connection: Connection, *, now: datetime, only: str | None = None) -> list[sa.Row[Any]]:
    """Pending deliveries whose time has come, oldest first."""
    query = sa.select(notification_deliveries).where(notification_deliveries.c.status == "pending")
    if only is not None:
        query = query.where(notification_deliveries.c.id == only)
    else:
        query = query.where(notification_deliveries.c.next_attempt_at <= now)
    return list(
        connection.execute(
            query.order_by(notification_deliveries.c.created_at, notification_deliveries.c.id)
        )
    )


def record_attempt(
    connection: Connection,
    delivery_id: str,
    *,
    at: datetime,
    status: DeliveryStatus,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
) -> None:
    """One HTTP attempt's outcome: delivered, failed (given up), or pending (retry later)."""
    values: dict[str, Any] = {
        "attempts": notification_deliveries.c.attempts + 1,
        "last_attempt_at": at,
        "status": status,
    }
    if status == "delivered":
        values["delivered_at"] = at
    else:
        values["last_error"] = error
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    connection.execute(
        notification_deliveries.update()
        .where(notification_deliveries.c.id == delivery_id)
        .values(**values)
    )


def make_retryable(
    connection: Connection, delivery_id: str, *, now: datetime
) -> DeliveryStatus | None:
    """``--retry``: a failed (or pending) delivery becomes pending and due now.

    Its ``created_at`` restarts the age limit. Returns its status before, None if unknown.
    """
    status = connection.execute(
        sa.select(notification_deliveries.c.status).where(
            notification_deliveries.c.id == delivery_id
        )
    ).scalar_one_or_none()
    if status in ("pending", "failed"):
        connection.execute(
            notification_deliveries.update()
            .where(notification_deliveries.c.id == delivery_id)
            .values(status="pending", next_attempt_at=now, created_at=now)
        )
    return status


def undelivered(connection: Connection, *, limit: int = 100) -> list[dict[str, Any]]:
    """Pending and failed deliveries for operators, oldest first, payload summarised; the
    id is ``delivery_id``, as in the log lines about it."""
    d = notification_deliveries.c
    rows = connection.execute(
        sa.select(
            d.id.label("delivery_id"),
            d.account,
            d.sync_run_id,
            d.part,
            d.parts,
            d.status,
            d.created_at,
            d.attempts,
            d.next_attempt_at,
            d.last_attempt_at,
            d.last_error,
            d.payload,
        )
        .where(d.status.in_(("pending", "failed")))
        .order_by(d.created_at, d.id)
        .limit(limit)
    ).mappings()
    listed = []
    for row in rows:
        entry = {k: v for k, v in row.items() if k != "payload"}
        payload = row["payload"] if isinstance(row["payload"], dict) else {}
        entry["changes"] = len(payload.get("data", {}).get("changes", []))
        listed.append(entry)
    return listed


@dataclass(frozen=True)
class Backlog:
    """Deliveries not yet accepted: how many, and since when."""

    pending: int
    oldest_pending_at: datetime | None
    failed: int

    def oldest_pending_age(self, now: datetime) -> float | None:
        oldest = self.oldest_pending_at
        return None if oldest is None else max(0.0, (now - oldest).total_seconds())

    def as_json(self, now: datetime) -> dict[str, Any]:
        """For ``status --json`` and ``/healthz``."""
        oldest, age = self.oldest_pending_at, self.oldest_pending_age(now)
        return {
            "pending_deliveries": self.pending,
            "failed_deliveries": self.failed,
            "oldest_pending_delivery_at": oldest.isoformat() if oldest else None,
            "oldest_pending_delivery_age_seconds": None if age is None else round(age, 3),
        }


def backlog(connection: Connection) -> Backlog:
    d = notification_deliveries.c
    pending, oldest, failed = connection.execute(
        sa.select(
            sa.func.count().filter(d.status == "pending"),
            sa.func.min(d.created_at).filter(d.status == "pending"),
            sa.func.count().filter(d.status == "failed"),
        )
    ).one()
    if isinstance(oldest, str):  # SQLite's min() of a timestamp gives back its text
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return Backlog(pending=pending, oldest_pending_at=oldest, failed=failed)
