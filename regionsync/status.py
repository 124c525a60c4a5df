"""What ``regionsync status`` reports: each account's freshness and counts, recent runs, and
the notification backlog.

The JSON names are those of the ``sync_health`` view (and ``/healthz``), for the same facts.
Given the accounts' timetables, it also says how late each unpaused account is: due since
when, and overdue or not, as the fleet's dispatcher and metrics judge it
(:mod:`regionsync.periods`).
Every per-account fact is an index lookup (``sync_runs`` by (account, status, id) and
(account, id), ``regions`` by (account, removed_at)), so a fleet of accounts with millions
of runs reads in one query, never a scan of the runs per account (docs/accounts.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from regionsync.errors import ConfigError
from regionsync.notify import outbox
from regionsync.periods import Lateness, Timetables
from regionsync.settings import DEFAULT_ACCOUNT
from regionsync.store import runs
from regionsync.store.engine import translated_errors
from regionsync.store.lock import LockHolder, lock_holder
from regionsync.store.runs import RunRow
from regionsync.store.schema import require_current
from regionsync.store.tables import RunStatus, accounts, regions, sync_runs

#: How an account's syncing stands, worst first: see :meth:`AccountStatus.state`.
AccountState = Literal["paused", "failing", "never", "stale", "overdue", "ok"]
ACCOUNT_STATES: tuple[AccountState, ...] = ("paused", "failing", "never", "stale", "overdue", "ok")


@dataclass(frozen=True)
class Freshness:
    """How old the last successful sync is: what ``status``, ``/healthz`` and the
    ``sync_health`` view call fresh or stale."""

    last_success_at: datetime | None
    checked_at: datetime

    @property
    def age(self) -> timedelta | None:
        if self.last_success_at is None:
            return None
        return self.checked_at - self.last_success_at

    def is_fresh(self, max_age: timedelta) -> bool:
        age = self.age
        return age is not None and age < max_age

    def as_json(self) -> dict[str, Any]:
        age = self.age
        return {
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "last_success_age_seconds": None if age is None else round(age.total_seconds(), 3),
        }


@dataclass(frozen=True)
class AccountStatus:
    """One account's row of ``status``: the facts of its ``sync_health`` row, and more."""

    account: str
    checked_at: datetime
    paused_at: datetime | None = None
    last_success_at: datetime | None = None
    last_run_id: int | None = None
    last_run_status: RunStatus | None = None
    #: Why the latest run failed or was skipped; None otherwise.
    last_run_error: str | None = None
    #: Failed runs since the last success (all of them when none), as ``sync_health``
    #: counts them: skipped runs count neither way.
    consecutive_failures: int = 0
    active_regions: int = 0
    removed_regions: int = 0
    #: Active regions whose carrier is enabled.
    enabled_regions: int = 0
    #: Who holds the account's sync lock (PostgreSQL only), when it was asked.
    lock: LockHolder | None = None
    #: Its own schedule (None: ``REGIONSYNC_SCHEDULE``), when it was added, and when its
    #: latest run other than a skipped one started: what lateness is judged from.
    schedule: str | None = None
    created_at: datetime | None = None
    last_start_at: datetime | None = None
    #: How late it is, when timetables were given and it is not paused.
    lateness: Lateness | None = None

    @property
    def freshness(self) -> Freshness:
        return Freshness(self.last_success_at, self.checked_at)

    def is_fresh(self, max_age: timedelta) -> bool:
        return self.freshness.is_fresh(max_age)

    @property
    def overdue(self) -> bool:
        return self.lateness is not None and self.lateness.overdue

    def counts_for_health(self, max_age: timedelta) -> bool:
        """Whether it keeps ``status`` from exiting 0: a paused account never does."""
        return self.paused_at is None and not self.is_fresh(max_age)

    def state(self, max_age: timedelta) -> AccountState:
        """``paused``; ``failing``: its latest attempt failed; ``never``: no success yet;
        ``stale``: the last success is ``max_age`` old or older; ``overdue``: due for longer
        than a period (nobody synced it); else ``ok``."""
        if self.paused_at is not None:
            return "paused"
        if self.consecutive_failures:
            return "failing"
        if self.last_success_at is None:
            return "never"
        if not self.is_fresh(max_age):
            return "stale"
        return "overdue" if self.overdue else "ok"

    def as_json(self, max_age: timedelta | None = None) -> dict[str, Any]:
        judged = {} if max_age is None else {"state": self.state(max_age)}
        return {
            "account": self.account,
            **judged,
            **({} if max_age is None else {"fresh": self.is_fresh(max_age)}),
            "paused_at": self.paused_at.isoformat() if self.paused_at else None,
            **self.freshness.as_json(),
            "consecutive_failures": self.consecutive_failures,
            "active_regions": self.active_regions,
            "removed_regions": self.removed_regions,
            "enabled_regions": self.enabled_regions,
            "last_run_id": self.last_run_id,
            "last_run_status": self.last_run_status,
            "last_run_error": self.last_run_error,
            "lock": self.lock.as_json() if self.lock else None,
            **(self.lateness.as_json() if self.lateness else dict.fromkeys(_LATENESS_KEYS)),
        }


