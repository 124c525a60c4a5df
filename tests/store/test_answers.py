"""The no-change shortcut (docs/sync.md, *Nothing to do*): exactly as correct as the full diff.

The property test applies the same random sequence of answers and hand edits to two accounts
of one database: ``short`` syncs as every run does, ``full`` has its remembered answer
emptied before each run (always safe, the docs say), so it diffs in full every time and is
the oracle. After every step both accounts hold the same regions, history and runs, and the
shortcut was taken exactly when the answer repeated the one last applied with no write to
the account's regions since.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from sqlalchemy.engine import URL, Connection, Engine
from structlog.testing import capture_logs

from regionsync import store
from regionsync.errors import RegionSyncError
from regionsync.notify.outbox import OutboxPolicy
from regionsync.records import Snapshot
from regionsync.source.saved import FileSource
from regionsync.store.schema import migrate
from regionsync.store.tables import (
    applied_answers,
    notification_deliveries,
    region_history,
    regions,
    sync_runs,
)
from regionsync.sync import Guard, SyncResult, run_sync
from tests.support import settings_for
from tests.support.sources import body, region

SHORT, FULL, OTHER = "short", "full", "other"
IDS = ("r0", "r1", "r2", "r3")
HOSTING = ("NORTH_AMERICA", "EUROPE", None)
#: Optional fields a record may leave out ("not reported": the stored value is kept).
OMITTABLE = ("hosting_region", "display_name", "region_name")
#: What a hand edit writes into ``removed_at``: far from any run, so never taken for one.
BY_HAND = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
#: Hand edits of one field of one region: (column, value); SAME rewrites the stored value.
SAME = object()
FIELD_EDITS: tuple[tuple[str, Any], ...] = (
    ("carrier_enabled", "toggle"),
    ("hosting_region", "EUROPE"),
    ("hosting_region", None),
    ("display_name", "Edited by hand"),
    ("display_name", SAME),
    ("region_name", None),
    ("management_type_value", 99),
    ("raw", {"edited": True}),
)
#: The columns of a run that must match between the accounts.
RUN_COLUMNS = (
    "status",
    "trigger",
    "source",
    "error",
    "fetched",
    "added",
    "changed",
    "unchanged",
    "removed",
    "restored",
    "rejected",
)
TIMESTAMPS = ("first_seen_at", "updated_at", "removed_at")


#: A valid record: id, carrier_enabled, hosting_region, display name, fields left out.
Record = tuple[str, bool, str | None, str, frozenset[str]]


@dataclass(frozen=True)
class Answer:
    """An answer of the API: valid records (id, enabled, hosting, name, fields left out)
    and the ids of rejected records (None: a record without an id)."""

    records: tuple[Record, ...]
    rejected: tuple[str | None, ...] = ()
    reversed: bool = False

    def data(self) -> list[Any]:
        data: list[Any] = []
        for rid, enabled, hosting, name, omitted in sorted(self.records):
            valid = region(rid, enabled=enabled, hosting=hosting, name=f"{name} {rid}")
            for field in omitted:
                del valid[field]
            data.append(valid)
        if self.reversed:
            data.reverse()
        for held in self.rejected:
            if held is None:
                data.append({"region_name": "no id", "carrier_enabled": True})
            else:
                data.append(region(held, carrier_enabled="yes"))
        return data

    def content(self) -> tuple[frozenset[str], frozenset[str]]:
        """What the full diff reads: the valid records not held back, and the held ids
        (order, and the records held ids stand for, make no difference)."""
        held = frozenset(rid for rid in self.rejected if rid is not None)
        valid = {
            json.dumps(record, sort_keys=True)
            for record in self.data()
            if "id" in record
            and isinstance(record["carrier_enabled"], bool)
            and record["id"] not in held
        }
        return frozenset(valid), held

    def again(self, twist: str) -> Answer:
        """This answer again, or in another order, or with its rejected records gone."""
        if twist == "unrejected":
            return Answer(self.records)
        return Answer(self.records, self.rejected, reversed=twist == "reversed")

    def varied(self, index: int, how: str) -> Answer:
        """This answer with one thing changed: the near repeats a shortcut must not miss."""
        records = sorted(self.records)
        present = {r[0] for r in records}
        if how == "add" or not records:
            missing = [rid for rid in IDS if rid not in present]
            if not missing:
                return self
            new: Record = (missing[index % len(missing)], True, "NORTH_AMERICA", "A", frozenset())
            return Answer((*records, new), self.rejected)
        at = index % len(records)
        rid, enabled, hosting, name, omitted = records[at]
        if how == "hold":  # the region's record comes in invalid: it holds the region
            return Answer(tuple(records[:at] + records[at + 1 :]), (*self.rejected, rid))
        if how == "release":
            return Answer(tuple(records), tuple(r for r in self.rejected if r is None))
        if how == "drop":
            return Answer(tuple(records[:at] + records[at + 1 :]), self.rejected)
        if how == "enabled":
            enabled = not enabled
        elif how == "hosting":
            hosting = HOSTING[(HOSTING.index(hosting) + 1) % len(HOSTING)]
        elif how == "name":
            name = "B" if name == "A" else "A"
        elif how == "omit":
            omitted = omitted | {OMITTABLE[index % len(OMITTABLE)]}
        elif how == "report":
            omitted = frozenset()
        records[at] = (rid, enabled, hosting, name, omitted)
        return Answer(tuple(records), self.rejected)


record = st.tuples(
    st.sampled_from(IDS),
    st.booleans(),
    st.sampled_from(HOSTING),
    st.sampled_from(("A", "B")),
    st.frozensets(st.sampled_from(OMITTABLE), max_size=2),
)
random_answers = st.builds(
    Answer,
    st.lists(record, max_size=4, unique_by=lambda r: r[0]).map(tuple),
    st.lists(st.sampled_from((*IDS, None)), max_size=2).map(tuple)
    | st.just(()),  # most answers reject nothing
)
#: What the steps start from: a few regions, none rejected.
first_answers = st.builds(
    Answer, st.lists(record, min_size=2, max_size=4, unique_by=lambda r: r[0]).map(tuple)
)
region_index = st.integers(0, 7)
#: The mass-removal guard is on in a third of the runs (small answers trip it often).
allow_mass_removal = st.sampled_from((True, True, False))
TWISTS = ("same", "same", "reversed", "unrejected")
VARIATIONS = (
    *("add", "drop", "enabled", "hosting", "name", "omit", "report"),
    *("hold", "release") * 3,  # held regions, then let go: what the digest must tell apart
)
repeat = st.tuples(
    st.just("again"),
    st.sampled_from((0, 0, 0, 1, 2)),  # mostly the last answer
    st.sampled_from(TWISTS),
    allow_mass_removal,
)
near_repeat = st.tuples(
    st.just("vary"), region_index, st.sampled_from(VARIATIONS), allow_mass_removal
)
hand_edit = st.one_of(
    st.tuples(st.just("field"), region_index, st.sampled_from(FIELD_EDITS)),
    st.tuples(st.just("insert"), region_index),
    st.tuples(st.just("delete"), region_index),
    st.tuples(st.just("removed_at"), region_index),
    st.tuples(st.just("truncate")),
    st.tuples(st.just("history only"), region_index),
    st.tuples(st.just("other account"), region_index),
)
step = st.one_of(
    st.tuples(st.just("sync"), random_answers, allow_mass_removal),
    *[repeat] * 3,  # repeats are the point: most runs of most accounts repeat the last answer
    *[near_repeat] * 3,
    *[hand_edit] * 2,
)
#: Each step, then (or not) the last answer again.
steps = st.lists(st.tuples(step, st.booleans()), min_size=2, max_size=12)

Window = tuple[datetime, datetime]
#: What may differ between the log lines of two runs of the same answer.
RUN_FIELDS = ("run_id", "account", "duration_s", "unchanged_answer")


def unrun(line: MutableMapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in line.items() if key not in RUN_FIELDS}


def moment(value: datetime | None, windows: list[Window]) -> object:
    """A timestamp as the run whose window holds it (``run N``), else as it is (by hand)."""
    if value is None:
        return None
    for number, (start, end) in enumerate(windows):
        if start <= value <= end:
            return f"run {number}"
    return value


class TwoAccounts:
    """The same steps, applied to ``short`` (shortcut on) and ``full`` (shortcut defeated)."""

    def __init__(
        self, engine: Engine, folder: Path, note: Callable[[str], object] = lambda _: None
    ) -> None:
        self.engine = engine
        self.note = note
        self.file = folder / "answer.json"
        self.previous: list[Answer] = []
        #: The content each account's memory is of, as the docs promise it: the last answer
        #: applied, forgotten by any write to the account's regions.
        self.memory: dict[str, object] = {}
        self.windows: dict[str, list[Window]] = {SHORT: [], FULL: []}
        with engine.begin() as c:
            for table in ("notification_deliveries", "applied_answers", "region_history"):
                c.exec_driver_sql(f"DELETE FROM {table}")
            c.exec_driver_sql("DELETE FROM regions")
            c.exec_driver_sql("DELETE FROM sync_runs")
        other = Answer(tuple((rid, True, "EUROPE", "O", frozenset()) for rid in IDS[:3]))
        self.other = folder / "other.json"
        self.other.write_text(json.dumps(body(other.data())))
        run_sync(engine, FileSource(self.other), account=OTHER)
        self.memory[OTHER] = other.content()

    def _write(self, answer: Answer) -> None:
        self.file.write_text(json.dumps(body(answer.data())))

    def check_other(self) -> None:
        """The third account's memory went only with writes to its own regions."""
        again = run_sync(self.engine, FileSource(self.other), account=OTHER)
        assert again.unchanged_answer is (OTHER in self.memory)

    # Runs -----------------------------------------------------------------------------

    def sync(self, answer: Answer, *, allow: bool) -> SyncResult | None:
        """Both accounts run ``answer``; returns ``short``'s result (None: both failed)."""
        self.previous.append(answer)
        self._write(answer)
        guard = Guard(allow_mass_removal=allow)
        outcomes: dict[str, tuple[Any, ...]] = {}
        results: dict[str, SyncResult] = {}
        lines: dict[str, list[MutableMapping[str, Any]]] = {}
        for account in (SHORT, FULL):
            if account == FULL:
                with self.engine.begin() as c:
                    c.execute(applied_answers.delete().where(applied_answers.c.account == FULL))
            start = datetime.now(UTC)
            with capture_logs() as lines[account]:
                try:
                    results[account] = run_sync(
                        self.engine,
                        FileSource(self.file),
                        account=account,
                        guard=guard,
                        notify=OutboxPolicy(),
                    )
                    outcomes[account] = ("succeeded",)
                except RegionSyncError as error:
                    outcomes[account] = ("failed", type(error).__name__, str(error))
            self.windows[account].append((start, datetime.now(UTC)))
        assert outcomes[SHORT] == outcomes[FULL]
        # The same log lines, but for what tells the runs apart.
        assert [unrun(line) for line in lines[SHORT]] == [unrun(line) for line in lines[FULL]]
        if outcomes[SHORT] != ("succeeded",):
            self.note("a run failed")
            return None  # a failed run wrote nothing: the memory stands
        repeated = self.memory.get(SHORT) == answer.content()
        self.note("shortcut expected" if repeated else "full diff expected")
        assert results[SHORT].unchanged_answer is repeated, (answer, self.memory.get(SHORT))
        assert results[FULL].unchanged_answer is False
        assert results[SHORT].counts == results[FULL].counts
        if repeated:
            assert results[SHORT].changes == []
        self.memory[SHORT] = answer.content()
        return results[SHORT]

    def again(self, back: int, twist: str, *, allow: bool) -> None:
        if not self.previous:
            self.sync(Answer(()), allow=allow)
            return
        earlier = self.previous[-1 - back % len(self.previous)]
        self.sync(earlier.again(twist), allow=allow)

    def vary(self, index: int, how: str, *, allow: bool) -> None:
        last = self.previous[-1] if self.previous else Answer(())
        self.sync(last.varied(index, how), allow=allow)

    # Hand edits -------------------------------------------------------------------------

    def _pick(self, c: Connection, index: int) -> str | None:
        ids = c.execute(
            sa.select(regions.c.id).where(regions.c.account == SHORT).order_by(regions.c.id)
        ).scalars()
        found = list(ids)
        return found[index % len(found)] if found else None

    def _per_account(self, statement: Any, region_id: str) -> None:
        """Run ``statement`` on that region of each account; a write forgets the memory."""
        with self.engine.begin() as c:
            for account in (SHORT, FULL):
                mine = sa.and_(regions.c.account == account, regions.c.id == region_id)
                if c.execute(statement.where(mine)).rowcount:
                    self.memory.pop(account, None)

    def edit_field(self, index: int, edit: tuple[str, Any]) -> None:
        with self.engine.connect() as c:
            region_id = self._pick(c, index)
        if region_id is None:
            return
        column, value = edit
        if value == "toggle":
            value = sa.not_(regions.c.carrier_enabled)
        elif value is SAME:
            value = regions.c[column]
        self._per_account(regions.update().values({column: value}), region_id)

    def delete(self, index: int) -> None:
        with self.engine.begin() as c:
            region_id = self._pick(c, index)
            if region_id is None:
                return
            for account in (SHORT, FULL):
                c.execute(
                    region_history.delete().where(
                        region_history.c.account == account, region_history.c.region_id == region_id
                    )
                )
        self._per_account(regions.delete(), region_id)

    def insert(self, index: int) -> None:
        """A region added by hand (ids the answers use, so the next run meets it)."""
        with self.engine.connect() as c:
            present = set(
                c.execute(sa.select(regions.c.id).where(regions.c.account == SHORT)).scalars()
            )
        missing = [rid for rid in IDS if rid not in present]
        if not missing:
            return
        rid = missing[index % len(missing)]
        with self.engine.begin() as c:
            for account in (SHORT, FULL):
                c.execute(
                    regions.insert().values(
                        account=account,
                        id=rid,
                        display_name="by hand",
                        carrier_enabled=True,
                        hosting_region="EUROPE",
                        raw={"id": rid, "carrier_enabled": True},
                        first_seen_at=BY_HAND,
                        updated_at=BY_HAND,
                    )
                )
        self.memory.pop(SHORT, None)
        self.memory.pop(FULL, None)

    def toggle_removed_at(self, index: int) -> None:
        with self.engine.connect() as c:
            region_id = self._pick(c, index)
        if region_id is None:
            return
        toggled = sa.case((regions.c.removed_at.is_(None), BY_HAND), else_=None)
        self._per_account(regions.update().values(removed_at=toggled), region_id)

    def truncate(self) -> None:
        """Every account's regions and history at once, as an operator would empty them."""
        with self.engine.begin() as c:
            if c.dialect.name == "postgresql":
                c.exec_driver_sql("TRUNCATE regions CASCADE")
                self.memory.clear()  # TRUNCATE has no rows to tell the accounts apart
                return
            had_rows = set(c.execute(sa.select(regions.c.account).distinct()).scalars())
            # No WHERE: what SQLite would run as its truncate optimisation without triggers.
            c.exec_driver_sql("DELETE FROM region_history")
            c.exec_driver_sql("DELETE FROM regions")
        for account in had_rows:
            self.memory.pop(account, None)

    def edit_history_only(self, index: int) -> None:
        """History is not what the diff reads: editing it leaves the memory be."""
        with self.engine.begin() as c:
            region_id = self._pick(c, index)
            if region_id is not None:
                c.execute(
                    region_history.update()
                    .where(region_history.c.region_id == region_id)
                    .where(region_history.c.account.in_((SHORT, FULL)))
                    .values(hosting_region_after="EDITED")
                )

    def edit_other_account(self, index: int) -> None:
        """Another account's regions: its memory goes, not these accounts'."""
        with self.engine.begin() as c:
            found = list(
                c.execute(sa.select(regions.c.id).where(regions.c.account == OTHER)).scalars()
            )
            if not found:
                return
            c.execute(
                regions.update()
                .where(
                    regions.c.account == OTHER, regions.c.id == sorted(found)[index % len(found)]
                )
                .values(carrier_enabled=sa.not_(regions.c.carrier_enabled))
            )
        self.memory.pop(OTHER, None)

    def step(self, step: tuple[Any, ...]) -> None:
        match step:
            case ("sync", answer, allow):
                self.sync(answer, allow=allow)
            case ("again", back, twist, allow):
                self.again(back, twist, allow=allow)
            case ("vary", index, how, allow):
                self.vary(index, how, allow=allow)
            case ("insert", index):
                self.insert(index)
            case ("field", index, edit):
                self.edit_field(index, edit)
            case ("delete", index):
                self.delete(index)
            case ("removed_at", index):
                self.toggle_removed_at(index)
            case ("truncate",):
                self.truncate()
            case ("history only", index):
                self.edit_history_only(index)
            case ("other account", index):
                self.edit_other_account(index)
            case _:
                raise AssertionError(step)

    # What must be identical -----------------------------------------------------------------

    def state(self, account: str) -> dict[str, Any]:
        """The account's regions, history and runs, run ids and times as run numbers."""
        windows = self.windows[account]
        with self.engine.connect() as c:
            runs = list(
                c.execute(
                    sa.select(sync_runs)
                    .where(sync_runs.c.account == account)
                    .order_by(sync_runs.c.id)
                ).mappings()
            )
            number = {run["id"]: n for n, run in enumerate(runs)}
            stored = c.execute(
                sa.select(regions).where(regions.c.account == account).order_by(regions.c.id)
            ).mappings()
            region_rows = [
                {
                    **{k: v for k, v in row.items() if k != "account"},
                    **{name: moment(row[name], windows) for name in TIMESTAMPS},
                }
                for row in stored
            ]
            history = c.execute(
                sa.select(region_history)
                .where(region_history.c.account == account)
                .order_by(region_history.c.id)
            ).mappings()
            history_rows = [
                {
                    **{k: v for k, v in row.items() if k not in ("account", "id")},
                    "sync_run_id": number[row["sync_run_id"]],
                    "changed_at": moment(row["changed_at"], windows),
                }
                for row in history
            ]
            deliveries = c.execute(
                sa.select(
                    notification_deliveries.c.sync_run_id,
                    notification_deliveries.c.part,
                    notification_deliveries.c.parts,
                )
                .where(notification_deliveries.c.account == account)
                .order_by(notification_deliveries.c.sync_run_id, notification_deliveries.c.part)
            ).all()
        return {
            "regions": region_rows,
            "history": history_rows,
            "deliveries": [(number[run], part, parts) for run, part, parts in deliveries],
            "runs": [{name: run[name] for name in RUN_COLUMNS} for run in runs],
        }

    def check(self) -> None:
        short, full = self.state(SHORT), self.state(FULL)
        assert short["regions"] == full["regions"]
        assert short["history"] == full["history"]
        assert short["runs"] == full["runs"]
        assert short["deliveries"] == full["deliveries"]
        assert len(short["runs"]) == len(self.windows[SHORT])


