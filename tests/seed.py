"""A hand-made history with known answers, for the views and the example queries.

Days are counted back from ``now``; the story, per region:

- ``a`` "Alpha": added day -60 (enabled, EUROPE); disabled day -20; enabled again day -5.
- ``b`` "Bravo": added day -60 (enabled, NORTH_AMERICA); removed day -10, never back.
- ``c`` "Charlie": added day -40 (disabled, NORTH_AMERICA); removed day -32; restored
  day -25 (enabled, NORTH_AMERICA).

Runs: one succeeded run per day above, a skipped run on day -3, then two failed runs on
days -2 and -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from regionsync.models import history_table, regions_table, runs_table
from regionsync.runs import Counts

# day, region, change, (enabled, hosting) after; None = absent
EVENTS: list[tuple[int, str, str, tuple[bool, str] | None]] = [
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

    def state_at(self, moment: datetime) -> dict[str, tuple[bool, str] | None]:
        """Each region's tracked values at ``moment`` (None: absent), from EVENTS."""
        state: dict[str, tuple[bool, str] | None] = {}
        for day, region_id, _change, after in EVENTS:
            if self.day(day) <= moment:
                state[region_id] = after
        return state


def seed(engine: Engine, now: datetime) -> Seeded:
    seeded = Seeded(now)
    days = sorted({day for day, *_ in EVENTS})
    run_of = {day: number for number, day in enumerate(days, start=1)}
    final = seeded.state_at(now)
    first_seen = {rid: min(d for d, r, *_ in EVENTS if r == rid) for rid in NAMES}
    last_change = {rid: max(d for d, r, *_ in EVENTS if r == rid) for rid in NAMES}
    previous: dict[str, tuple[bool, str] | None] = {}
    with engine.begin() as c:
        for day, number in run_of.items():
            c.execute(runs_table.insert().values(**_run(number, seeded.day(day), "succeeded")))
        extra = len(run_of)
        for offset, (day, status) in enumerate(
            [(-3, "skipped"), (-2, "failed"), (-1, "failed")], start=1
        ):
            c.execute(runs_table.insert().values(**_run(extra + offset, seeded.day(day), status)))
        for rid, name in NAMES.items():
            last_known = next(a for d, r, _, a in reversed(EVENTS) if r == rid and a is not None)
            c.execute(
                regions_table.insert().values(
                    id=rid,
                    region_name=f"/v1/regions/{rid}",
                    display_name=name,
                    carrier_enabled=last_known[0],
                    hosting_region=last_known[1],
                    raw={"id": rid},
                    first_seen_at=seeded.day(first_seen[rid]),
                    updated_at=seeded.day(last_change[rid]),
                    removed_at=None if final[rid] is not None else seeded.day(last_change[rid]),
                )
            )
        for day, rid, change, after in EVENTS:
            before = previous.get(rid)
            c.execute(
                history_table.insert().values(
                    region_id=rid,
                    sync_run_id=run_of[day],
                    changed_at=seeded.day(day),
                    change=change,
                    carrier_enabled_before=None if before is None else before[0],
                    carrier_enabled_after=None if after is None else after[0],
                    hosting_region_before=None if before is None else before[1],
                    hosting_region_after=None if after is None else after[1],
                )
            )
            previous[rid] = after
    return seeded


def _run(number: int, at: datetime, status: str) -> dict[str, Any]:
    return {
        "id": number,
        "started_at": at,
        "finished_at": at + timedelta(seconds=2),
        "status": status,
        "trigger": "daemon",
        "source": "test",
        "error": None if status == "succeeded" else f"{status} for the test",
        **Counts().as_dict(),
    }
