"""Hand-made histories with known answers, for the views and the example queries.

:func:`write_events` stores any history as a sequence of syncs would have left it (one
succeeded run per moment, befores equal to the previous afters, ``regions`` holding the
final state). :func:`seed` stores the story below, days counted back from ``now``:

- ``a`` "Alpha": added day -60 (enabled, EUROPE); disabled day -20; enabled again day -5.
- ``b`` "Bravo": added day -60 (enabled, NORTH_AMERICA); removed day -10, never back.
- ``c`` "Charlie": added day -40 (disabled, NORTH_AMERICA); removed day -32; restored
  day -25 (enabled, NORTH_AMERICA).

Runs: one succeeded run per day above, a skipped run on day -3, then two failed runs on
days -2 and -1.

Every row belongs to one account (``default`` unless given): seeding a second account with
``first_run`` past the first one's runs stores the same story beside it, the same region ids
included (regions are keyed by account and id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from regionsync.settings import DEFAULT_ACCOUNT
from regionsync.store.runs import Counts
from regionsync.store.tables import region_history, regions, sync_runs

Values = tuple[bool, str | None]
#: Runs :func:`seed` writes: one per moment of EVENTS, then the skipped and failed ones.
SEEDED_RUNS = 10
#: (when, region, change, (carrier_enabled, hosting_region) after; None = absent)
Event = tuple[datetime, str, str, Values | None]

# day, region, change, (enabled, hosting) after; None = absent
EVENTS: list[tuple[int, str, str, Values | None]] = [
    (-60, "a", "added", (True, "EUROPE")),
    (-60, "b", "added", (True, "NORTH_AMERICA")),
    (-40, "c", "added", (False, "NORTH_AMERICA")),
    (-32, "c", "removed", None),
    (-25, "c", "restored", (True, "NORTH_AMERICA")),
    (-20, "a", "changed", (False, "EUROPE")),
    (-10, "b", "removed", None),
    (-5, "a", "changed", (True, "EUROPE")),
]
NAMES = {"a": "Alpha", "b": "Bravo", "c": "Charlie"}


@dataclass(frozen=True)
class Seeded:
    now: datetime

    def day(self, n: int) -> datetime:
        return self.now + timedelta(days=n)

    def state_at(self, moment: datetime) -> dict[str, Values | None]:
        """Each region's tracked values at ``moment`` (None: absent), from EVENTS."""
        return state_at(self.events(), moment)

    def events(self) -> list[Event]:
        return [(self.day(day), rid, change, after) for day, rid, change, after in EVENTS]


def state_at(events: Sequence[Event], moment: datetime) -> dict[str, Values | None]:
    """Each region's tracked values at ``moment`` (None: absent): a replay of ``events``."""
    state: dict[str, Values | None] = {}
    for at, region_id, _change, after in sorted(events, key=lambda e: e[0]):
        if at <= moment:
            state[region_id] = after
    return state


def write_events(
    engine: Engine,
    events: Sequence[Event],
    *,
    names: dict[str, str] | None = None,
    first_run: int = 1,
    account: str = DEFAULT_ACCOUNT,
) -> int:
    """Store ``events`` as syncs would have: returns the id of the last run written."""
    ordered = sorted(events, key=lambda e: e[0])
    moments = sorted({at for at, *_ in ordered})
    run_of = {at: number for number, at in enumerate(moments, start=first_run)}
    previous: dict[str, Values | None] = {}
    first_seen: dict[str, datetime] = {}
    last_change: dict[str, datetime] = {}
    last_known: dict[str, Values] = {}
    for at, rid, _change, after in ordered:
        first_seen.setdefault(rid, at)
        last_change[rid] = at
        if after is not None:
            last_known[rid] = after
    with engine.begin() as c:
        for at, number in run_of.items():
            c.execute(
                sync_runs.insert().values(**run_row(number, at, "succeeded", account=account))
            )
        for rid, first in first_seen.items():
            final = state_at(ordered, last_change[rid])[rid]
            enabled, hosting = last_known[rid]
            c.execute(
                regions.insert().values(
                    account=account,
                    id=rid,
                    region_name=f"/v1/regions/{rid}",
                    display_name=(names or {}).get(rid, f"Region {rid}"),
                    carrier_enabled=enabled,
                    hosting_region=hosting,
                    raw={"id": rid},
                    first_seen_at=first,
                    updated_at=last_change[rid],
                    removed_at=None if final is not None else last_change[rid],
                )
            )
        for at, rid, change, after in ordered:
            before = previous.get(rid)
            c.execute(
                region_history.insert().values(
                    account=account,
                    region_id=rid,
                    sync_run_id=run_of[at],
                    changed_at=at,
                    change=change,
                    carrier_enabled_before=None if before is None else before[0],
                    carrier_enabled_after=None if after is None else after[0],
                    hosting_region_before=None if before is None else before[1],
                    hosting_region_after=None if after is None else after[1],
                )
            )
            previous[rid] = after
    return first_run + len(moments) - 1


def seed(
    engine: Engine, now: datetime, *, account: str = DEFAULT_ACCOUNT, first_run: int = 1
) -> Seeded:
    """The story above for ``account``, its runs numbered from ``first_run``
    (:data:`SEEDED_RUNS` of them)."""
    seeded = Seeded(now)
    last = write_events(engine, seeded.events(), names=NAMES, first_run=first_run, account=account)
    with engine.begin() as c:
        for offset, (day, status) in enumerate(
            [(-3, "skipped"), (-2, "failed"), (-1, "failed")], start=1
        ):
            row = run_row(last + offset, seeded.day(day), status, account=account)
            c.execute(sync_runs.insert().values(**row))
    return seeded


def run_row(
    number: int, at: datetime, status: str, *, account: str = DEFAULT_ACCOUNT
) -> dict[str, Any]:
    return {
        "id": number,
        "account": account,
        "started_at": at,
        "finished_at": at + timedelta(seconds=2),
        "status": status,
        "trigger": "daemon",
        "source": "test",
        "error": None if status == "succeeded" else f"{status} for the test",
        **Counts().as_dict(),
    }