@pytest.fixture
def answer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("answers")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=first_answers, steps=steps)
def test_the_shortcut_is_exactly_as_correct_as_the_full_diff(
    engine: Engine, answer_folder: Path, first: Answer, steps: list[tuple[Any, ...]]
) -> None:
    accounts = TwoAccounts(engine, answer_folder, note=event)
    accounts.sync(first, allow=True)
    accounts.check()
    for step, then_again in steps:
        accounts.step(step)
        accounts.check()
        if then_again:
            accounts.again(0, "same", allow=False)
            accounts.check()
    accounts.check_other()


# Plain tests --------------------------------------------------------------------------------

#: Four regions, then the last one held back by a rejected record: what the cases vary.
FOUR = Answer(
    (
        ("r0", True, "NORTH_AMERICA", "A", frozenset()),
        ("r1", True, "EUROPE", "A", frozenset({"display_name"})),
        ("r2", False, None, "B", frozenset()),
        ("r3", True, "EUROPE", "A", frozenset()),
    )
)
HOLDING = Answer(FOUR.records[:3], rejected=("r3",))
NEAR_REPEATS = {
    # The same content: the shortcut is taken.
    "the same answer": (HOLDING, True),
    "in another order": (HOLDING.again("reversed"), True),
    "one more record without an id": (Answer(HOLDING.records, ("r3", None)), True),
    # One thing the diff reads differs: it is diffed in full.
    "carrier_enabled flipped": (HOLDING.varied(0, "enabled"), False),
    "hosting_region changed": (HOLDING.varied(0, "hosting"), False),
    "an untracked field changed": (HOLDING.varied(0, "name"), False),
    "a field no longer reported": (HOLDING.varied(0, "omit"), False),
    "a field reported again": (HOLDING.varied(1, "report"), False),
    "the held region let go": (HOLDING.varied(0, "release"), False),
    "the held region's record valid again": (FOUR, False),
    "another region held": (HOLDING.varied(2, "hold"), False),
    "a region gone": (HOLDING.varied(2, "drop"), False),
}


