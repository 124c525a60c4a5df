"""A hypothesis state machine: random snapshot sequences through real runs.

After every step: the active rows equal what the snapshot says (rejected ids held as they
were), replaying ``region_history`` reproduces every region's tracked values and presence,
each history row's befores equal the previous row's afters, and an unchanged snapshot
writes nothing. A run fails, changing nothing, exactly when a guard says it must (mass
removal, or more than half of the records rejected).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import hypothesis.strategies as st
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy.engine import Engine

from regionsync.errors import GuardError
from regionsync.sync import Guard, run_sync
from tests.support.sources import ListSource, region

pytestmark = pytest.mark.slow

IDS = [f"r{i}" for i in range(6)]
HOSTING = ["NORTH_AMERICA", "EUROPE", "HOSTING_REGION_US", None]

good_record = st.builds(
    lambda rid, enabled, hosting, name, extra: region(
        rid, enabled=enabled, hosting=hosting, name=name, **extra
    ),
    st.sampled_from(IDS),
    st.booleans(),
    st.sampled_from(HOSTING),
    st.sampled_from(["A", "B"]),
    st.sampled_from([{}, {"new_field": 1}, {"new_field": 2}]),
)
bad_record = st.one_of(
    st.builds(lambda rid: region(rid, enabled="true"), st.sampled_from(IDS)),
    st.builds(lambda rid: region(rid, managment_type_value="two"), st.sampled_from(IDS)),
    st.just({"region_name": "no id", "carrier_enabled": True}),
    st.just("not an object"),
)
snapshot = st.lists(
    st.one_of(good_record, good_record, good_record, bad_record), min_size=0, max_size=9
)


def is_rejected(record: Any) -> bool:
    return (
        not isinstance(record, dict)
        or not isinstance(record.get("id"), str)
        or not isinstance(record.get("carrier_enabled"), bool)
        or isinstance(record.get("managment_type_value"), str)
    )


def rejects_trip(data: list[Any]) -> bool:
    """Every record rejected, or more than half of them (the default reject fraction)."""
    rejected = sum(1 for record in data if is_rejected(record))
    return rejected > 0 and (rejected == len(data) or rejected / len(data) > 0.5)


def expected_after(
    data: list[Any], state: dict[str, tuple[bool, str | None] | None]
) -> dict[str, Any]:
    """What the database must hold after ``data``: id -> (enabled, hosting) or None (removed)."""
    held = set()
    valid: dict[str, tuple[bool, str | None]] = {}
    for record in data:
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            continue
        if is_rejected(record):
            held.add(record["id"])
            continue
        valid[record["id"]] = (record["carrier_enabled"], record["hosting_region"])
    result: dict[str, Any] = {}
    for rid in set(state) | set(valid):
        if rid in held:
            if rid in state:
                result[rid] = state[rid]
        elif rid in valid:
            result[rid] = valid[rid]
        elif rid in state:
            result[rid] = None
    return result


class SyncMachine(RuleBasedStateMachine):
    engine: Engine

    def __init__(self) -> None:
        super().__init__()
        with self.engine.begin() as c:
            for table in ("region_history", "regions", "sync_runs"):
                c.execute(sa.text(f"DELETE FROM {table}"))
        self.source = ListSource([])
        self.model: dict[str, tuple[bool, str | None] | None] = {}
        self.applied: list[Any] | None = None

    def _run(self, data: list[Any], *, allow: bool) -> None:
        self.source.data = data
        expected = expected_after(data, self.model)
        active = sum(1 for v in self.model.values() if v is not None)
        removing = sum(
            1 for k, v in expected.items() if v is None and self.model.get(k) is not None
        )
        trips = rejects_trip(data) or (not allow and active > 0 and removing / active > 0.5)
        try:
            run_sync(self.engine, self.source, guard=Guard(0.5, allow_mass_removal=allow))
        except GuardError:
            assert trips
            return
        assert not trips
        self.model = expected
        self.applied = data

    @rule(data=snapshot)
    def sync_with_guard(self, data: list[Any]) -> None:
        self._run(data, allow=False)

    @rule(data=snapshot)
    def sync_allowing_mass_removal(self, data: list[Any]) -> None:
        self._run(data, allow=True)

    @rule()
    def same_snapshot_again_writes_nothing(self) -> None:
        if self.applied is None:
            return
        self.source.data = self.applied
        before = self._dump()
        result = run_sync(self.engine, self.source, guard=Guard(1.0))
        assert result.changes == []
        assert self._dump() == before

    def _dump(self) -> tuple[Any, ...]:
        with self.engine.connect() as c:
            regions = c.execute(sa.text("SELECT * FROM regions ORDER BY id")).all()
            history = c.execute(sa.text("SELECT * FROM region_history ORDER BY id")).all()
        return (regions, history)

    @invariant()
    def database_matches_the_model(self) -> None:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.text("SELECT id, carrier_enabled, hosting_region, removed_at FROM regions")
            ).all()
        actual = {r[0]: None if r[3] is not None else (bool(r[1]), r[2]) for r in rows}
        assert actual == self.model

    @invariant()
    def replaying_history_reproduces_the_regions(self) -> None:
        with self.engine.connect() as c:
            history = c.execute(
                sa.text(
                    "SELECT region_id, change, carrier_enabled_before, carrier_enabled_after,"
                    " hosting_region_before, hosting_region_after FROM region_history"
                    " ORDER BY changed_at, id"
                )
            ).all()
        replayed: dict[str, tuple[Any, Any]] = {}
        for rid, change, ce_before, ce_after, hr_before, hr_after in history:
            previous = replayed.get(rid, (None, None))
            as_bool = lambda v: None if v is None else bool(v)  # noqa: E731
            assert (as_bool(ce_before), hr_before) == previous, f"{rid}: befores != last afters"
            assert (change in ("added", "restored")) == (
                previous == (None, None) and ce_after is not None
            )
            replayed[rid] = (as_bool(ce_after), hr_after)
        expected = {rid: v if v is not None else (None, None) for rid, v in self.model.items()}
        assert replayed == expected

    @invariant()
    def status_intervals_never_overlap_and_end_at_removal(self) -> None:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.text(
                    "SELECT region_id, carrier_enabled, hosting_region, valid_from, valid_to"
                    " FROM region_status_intervals ORDER BY region_id, valid_from"
                )
            ).all()
        by_region: dict[str, list[Any]] = {}
        for row in rows:
            by_region.setdefault(row[0], []).append(row)
        for rid, intervals in by_region.items():
            for earlier, later in pairwise(intervals):
                assert earlier[4] is not None, f"{rid}: only the last interval may be open"
                assert earlier[4] <= later[3], f"{rid}: intervals overlap"
            last = intervals[-1]
            current = self.model.get(rid)
            if current is None:
                assert last[4] is not None, f"{rid}: a removed region has no open interval"
            else:
                assert last[4] is None
                assert (bool(last[1]), last[2]) == current


def test_random_snapshot_sequences_keep_history_exact(engine: Engine) -> None:
    machine = type("Machine", (SyncMachine,), {"engine": engine})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=30,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
