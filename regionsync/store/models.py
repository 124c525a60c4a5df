"""Typed ORM models of the tables in :mod:`regionsync.store.tables` (docs/contract.md §3).

For code that wants one region, run or delivery as an object: ``select(Region)`` with a
``Session`` gives typed attributes. The sync itself works set by set on the Core tables
and never imports this module; Alembic's ``env.py`` and the schema tests read
``Base.metadata``, which is :data:`regionsync.store.tables.metadata`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped

from regionsync.store import tables
from regionsync.store.tables import DeliveryStatus, HistoryChange, RunStatus, RunTrigger


class Base(DeclarativeBase):
    metadata = tables.metadata


class Account(Base):
    """One Kaleyra account this deployment syncs (``accounts``); its key is never stored."""

    __table__ = tables.accounts

    name: Mapped[str]
    sid: Mapped[str]
    pod: Mapped[str | None]
    base_url: Mapped[str | None]
    api_key_env: Mapped[str | None]
    api_key_file: Mapped[str | None]
    schedule: Mapped[str | None]
    paused_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class SyncRun(Base):
    """One sync attempt (``sync_runs``)."""

    __table__ = tables.sync_runs

    id: Mapped[int]
    account: Mapped[str]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[RunStatus]
    trigger: Mapped[RunTrigger]
    source: Mapped[str]
    fetched: Mapped[int]
    added: Mapped[int]
    changed: Mapped[int]
    unchanged: Mapped[int]
    removed: Mapped[int]
    restored: Mapped[int]
    rejected: Mapped[int]
    error: Mapped[str | None]


class Region(Base):
    """A region's current state (``regions``)."""

    __table__ = tables.regions

    account: Mapped[str]
    id: Mapped[str]
    region_name: Mapped[str | None]
    display_name: Mapped[str | None]
    management_type: Mapped[str | None]
    management_type_value: Mapped[int | None]
    carrier_enabled: Mapped[bool]
    hosting_region: Mapped[str | None]
    raw: Mapped[Any]
    first_seen_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]


class RegionHistory(Base):
    """One change of a region's tracked fields or presence (``region_history``)."""

    __table__ = tables.region_history

    id: Mapped[int]
    account: Mapped[str]
    region_id: Mapped[str]
    sync_run_id: Mapped[int]
    changed_at: Mapped[datetime]
    change: Mapped[HistoryChange]
    carrier_enabled_before: Mapped[bool | None]
    carrier_enabled_after: Mapped[bool | None]
    hosting_region_before: Mapped[str | None]
    hosting_region_after: Mapped[str | None]


class NotificationDelivery(Base):
    """One webhook delivery of a sync's changes (``notification_deliveries``)."""

    __table__ = tables.notification_deliveries

    id: Mapped[str]
    account: Mapped[str]
    sync_run_id: Mapped[int]
    part: Mapped[int]
    parts: Mapped[int]
    created_at: Mapped[datetime]
    status: Mapped[DeliveryStatus]
    attempts: Mapped[int]
    next_attempt_at: Mapped[datetime]
    last_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None]
    delivered_at: Mapped[datetime | None]
    payload: Mapped[Any]


class AppliedAnswer(Base):
    """The no-change shortcut's memory of an account's last applied answer."""

    __table__ = tables.applied_answers

    account: Mapped[str]
    digest: Mapped[str]
    sync_run_id: Mapped[int]
    fetched: Mapped[int]
    rejected: Mapped[int]


__all__ = [
    "Account",
    "AppliedAnswer",
    "Base",
    "NotificationDelivery",
    "Region",
    "RegionHistory",
    "SyncRun",
]
