"""What ``regionsync regions`` and ``regionsync changes`` read: regions and their history.

Operators answer "what is enabled?" and "what changed last night?" without SQL. Every
read is bounded by a limit and also says how many rows matched, so a caller can tell the
user the list was cut. Rows are those of one account, or of all; a page says whether its
rows can come from more than one account, so that the account is shown only then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from regionsync.store import tables
from regionsync.store.engine import translated_errors
from regionsync.store.schema import require_current

RegionState = Literal["active", "enabled", "disabled", "removed", "all"]
REGION_STATES: tuple[RegionState, ...] = ("active", "enabled", "disabled", "removed", "all")

#: The columns of ``regions`` shown by ``regionsync regions``, in order (``raw`` is not).
REGION_COLUMNS = (
    "id",
    "display_name",
    "region_name",
    "carrier_enabled",
    "hosting_region",
    "management_type",
    "management_type_value",
    "first_seen_at",
    "updated_at",
    "removed_at",
)
#: The columns of a change, as ``regionsync changes`` shows them.
CHANGE_COLUMNS = (
    "history_id",
    "changed_at",
    "region_id",
    "display_name",
    "change",
    "carrier_enabled_before",
    "carrier_enabled_after",
    "hosting_region_before",
    "hosting_region_after",
    "sync_run_id",
)


@dataclass(frozen=True)
class Page:
    """Up to ``limit`` rows of a query, and how many rows matched in all."""

    rows: list[dict[str, Any]]
    total: int
    #: The rows can come from more than one account (more than one has rows): show
    #: each row's ``account``.
    several_accounts: bool = False

    @property
    def truncated(self) -> bool:
        return self.total > len(self.rows)


def region_page(
    engine: Engine,
    *,
    state: RegionState = "active",
    hosting_region: str | None = None,
    account: str | None = None,
    limit: int = 1000,
) -> Page:
    """Regions by display name (by account first, when several have regions): the present
    ones (``active``) unless ``state`` says otherwise; ``enabled``/``disabled`` are present
    regions by ``carrier_enabled``; ``account``'s only, when given."""
    table = tables.regions
    conditions: list[sa.ColumnElement[bool]] = []
    if account is not None:
        conditions.append(table.c.account == account)
    if state in ("active", "enabled", "disabled"):
        conditions.append(table.c.removed_at.is_(None))
    if state == "enabled":
        conditions.append(table.c.carrier_enabled.is_(True))
    elif state == "disabled":
        conditions.append(table.c.carrier_enabled.is_(False))
    elif state == "removed":
        conditions.append(table.c.removed_at.is_not(None))
    if hosting_region is not None:
        conditions.append(table.c.hosting_region == hosting_region)
    query = sa.select(table.c.account, *(table.c[name] for name in REGION_COLUMNS)).where(
        *conditions
    )
    counted = sa.select(sa.func.count()).select_from(table).where(*conditions)
    order = (table.c.display_name, table.c.id)
    return _page(
        engine,
        lambda several: query.order_by(*((table.c.account,) if several else ()), *order),
        counted,
        limit,
        "reading the regions",
        several=None if account is not None else table.c.account,
    )


def change_page(
    engine: Engine,
    *,
    since: datetime | None = None,
    region_id: str | None = None,
    account: str | None = None,
    limit: int = 100,
) -> Page:
    """History rows, newest first, with the region's current display name; ``account``'s
    only, when given."""
    history, table = tables.region_history, tables.regions
    conditions: list[sa.ColumnElement[bool]] = []
    if account is not None:
        conditions.append(history.c.account == account)
    if since is not None:
        conditions.append(history.c.changed_at >= since)
    if region_id is not None:
        conditions.append(history.c.region_id == region_id)
    query = (
        sa.select(
            history.c.account,
            history.c.id.label("history_id"),
            history.c.changed_at,
            history.c.region_id,
            table.c.display_name,
            history.c.change,
            history.c.carrier_enabled_before,
            history.c.carrier_enabled_after,
            history.c.hosting_region_before,
            history.c.hosting_region_after,
            history.c.sync_run_id,
        )
        .join(
            table, sa.and_(table.c.account == history.c.account, table.c.id == history.c.region_id)
        )
        .where(*conditions)
        .order_by(history.c.changed_at.desc(), history.c.id.desc())
    )
    counted = sa.select(sa.func.count()).select_from(history).where(*conditions)
    return _page(
        engine,
        lambda several: query,
        counted,
        limit,
        "reading the history",
        several=None if account is not None else history.c.account,
    )


def account_has_data(engine: Engine, account: str) -> bool:
    """Whether ``account`` has regions or runs (an index probe each)."""
    with translated_errors("reading the regions"):
        require_current(engine)
        with engine.connect() as connection:
            return any(
                connection.execute(
                    sa.select(table.c.account).where(table.c.account == account).limit(1)
                ).first()
                is not None
                for table in (tables.regions, tables.sync_runs)
            )


def _page(
    engine: Engine,
    query: Callable[[bool], sa.Select[Any]],
    counted: sa.Select[Any],
    limit: int,
    action: str,
    *,
    several: sa.Column[str] | None,
) -> Page:
    """``query(several)``'s first ``limit`` rows; ``several``: the account column of the
    table whose rows are listed, asked whether more than one account has rows (its least
    and greatest values: two index lookups), or None when one account was asked for."""
    with translated_errors(action):
        require_current(engine)
        with engine.connect() as connection:
            many = False
            if several is not None:
                least, greatest = connection.execute(
                    sa.select(sa.func.min(several), sa.func.max(several))
                ).one()
                many = least != greatest
            found = connection.execute(query(many).limit(limit)).mappings()
            rows = [dict(row) for row in found]
            total = connection.execute(counted).scalar_one()
    return Page(rows=rows, total=total, several_accounts=many)


__all__ = [
    "CHANGE_COLUMNS",
    "REGION_COLUMNS",
    "REGION_STATES",
    "Page",
    "account_has_data",
    "change_page",
    "region_page",
]