@pytest.mark.parametrize(
    ("answer", "shortcut"), list(NEAR_REPEATS.values()), ids=list(NEAR_REPEATS)
)
def test_a_near_repeat_of_the_last_answer_is_diffed_in_full(
    engine: Engine, tmp_path: Path, answer: Answer, shortcut: bool
) -> None:
    accounts = TwoAccounts(engine, tmp_path)
    accounts.sync(FOUR, allow=True)
    assert accounts.sync(HOLDING, allow=True) is not None
    result = accounts.sync(answer, allow=True)
    assert result is not None
    assert result.unchanged_answer is shortcut
    accounts.check()


THREE = Answer(
    (
        ("r0", True, "NORTH_AMERICA", "A", frozenset()),
        ("r1", True, "EUROPE", "A", frozenset({"display_name"})),
        ("r2", False, None, "B", frozenset()),
    ),
    rejected=("r3",),
)


def write_answer(path: Path, answer: Answer) -> FileSource:
    path.write_text(json.dumps(body(answer.data())))
    return FileSource(path)


@pytest.fixture
def own_pg_engine(fresh_pg_url: URL) -> Iterator[Engine]:
    """A database of this test's own: its statistics count only this test's writes."""
    engine = store.create_engine(settings_for(fresh_pg_url))
    migrate(engine)
    yield engine
    engine.dispose()