#: What :meth:`Lateness.as_json` says, null when not judged (paused, or no timetables).
_LATENESS_KEYS = ("due_since", "due_for_seconds", "overdue", "period_seconds")


@dataclass(frozen=True)
class StatusReport:
    """What ``status`` shows. The fields before ``accounts`` describe ``account``, the one
    account asked for (or the only one); with several and none asked for (``account`` None)
    they sum them up: regions added up, the oldest last success and the most failures of the
    unpaused accounts, the latest runs of all of them."""

    recent_runs: list[RunRow]
    active_regions: int
    removed_regions: int
    last_success_at: datetime | None
    checked_at: datetime
    deliveries: outbox.Backlog | None = None
    #: Failed runs since the last success (all of them when none), as ``sync_health``
    #: counts them: skipped runs count neither way.
    consecutive_failures: int = 0
    #: Active regions whose carrier is enabled.
    enabled_regions: int = 0
    #: Who holds the sync lock right now (PostgreSQL only), see :func:`lock_holder`.
    lock: LockHolder | None = None
    #: The account the fields above describe; None: all of ``accounts``.
    account: str | None = DEFAULT_ACCOUNT
    #: One row per account, by name (only the one asked for, when one was).
    accounts: list[AccountStatus] = field(default_factory=list)

    @property
    def lock_warning(self) -> str | None:
        """One line when the sync lock's holder is stuck (held longer than a run can take,
        or waiting for another lock longer than a run ever waits), else None."""
        if self.lock is None or not self.lock.is_stuck():
            return None
        return (
            f"WARNING: the sync lock's holder is stuck ({self.lock.describe()}); "
            "every run is skipped until that session ends"
        )

    @property
    def overdue(self) -> list[AccountStatus]:
        """The unpaused accounts due for longer than a period, the longest due first."""
        late = [
            (row.lateness.due_for, row) for row in self.accounts if row.lateness and row.overdue
        ]
        return [row for _, row in sorted(late, key=lambda pair: pair[0], reverse=True)]

    def lock_warnings(self) -> list[str]:
        """One line per account whose sync lock's holder is stuck."""
        return [
            f"WARNING: account {row.account}'s sync lock holder is stuck "
            f"({row.lock.describe()}); its runs are skipped until that session ends"
            for row in self.accounts
            if row.lock is not None and row.lock.is_stuck()
        ]

    @property
    def freshness(self) -> Freshness:
        return Freshness(self.last_success_at, self.checked_at)

    def is_fresh(self, max_age: timedelta) -> bool:
        """Whether ``status`` exits 0: every unpaused account's last success is younger
        than ``max_age``."""
        if not self.accounts:
            return self.freshness.is_fresh(max_age)
        return not any(row.counts_for_health(max_age) for row in self.accounts)

    def as_json(self, max_age: timedelta | None = None) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "account": self.account,
            **self.freshness.as_json(),
            "active_regions": self.active_regions,
            "removed_regions": self.removed_regions,
            "enabled_regions": self.enabled_regions,
            **(self.deliveries.as_json(self.checked_at) if self.deliveries else {}),
            "consecutive_failures": self.consecutive_failures,
            "lock": self.lock.as_json() if self.lock else None,
            "overdue_accounts": len(self.overdue),
            "recent_runs": [run.as_json() for run in self.recent_runs],
            "accounts": [row.as_json(max_age) for row in self.accounts],
        }


