"""A hostile Kaleyra API against real syncs: every trick of the fake's hostile modes.

Each case runs a real ``regionsync run`` process (with a 2-second fetch budget, see
``tests/support/budgeted.py``) against the fake server and PostgreSQL, after a first sync of the
sample regions, and checks the exit code, the time and memory the process took, that a
failure wrote nothing, and what a success stored. A hypothesis strategy then builds hostile
bodies from the same parts and runs them through the parser and through real syncs.
See docs/reliability.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL, Engine

from regionsync.errors import RegionSyncError, SourceError
from regionsync.records import Snapshot
from regionsync.source.answer import Origin, read_answer
from regionsync.source.kaleyra import RetryPolicy
from regionsync.sync import run_sync
from regionsync.testing.fakeapi import FakeKaleyra, sample_regions, success_body
from tests.support import clean_environ
from tests.support.fakeapi_fixtures import API_KEY, client_for_fake

REPOSITORY = Path(__file__).resolve().parents[2]
BUDGET = 2.0
#: A run's own time (``sync.failed``'s ``duration_s``) may pass the budget by this much.
MARGIN = 1.0
#: The whole process: Python's start (seconds on a loaded machine) and regionsync's imports.
PROCESS_MARGIN = 15.0
#: The most a run may hold in memory: the 50 MiB body cap, its decoding, and Python itself.
MAX_RSS_MIB = 400
TWO_SECONDS = RetryPolicy(
    attempts=3, total_seconds=BUDGET, backoff_initial=0.01, connect_timeout=30, read_timeout=30
)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mib: float


def run_process(url: URL, fake: FakeKaleyra, *args: str) -> Outcome:
    """``regionsync run`` with a short fetch budget, and its peak resident memory."""
    env = clean_environ()
    env.update(
        REGIONSYNC_DATABASE_URL=url.render_as_string(hide_password=False),
        KALEYRA_BASE_URL=fake.url,
        KALEYRA_SID=fake.sid,
        KALEYRA_API_KEY=API_KEY,
        REGIONSYNC_LOG_FORMAT="json",
    )
    with tempfile.TemporaryDirectory() as scratch:
        peak = Path(scratch) / "peak"
        command = [
            "-m",
            "tests.support.budgeted",
            "--peak-file",
            str(peak),
            str(BUDGET),
            "run",
            *args,
        ]
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, *command],
            env=env,
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
            check=False,
        )
        seconds = time.monotonic() - started
        peak_kib = int(peak.read_text())
    return Outcome(done.returncode, done.stdout, done.stderr, seconds, peak_kib / 1024)


def run_here(engine: Engine, fake: FakeKaleyra) -> Outcome:
    """The same run in this process (no memory figure): the exit code the CLI would give."""
    started = time.monotonic()
    try:
        run_sync(engine, client_for_fake(fake, TWO_SECONDS))
    except RegionSyncError as failure:
        return Outcome(failure.exit_code, "", str(failure), time.monotonic() - started, 0.0)
    return Outcome(0, "", "", time.monotonic() - started, 0.0)


def log_event(outcome: Outcome, name: str) -> dict[str, Any]:
    for line in outcome.stderr.splitlines():
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict) and found.get("event") == name:
            return found
    raise AssertionError(f"no {name} in:\n{outcome.stderr[-3000:]}")


def error_lines(outcome: Outcome) -> list[str]:
    return [line for line in outcome.stderr.splitlines() if line.startswith("regionsync:")]


def table(engine: Engine, name: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text(f"SELECT * FROM {name} ORDER BY 1")).mappings()
        return [dict(row) for row in rows]


def data_state(engine: Engine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return table(engine, "regions"), table(engine, "region_history")


def last_run(engine: Engine) -> dict[str, Any]:
    return table(engine, "sync_runs")[-1]


@pytest.fixture
def seeded(pg_engine: Engine, pg_url: URL, fake: FakeKaleyra) -> Engine:
    """The sample regions synced once, so a hostile run has something to spoil."""
    run_sync(pg_engine, client_for_fake(fake))
    return pg_engine


# Failures: exit 1, within the budget, bounded memory, nothing written -----------------------

FAILING = [
    ("drip:0.5", "budget", True),
    ("drip-headers:0.5", "budget", True),
    ("endless:0.05", "budget", True),
    ("endless:0", "larger than 50 MiB", False),
    ("huge", "larger than 50 MiB", False),
    ("gzip-bomb", "larger than 50 MiB", False),
    ("deflate-bomb", "larger than 50 MiB", False),
    ("redirect-away", "redirects are not followed", False),
    ("latin1", "not valid UTF-8", False),
    ("deep:100000", "nested too deeply", False),
]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "message", "timed"), FAILING)
def test_a_hostile_answer_fails_the_run_in_bounded_time_and_memory_writing_nothing(
    seeded: Engine, pg_url: URL, fake: FakeKaleyra, mode: str, message: str, timed: bool
) -> None:
    before = data_state(seeded)
    fake.fail(mode)
    outcome = run_process(pg_url, fake)

    assert outcome.code == 1, outcome.stderr
    errors = error_lines(outcome)
    assert len(errors) == 1, outcome.stderr
    assert message in errors[0]
    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert API_KEY not in outcome.stderr + outcome.stdout
    assert outcome.seconds < BUDGET + PROCESS_MARGIN, outcome.seconds
    took = log_event(outcome, "sync.failed")["duration_s"]
    assert took < BUDGET + MARGIN, took
    if timed:
        assert took > BUDGET - 0.1, took
    assert outcome.max_rss_mib < MAX_RSS_MIB, outcome.max_rss_mib
    assert data_state(seeded) == before
    run = last_run(seeded)
    assert run["status"] == "failed"
    assert message in run["error"]
    if mode == "redirect-away":
        assert len(fake.requests) == 2  # the seed's and this one: nothing sent elsewhere


# Hostile records: the record is rejected, the rest applied ---------------------------------


def rejected_first_record(engine: Engine, outcome: Outcome, before: list[dict[str, Any]]) -> None:
    """The run succeeded with one record rejected, and its region left as it was."""
    assert outcome.code == 0, outcome.stderr
    run = last_run(engine)
    assert (run["status"], run["rejected"], run["fetched"]) == ("succeeded", 1, 12)
    assert (run["changed"], run["removed"], run["added"]) == (0, 0, 0)
    assert table(engine, "regions") == before


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["nan", "nul"])
def test_nan_infinity_and_nul_reject_only_their_record(
    seeded: Engine, pg_url: URL, fake: FakeKaleyra, mode: str
) -> None:
    before = table(seeded, "regions")
    fake.fail(mode)
    rejected_first_record(seeded, run_here(seeded, fake), before)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [
        "long-id",  # 3,000 characters: over the btree limit
        "huge-value",  # a 10 MiB display_name
        "deep:900",  # nested 900 levels deep (past ~1,000 the decoder refuses the body)
    ],
)
def test_oversized_records_are_rejected_without_failing_the_run(
    seeded: Engine, pg_url: URL, fake: FakeKaleyra, mode: str
) -> None:
    before = table(seeded, "regions")
    fake.fail(mode)
    if mode == "huge-value":  # memory matters: a process of its own
        outcome = run_process(pg_url, fake)
        assert outcome.seconds < BUDGET + PROCESS_MARGIN
        assert outcome.max_rss_mib < MAX_RSS_MIB
    else:
        outcome = run_here(seeded, fake)
        assert outcome.seconds < BUDGET + MARGIN
    if mode == "long-id":  # a new id: nothing to hold, the twelve others unchanged
        assert outcome.code == 0, outcome.stderr
        run = last_run(seeded)
        assert (run["status"], run["rejected"], run["removed"]) == ("succeeded", 1, 1)
        return
    rejected_first_record(seeded, outcome, before)


@pytest.mark.slow
def test_duplicate_deeply_nested_records_are_rejected_not_a_recursion_error(
    seeded: Engine, pg_url: URL, fake: FakeKaleyra
) -> None:
    data = sample_regions()
    nested = "[" * 900 + "]" * 900
    first = json.dumps(data[0])[:-1]
    copies = [f'{first}, "extra": {nested}, "n": {n}}}' for n in (1, 2)]
    rest = ", ".join(json.dumps(r) for r in data[1:])
    fake.set_raw_body(
        f'{{"code": "RCS902", "error": {{}}, "data": [{", ".join(copies)}, {rest}]}}'.encode()
    )
    outcome = run_here(seeded, fake)
    assert outcome.code == 0, outcome.stderr
    assert last_run(seeded)["rejected"] == 2


@pytest.mark.slow
def test_a_few_junk_records_are_rejected_and_the_rest_applied(
    seeded: Engine, pg_url: URL, fake: FakeKaleyra
) -> None:
    before = table(seeded, "regions")
    fake.fail("junk:3")
    outcome = run_here(seeded, fake)
    assert outcome.code == 0, outcome.stderr
    run = last_run(seeded)
    assert (run["status"], run["fetched"], run["rejected"], run["changed"]) == (
        "succeeded",
        15,
        3,
        0,
    )
    assert table(seeded, "regions") == before


@pytest.mark.slow
def test_a_body_of_mostly_junk_fails_the_run_and_applies_nothing(
    seeded: Engine, pg_url: URL, fake: FakeKaleyra
) -> None:
    before = data_state(seeded)
    fake.fail("junk:20000")
    outcome = run_here(seeded, fake)
    assert outcome.seconds < BUDGET + MARGIN
    assert outcome.code == 1, outcome.stderr
    assert data_state(seeded) == before
    assert last_run(seeded)["status"] == "failed"


# Strings stored verbatim -------------------------------------------------------------------

VERBATIM = [
    "'; DROP TABLE regions; --",
    'quote " and backslash \\ and \\u0041',
    "Robert'); DELETE FROM sync_runs WHERE ('1'='1",
    "emoji 🛰️ and RTL \u202eevil\u202c and zero\u200bwidth",
    "line\u2028separator\ttab\r\nnewline",
    "%s %(x)s {0} $1 :name",
    "ß" * 255,
    "x" * 4096,
]


@pytest.mark.slow
def test_hostile_but_valid_strings_are_stored_verbatim(
    pg_engine: Engine, pg_url: URL, fake: FakeKaleyra
) -> None:
    data = [
        {
            "id": text[:255],
            "display_name": text,
            "region_name": text[::-1],
            "hosting_region": text[:100],
            "carrier_enabled": n % 2 == 0,
            "managment_type_value": n,
        }
        for n, text in enumerate(VERBATIM)
    ]
    fake.set_regions(data)
    outcome = run_here(pg_engine, fake)
    assert outcome.code == 0, outcome.stderr
    stored = {row["id"]: row for row in table(pg_engine, "regions")}
    assert set(stored) == {r["id"] for r in data}
    for record in data:
        row = stored[record["id"]]
        assert row["display_name"] == record["display_name"]
        assert row["region_name"] == record["region_name"]
        assert row["hosting_region"] == record["hosting_region"]
        assert as_json(row["raw"]) == record


# Hypothesis: hostile bodies built from the same parts ----------------------------------------

NAN_TOKENS = ("NaN", "Infinity", "-Infinity")
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=5000),
    st.sampled_from(VERBATIM),
    st.just("NUL\x00inside"),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),
)
ids = st.one_of(
    st.uuids().map(str),
    st.text(min_size=1, max_size=300),  # over 255 but under PostgreSQL's btree limit
    st.sampled_from(VERBATIM).map(lambda s: s[:255]),
    st.just(""),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), hostile_text
)
nested = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=20,
)


@st.composite
def deep_value(draw: st.DrawFn) -> object:
    value: object = draw(json_scalars)
    for _ in range(draw(st.integers(0, 40))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


@st.composite
def hostile_record(draw: st.DrawFn) -> object:
    kind = draw(st.sampled_from(["region", "region", "region", "junk"]))
    if kind == "junk":
        return draw(nested)
    record: dict[str, Any] = {"id": draw(st.one_of(ids, json_scalars))}
    record["carrier_enabled"] = draw(st.one_of(st.booleans(), st.booleans(), json_scalars))
    for name in ("display_name", "region_name", "hosting_region", "management_type"):
        if draw(st.booleans()):
            record[name] = draw(st.one_of(hostile_text, hostile_text, json_scalars))
    if draw(st.booleans()):
        record["managment_type_value"] = draw(st.one_of(st.integers(-(2**40), 2**40), json_scalars))
    if draw(st.integers(0, 4)) == 0:
        record["extra"] = draw(st.one_of(nested, deep_value()))
    return record


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """A body from the parts: records (duplicates too), then an encoding, maybe damaged."""
    records = draw(st.lists(hostile_record(), max_size=12))
    if records and draw(st.booleans()):
        records.append(draw(st.sampled_from(records)))  # the same id twice
    body: object = success_body(records)
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.one_of(nested, st.just({"code": "RCS902", "data": None})))
    text = json.dumps(body, allow_nan=True, ensure_ascii=draw(st.booleans()))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1"]))
    try:
        content = text.encode(
            encoding, errors="surrogatepass" if encoding != "latin-1" else "strict"
        )
    except UnicodeEncodeError:
        content = text.encode("utf-8", errors="surrogatepass")
    damage = draw(st.sampled_from(["none", "none", "none", "nul", "cut", "nan-token"]))
    if damage == "nul":
        at = draw(st.integers(0, len(content)))
        content = content[:at] + b"\x00" + content[at:]
    elif damage == "cut":
        content = content[: draw(st.integers(0, len(content)))]
    elif damage == "nan-token":
        content = content.replace(b"null", draw(st.sampled_from(NAN_TOKENS)).encode(), 1)
    return content


def parse(content: bytes) -> Snapshot:
    """What the client does with a 200 body: decode, classify, validate."""
    origin = Origin(source="test", where="HTTP 200", status=200)
    return read_answer(content, origin, received_at=datetime.now(UTC))


def as_json(value: Any) -> Any:
    """A record's ``raw``: JSON text in the parser, and as the driver returns it from the table."""
    return json.loads(value) if isinstance(value, str) else value


