"""Delivering the outbox after commit: one bounded pass, by ``run``, each daemon tick, ``--retry``.

A pass gives up on deliveries pending longer than ``REGIONSYNC_WEBHOOK_MAX_AGE``, then
POSTs the due ones oldest first. A timeout, connection error, 5xx or 429 is retried a few
times within the pass (backoff with jitter, ``Retry-After`` honoured), then left pending
for a later pass at a growing interval; any other 4xx or a redirect marks it failed. The
whole pass ends by a wall-clock deadline, so a slow receiver never holds up a sync: it runs
in the caller's thread, and each HTTP exchange is cut at the deadline inside the exchange
itself (:class:`~regionsync.httpclient.Deadline`), so when the pass returns it is over: its
lock released, its report final, its rows written. Passes are serialised across processes
by a lock of their own, not the sync lock, so a sync is never skipped for one. A pass never
raises: what went wrong is logged and left in the table.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.engine import Connection, Engine

from regionsync.durations import format_duration
from regionsync.errors import RegionSyncError
from regionsync.notify import outbox, slack
from regionsync.notify.webhooks import WebhookClient
from regionsync.settings import NotificationSettings
from regionsync.store.engine import translated_errors
from regionsync.store.lock import exclusive
from regionsync.store.runs import now as utcnow

logger = structlog.get_logger("regionsync.notify")

#: "regionsn": not the sync lock's key, so a delivery pass never makes a sync skip.
DELIVERY_LOCK_KEY = int.from_bytes(b"regionsn", "big", signed=True)


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard one pass tries, and how long a delivery waits for the next pass.

    Defaults: the pass ends within 10 s; a delivery gets up to 3 attempts in it, 0.5 s
    apart doubling (plus up to 0.5 s of jitter); each attempt may take 3 s to connect and
    5 s to answer. Left pending, it is retried by a pass 30 s later, doubling up to 1 h
    (plus up to a quarter more, jitter), or after ``Retry-After`` if that is later.
    """

    deadline: float = 10.0
    attempts_per_pass: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 4.0
    connect_timeout: float = 3.0
    read_timeout: float = 5.0
    retry_initial: timedelta = timedelta(seconds=30)
    retry_max: timedelta = timedelta(hours=1)

    def in_pass_wait(self, attempt: int) -> float:
        wait = min(self.backoff_max, self.backoff_initial * 2.0 ** (attempt - 1))
        return wait + random.uniform(0, self.backoff_initial)  # noqa: S311 - jitter, not crypto

    def next_pass_wait(self, attempts: int) -> timedelta:
        base = min(self.retry_max, self.retry_initial * 2.0 ** max(0, attempts - 1))
        return base * random.uniform(1.0, 1.25)  # noqa: S311 - jitter, not crypto


@dataclass
class PassReport:
    """What one pass did, by delivery id."""

    delivered: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    retried_attempts: int = 0
    skipped: bool = False

    def summary(self) -> dict[str, int]:
        return {
            "delivered": len(self.delivered),
            "retrying": len(self.retrying),
            "failed": len(self.failed) + len(self.expired),
        }