@translated_errors("reading the status")
def gather(
    engine: Engine,
    *,
    limit: int = 10,
    account: str | None = None,
    default_account: str | None = None,
    timetables: Timetables | None = None,
) -> StatusReport:
    """The status of every account, or of ``account`` alone (a :class:`ConfigError` when
    there is no such account); with ``timetables``, how late each unpaused one is.

    The accounts are the rows of ``accounts``; while it is empty, those that have runs, as
    the ``sync_health`` view lists them, and ``default_account`` (the settings' one
    account, ``REGIONSYNC_ACCOUNT``) even before its first run. Not given, it is the
    account that has runs (``default`` before any).
    """
    require_current(engine)
    with engine.connect() as connection:
        checked_at = runs.now()
        rows = _account_rows(connection, checked_at, account, default_account)
        one_asked = account is not None or len(rows) == 1
        rows = [_with_lock(connection, row, asked=one_asked) for row in rows]
        if timetables is not None:
            rows = [_with_lateness(row, timetables) for row in rows]
        deliveries = outbox.backlog(connection)
        selected = account if account is not None else rows[0].account if len(rows) == 1 else None
        recent = runs.recent(connection, limit, account=selected)
    if selected is not None:
        one = rows[0]
        return StatusReport(
            recent_runs=recent,
            active_regions=one.active_regions,
            removed_regions=one.removed_regions,
            last_success_at=one.last_success_at,
            checked_at=checked_at,
            deliveries=deliveries,
            consecutive_failures=one.consecutive_failures,
            enabled_regions=one.enabled_regions,
            lock=one.lock,
            account=selected,
            accounts=rows,
        )
    unpaused = [row for row in rows if row.paused_at is None]
    successes = [row.last_success_at for row in unpaused]
    oldest = None if not successes or None in successes else min(s for s in successes if s)
    held = [row.lock for row in rows if row.lock is not None]
    return StatusReport(
        recent_runs=recent,
        active_regions=sum(row.active_regions for row in rows),
        removed_regions=sum(row.removed_regions for row in rows),
        last_success_at=oldest,
        checked_at=checked_at,
        deliveries=deliveries,
        consecutive_failures=max((row.consecutive_failures for row in unpaused), default=0),
        enabled_regions=sum(row.enabled_regions for row in rows),
        lock=next((lock for lock in held if lock.is_stuck()), held[0] if held else None),
        account=None,
        accounts=rows,
    )


def _account_rows(
    connection: Connection, checked_at: datetime, name: str | None, default_account: str | None
) -> list[AccountStatus]:
    """Each account's facts in one query: the ``accounts`` table drives it, or, while the
    table is empty, the names that have runs (and the settings' one)."""
    if connection.execute(sa.select(accounts.c.name).limit(1)).first() is not None:
        query = sa.select(
            accounts.c.name,
            accounts.c.paused_at,
            accounts.c.schedule,
            accounts.c.created_at,
            *_facts(accounts.c.name),
        ).order_by(accounts.c.name)
        if name is not None:
            query = query.where(accounts.c.name == name)
        found = connection.execute(query).all()
        if not found and name is not None:
            raise ConfigError(
                "--account", f"no account named {name!r}; see `regionsync accounts list`"
            )
        return [_status(row, checked_at) for row in found]
    names = sorted(
        {*_accounts_with_runs(connection), *([default_account] if default_account else [])}
    )
    names = names or [DEFAULT_ACCOUNT]
    if name is not None:
        if name not in names:
            raise ConfigError(
                "--account",
                f"no account named {name!r}: the accounts table is empty, so the only account "
                f"is {default_account or names[0]!r} (REGIONSYNC_ACCOUNT)",
            )
        names = [name]
    statuses = []
    for each in names:
        given = sa.literal(each, sa.Text())
        row = connection.execute(
            sa.select(
                given,
                sa.null().label("paused_at"),
                sa.null().label("schedule"),
                sa.null().label("created_at"),
                *_facts(given),
            )
        ).one()
        statuses.append(_status(row, checked_at))
    return statuses