def storable(value: object) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


BODIES = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.slow
@BODIES
@given(content=hostile_bodies())
def test_parsing_a_hostile_body_gives_a_snapshot_or_a_source_error(content: bytes) -> None:
    try:
        snapshot = parse(content)
    except SourceError as error:
        event(f"refused: {error.code}")
        return
    event("parsed, some rejected" if snapshot.rejected else "parsed")
    ids = [r.id for r in snapshot.records]
    assert ids == sorted(set(ids))
    assert len(snapshot.records) + len(snapshot.rejected) <= snapshot.fetched
    for record in snapshot.records:
        assert record.id.strip()
        assert isinstance(record.carrier_enabled, bool)
        assert all(storable(v) for v in as_json(record.raw).values())


@pytest.mark.slow
@BODIES
@given(content=hostile_bodies())
def test_a_real_sync_of_a_hostile_body_applies_it_whole_or_not_at_all(
    pg_engine: Engine, fake: FakeKaleyra, content: bytes
) -> None:
    try:
        expected: Snapshot | None = parse(content)
    except SourceError:
        expected = None
    before = data_state(pg_engine)
    fake.set_raw_body(content)
    failure: RegionSyncError | None = None
    try:
        result = run_sync(pg_engine, client_for_fake(fake))
    except RegionSyncError as error:  # never an internal error: that would escape here
        failure = error
    event(f"sync {'failed: ' + type(failure).__name__ if failure else 'succeeded'}")
    if failure is not None:
        if expected is None:
            assert isinstance(failure, SourceError)
        assert data_state(pg_engine) == before
        return
    assert expected is not None
    assert result.status == "succeeded"
    stored = {row["id"]: row for row in table(pg_engine, "regions")}
    for record in expected.records:
        row = stored[record.id]
        assert row["removed_at"] is None
        assert row["display_name"] == record.display_name
        assert row["hosting_region"] == record.hosting_region
        assert row["carrier_enabled"] is record.carrier_enabled
        assert as_json(row["raw"]) == as_json(record.raw)