WATCHED = ("regions", "region_history", "applied_answers", "notification_deliveries")
STAT_COLUMNS = ("n_tup_ins", "n_tup_upd", "n_tup_del")


def tuple_stats(engine: Engine) -> dict[str, tuple[int, ...]]:
    """Rows inserted, updated and deleted per table, as the statistics have them now."""
    with engine.connect() as c:
        c.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        rows = c.exec_driver_sql(
            f"SELECT relname, {', '.join(STAT_COLUMNS)} FROM pg_stat_user_tables "
            "WHERE schemaname = 'public'"
        ).all()
    return {row[0]: tuple(row[1:]) for row in rows}


def flushed_stats(engine: Engine, runs_inserted: int) -> dict[str, tuple[int, ...]]:
    """The statistics once every run so far has reached them. A backend reports its counts
    when it exits (the pool is closed first): the run's row is written by the connection
    that applies, so once ``sync_runs`` counts ``runs_inserted`` rows, all of it is in."""
    engine.dispose()
    deadline = time.monotonic() + 15
    while True:
        stats = tuple_stats(engine)
        if stats["sync_runs"][0] >= runs_inserted:
            assert stats["sync_runs"][0] == runs_inserted, stats
            engine.dispose()
            return stats
        assert time.monotonic() < deadline, f"statistics never counted the runs: {stats}"
        time.sleep(0.05)