def _facts(account: sa.ColumnElement[str]) -> list[sa.Label[Any]]:
    """Scalar subqueries of one account's syncing facts, each an index lookup or range.

    Each correlates to whatever ``account`` comes from, however deep it is nested (SQL
    Alchemy would otherwise add that table to a nested subquery's FROM)."""
    s = sync_runs.alias("s")
    last_success_id = (
        sa.select(sa.func.max(s.c.id))
        .where(s.c.account == account, s.c.status == "succeeded")
        .correlate_except(s)
        .scalar_subquery()
    )
    last_run_id = (
        sa.select(sa.func.max(s.c.id))
        .where(s.c.account == account)
        .correlate_except(s)
        .scalar_subquery()
    )
    last = sync_runs.alias("last")
    failed = sync_runs.alias("f")
    r = regions.alias("r")
    present = sa.and_(r.c.account == account, r.c.removed_at.is_(None))

    def count(*where: sa.ColumnElement[bool]) -> sa.ScalarSelect[Any]:
        return (
            sa.select(sa.func.count())
            .select_from(r)
            .where(*where)
            .correlate_except(r)
            .scalar_subquery()
        )

    def of_run(column: str, run_id: sa.ScalarSelect[Any], label: str) -> sa.Label[Any]:
        found = sa.select(last.c[column]).where(last.c.id == run_id).correlate_except(last)
        return found.scalar_subquery().label(label)

    last_start = (
        sa.select(s.c.started_at)
        .where(s.c.account == account, s.c.status != "skipped")
        .order_by(s.c.id.desc())
        .limit(1)
        .correlate_except(s)
        .scalar_subquery()
    )
    return [
        of_run("finished_at", last_success_id, "last_success_at"),
        last_start.label("last_start_at"),
        last_run_id.label("last_run_id"),
        of_run("status", last_run_id, "last_run_status"),
        of_run("error", last_run_id, "last_run_error"),
        sa.select(sa.func.count())
        .select_from(failed)
        .where(
            failed.c.account == account,
            failed.c.status == "failed",
            failed.c.id > sa.func.coalesce(last_success_id, 0),
        )
        .correlate_except(failed)
        .scalar_subquery()
        .label("consecutive_failures"),
        count(present).label("active_regions"),
        count(r.c.account == account, r.c.removed_at.is_not(None)).label("removed_regions"),
        count(present, r.c.carrier_enabled.is_(True)).label("enabled_regions"),
    ]


def _status(row: sa.Row[Any], checked_at: datetime) -> AccountStatus:
    values = row._mapping
    return AccountStatus(
        account=row[0],
        checked_at=checked_at,
        paused_at=values["paused_at"],
        last_success_at=values["last_success_at"],
        last_run_id=values["last_run_id"],
        last_run_status=values["last_run_status"],
        last_run_error=values["last_run_error"],
        consecutive_failures=values["consecutive_failures"],
        active_regions=values["active_regions"],
        removed_regions=values["removed_regions"],
        enabled_regions=values["enabled_regions"],
        schedule=values["schedule"],
        created_at=values["created_at"],
        last_start_at=values["last_start_at"],
    )


def _with_lateness(row: AccountStatus, timetables: Timetables) -> AccountStatus:
    if row.paused_at is not None:
        return row
    late = timetables.lateness(
        row.account,
        row.schedule,
        last_start=row.last_start_at,
        created_at=row.created_at,
        now=row.checked_at,
    )
    return replace(row, lateness=late)


def _accounts_with_runs(connection: Connection) -> list[str]:
    """The distinct accounts of ``sync_runs``, one index probe each (a loose index scan),
    not a read of every run."""
    found: list[str] = []
    following = sa.select(sa.func.min(sync_runs.c.account))
    current = connection.execute(following).scalar_one()
    while current is not None:
        found.append(current)
        current = connection.execute(following.where(sync_runs.c.account > current)).scalar_one()
    return found


def _with_lock(connection: Connection, row: AccountStatus, *, asked: bool) -> AccountStatus:
    """The row with its lock holder: asked of PostgreSQL for the account asked for, or for
    one whose latest run is running or was skipped (a holder that lasts shows so), so that a
    fleet's status does not ask once per account."""
    if not asked and row.last_run_status not in ("running", "skipped"):
        return row
    holder = lock_holder(connection, row.account)
    if holder is None:
        return row
    return replace(row, lock=holder)


__all__ = [
    "ACCOUNT_STATES",
    "AccountState",
    "AccountStatus",
    "Freshness",
    "StatusReport",
    "gather",
]