class Notifier:
    """Delivers the outbox to the configured webhook."""

    def __init__(
        self,
        engine: Engine,
        settings: NotificationSettings,
        *,
        policy: DeliveryPolicy | None = None,
    ) -> None:
        if settings.webhook_url is None:
            raise ValueError("no webhook configured")
        self.engine = engine
        self.settings = settings
        self.policy = policy or DeliveryPolicy()
        self.client = WebhookClient(
            settings.webhook_url, settings.webhook_secret, ca_bundle=settings.ca_bundle
        )

    def __repr__(self) -> str:
        return f"Notifier({self.settings.webhook_display!r}, {self.settings.webhook_format})"

    @classmethod
    def from_settings(cls, engine: Engine, settings: NotificationSettings) -> Notifier | None:
        return cls(engine, settings) if settings.enabled else None

    def body(self, payload: dict[str, Any]) -> bytes:
        """The exact bytes sent (and signed) for a payload, in the configured format."""
        message = slack.render(payload) if self.settings.webhook_format == "slack" else payload
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()

    def deliver_pending(self, *, only: str | None = None) -> PassReport:
        """One pass, over by the policy's deadline (and the write of its last attempt's
        outcome), never raising; the report is final when it is returned."""
        report = PassReport()
        deadline = time.monotonic() + self.policy.deadline
        self._guarded_pass(report, deadline, only)
        if time.monotonic() >= deadline:
            logger.warning(
                "notify.deadline_exceeded",
                deadline_s=self.policy.deadline,
                hint="the receiver is too slow; what is left is retried by the next pass",
            )
        return report

    def _guarded_pass(self, report: PassReport, deadline: float, only: str | None) -> None:
        try:
            with translated_errors("delivering notifications"):
                self._pass(report, deadline, only)
        except RegionSyncError as error:
            logger.warning("notify.pass_failed", error=str(error))
        except Exception as error:  # noqa: BLE001 - a delivery must never take the sync down
            # No traceback: its frames' locals may hold the signing key.
            logger.error("notify.pass_failed", error=f"internal error: {type(error).__name__}")

    def _pass(self, report: PassReport, deadline: float, only: str | None) -> None:
        with delivery_lock(self.engine) as connection:
            if connection is None:
                report.skipped = True
                logger.info("notify.skipped", reason="another process is delivering")
                return
            now = utcnow()
            with connection.begin():
                report.expired = outbox.expire(
                    connection, now=now, max_age=self.settings.webhook_max_age
                )
            for expired in report.expired:
                logger.error(
                    "notify.failed",
                    delivery_id=expired,
                    reason="undelivered after "
                    + format_duration(self.settings.webhook_max_age)
                    + " (REGIONSYNC_WEBHOOK_MAX_AGE)",
                )
            with connection.begin():
                rows = outbox.due(connection, now=now, only=only)
            for row in rows:
                if time.monotonic() >= deadline:
                    break
                outcome = self._deliver(connection, row, deadline, report)
                if outcome == "retrying":
                    break  # the receiver is struggling: leave the rest for the next pass

    def _deliver(
        self, connection: Connection, row: Any, deadline: float, report: PassReport
    ) -> str:
        body = self.body(row.payload)
        log = logger.bind(delivery_id=row.id, sync_run_id=row.sync_run_id, part=row.part)
        made = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0.05:
                report.retrying.append(row.id)
                return "retrying"
            attempt = self.client.post(
                row.id,
                body,
                connect=min(self.policy.connect_timeout, left),
                read=min(self.policy.read_timeout, left),
                deadline=deadline,
            )
            made += 1
            total = row.attempts + made
            at = utcnow()
            if attempt.delivered:
                self._record(connection, row.id, at=at, status="delivered")
                report.delivered.append(row.id)
                log.info("notify.delivered", attempts=total, status=attempt.status)
                return "delivered"
            if not attempt.retry:
                self._record(connection, row.id, at=at, status="failed", error=attempt.error)
                report.failed.append(row.id)
                log.error("notify.failed", attempts=total, error=attempt.error)
                return "failed"
            report.retried_attempts += 1
            wait = max(self.policy.in_pass_wait(made), attempt.retry_after or 0.0)
            if made >= self.policy.attempts_per_pass or wait >= deadline - time.monotonic():
                later = max(
                    self.policy.next_pass_wait(total),
                    timedelta(seconds=attempt.retry_after or 0.0),
                )
                self._record(
                    connection,
                    row.id,
                    at=at,
                    status="pending",
                    error=attempt.error,
                    next_attempt_at=at + later,
                )
                report.retrying.append(row.id)
                log.warning(
                    "notify.will_retry",
                    attempts=total,
                    error=attempt.error,
                    retry_in_s=round(later.total_seconds(), 1),
                )
                return "retrying"
            self._record(connection, row.id, at=at, status="pending", error=attempt.error)
            log.info(
                "notify.attempt_failed", attempt=total, error=attempt.error, wait_s=round(wait, 3)
            )
            time.sleep(wait)

    @staticmethod
    def _record(connection: Connection, delivery_id: str, **values: Any) -> None:
        with connection.begin():
            outbox.record_attempt(connection, delivery_id, **values)

    def retry(self, delivery_id: str) -> tuple[str | None, PassReport]:
        """``--retry ID``: make it pending and due, then deliver it; (status before, report)."""
        with self.engine.begin() as connection:
            before = outbox.make_retryable(connection, delivery_id, now=utcnow())
        if before not in ("pending", "failed"):
            return before, PassReport()
        return before, self.deliver_pending(only=delivery_id)


def delivery_lock(engine: Engine) -> AbstractContextManager[Connection | None]:
    """One delivery pass at a time, apart from the sync lock so a delivery never skips a sync."""
    return exclusive(engine, key=DELIVERY_LOCK_KEY, suffix=".notify.lock")