def row_versions(engine: Engine) -> dict[str, set[tuple[Any, ...]]]:
    """Every row's physical version (ctid, xmin): an UPDATE, even to the same values, or a
    DELETE and INSERT of the same row, changes it."""
    with engine.connect() as c:
        return {
            table: set(c.exec_driver_sql(f"SELECT ctid::text, xmin::text FROM {table}").all())
            for table in (*WATCHED, "sync_runs")
        }


def test_a_repeated_answer_writes_no_tuple_but_its_run_on_postgresql(
    own_pg_engine: Engine, tmp_path: Path
) -> None:
    engine = own_pg_engine
    source = write_answer(tmp_path / "answer.json", THREE)
    first = run_sync(engine, source, account=SHORT)
    assert first.unchanged_answer is False
    assert first.counts.added == 3
    before = flushed_stats(engine, runs_inserted=1)
    versions = row_versions(engine)

    again = run_sync(engine, source, account=SHORT)
    assert again.status == "succeeded"
    assert again.unchanged_answer is True
    assert (again.counts.unchanged, again.counts.rejected, again.counts.fetched) == (3, 1, 4)
    after = flushed_stats(engine, runs_inserted=2)

    for table in WATCHED:
        assert after[table] == before[table], table
    inserted, updated, deleted = (
        a - b for a, b in zip(after["sync_runs"], before["sync_runs"], strict=True)
    )
    assert (inserted, updated, deleted) == (1, 1, 0)  # opened, then closed
    now = row_versions(engine)
    for table in WATCHED:
        assert now[table] == versions[table], table
    assert versions["sync_runs"] < now["sync_runs"]
    assert len(now["sync_runs"] - versions["sync_runs"]) == 1


def test_a_repeated_answer_writes_nothing_but_its_run_on_sqlite(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """SQLite has no row versions to read: triggers of the test's own count every write."""
    engine = sqlite_engine
    source = write_answer(tmp_path / "answer.json", THREE)
    assert run_sync(engine, source, account=SHORT).unchanged_answer is False
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE test_writes (tbl TEXT, op TEXT)")
        for table in (*WATCHED, "sync_runs"):
            for op in ("INSERT", "UPDATE", "DELETE"):
                c.exec_driver_sql(
                    f"CREATE TRIGGER test_{table}_{op.lower()} AFTER {op} ON {table} "
                    f"BEGIN INSERT INTO test_writes VALUES ('{table}', '{op}'); END"
                )

    again = run_sync(engine, source, account=SHORT)
    assert again.unchanged_answer is True
    assert again.counts.unchanged == 3
    with engine.connect() as c:
        writes = c.exec_driver_sql("SELECT tbl, op FROM test_writes ORDER BY rowid").all()
    assert [tuple(w) for w in writes] == [("sync_runs", "INSERT"), ("sync_runs", "UPDATE")]


def region_row(engine: Engine, region_id: str) -> dict[str, Any]:
    with engine.connect() as c:
        row = c.execute(
            sa.select(regions).where(regions.c.account == SHORT, regions.c.id == region_id)
        ).mappings()
        return dict(row.one())


def test_a_hand_edit_makes_the_next_run_diff_in_full_and_repair_it(
    engine: Engine, tmp_path: Path
) -> None:
    source = write_answer(tmp_path / "answer.json", THREE)
    run_sync(engine, source, account=SHORT)
    assert run_sync(engine, source, account=SHORT).unchanged_answer is True
    as_applied = {rid: region_row(engine, rid) for rid in ("r0", "r1", "r2")}

    with engine.begin() as c:  # three edits, as an operator might make them
        mine = regions.c.account == SHORT
        c.execute(
            regions.update()
            .where(mine, regions.c.id == "r0")
            .values(carrier_enabled=False, display_name="typo")
        )
        c.execute(regions.update().where(mine, regions.c.id == "r1").values(removed_at=BY_HAND))
        c.execute(
            region_history.delete().where(
                region_history.c.account == SHORT, region_history.c.region_id == "r2"
            )
        )
        c.execute(regions.delete().where(mine, regions.c.id == "r2"))

    repaired = run_sync(engine, source, account=SHORT)
    assert repaired.unchanged_answer is False
    counts = repaired.counts
    assert (counts.changed, counts.restored, counts.added, counts.unchanged) == (1, 1, 1, 0)
    kinds = {change.region_id: change.kind for change in repaired.changes}
    assert kinds == {"r0": "changed", "r1": "restored", "r2": "added"}
    for rid in ("r0", "r1"):
        row = region_row(engine, rid)
        for name in ("carrier_enabled", "hosting_region", "display_name", "raw", "removed_at"):
            assert row[name] == as_applied[rid][name], (rid, name)
    assert region_row(engine, "r2")["carrier_enabled"] is False
    with engine.connect() as c:
        latest = c.execute(
            sa.select(region_history.c.region_id, region_history.c.change)
            .where(region_history.c.sync_run_id == repaired.run_id)
            .order_by(region_history.c.region_id)
        ).all()
    assert [tuple(r) for r in latest] == [("r0", "changed"), ("r1", "restored"), ("r2", "added")]

    # Repaired, the answer is remembered again.
    assert run_sync(engine, source, account=SHORT).unchanged_answer is True


class EditingSource:
    """A saved answer, and a hand edit committed on another connection while it is read."""

    def __init__(self, saved: FileSource, edit: Callable[[], None]) -> None:
        self.saved = saved
        self.edit = edit

    @property
    def description(self) -> str:
        return self.saved.description

    def fetch(self) -> Snapshot:
        self.edit()
        return self.saved.fetch()


def test_a_hand_edit_while_the_answer_is_fetched_makes_the_run_diff_in_full(
    engine: Engine, tmp_path: Path
) -> None:
    source = write_answer(tmp_path / "answer.json", THREE)
    run_sync(engine, source, account=SHORT)
    assert run_sync(engine, source, account=SHORT).unchanged_answer is True

    def edit() -> None:
        with engine.begin() as c:
            c.execute(
                regions.update()
                .where(regions.c.account == SHORT, regions.c.id == "r0")
                .values(carrier_enabled=False)
            )

    repaired = run_sync(engine, EditingSource(source, edit), account=SHORT)
    assert repaired.unchanged_answer is False
    assert [(c.region_id, c.kind) for c in repaired.changes] == [("r0", "changed")]
    assert region_row(engine, "r0")["carrier_enabled"] is True
    assert run_sync(engine, source, account=SHORT).unchanged_answer is True
