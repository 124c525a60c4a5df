"""The body contract: what is a record, a reject, a duplicate, a bad body (docs/contract.md
§2; docs/sync.md, *The Kaleyra API, as regionsync reads it*).

Every body given to ``parse`` goes both ways a body can go — as JSON bytes through
``decode_body`` (msgspec's typed fast path when it fits) and as already-decoded objects —
and the two snapshots must be equal.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regionsync.errors import GuardError, PermanentSourceError, SourceError, TransientSourceError
from regionsync.records import OPTIONAL_FIELDS, RegionRecord, Rejection, Snapshot, canonical_json
from regionsync.source.answer import (
    LISTED_ANONYMOUS_REJECTIONS,
    MAX_DEPTH,
    MAX_ID_CHARS,
    MAX_RECORD_BYTES,
    MAX_STRING_CHARS,
    STRING_FIELDS,
    Origin,
    classify_failure,
    decode_body,
    decode_json,
)
from regionsync.source.saved import load_file
from regionsync.sync import Guard
from tests.support.sources import parse_body, validate_record

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def region(region_id: str = "r-1", **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": region_id,
        "region_name": f"/v1/regions/{region_id}",
        "display_name": f"Region {region_id}",
        "management_type": "GOOGLE_MANAGED",
        "managment_type_value": 2,
        "carrier_enabled": True,
        "hosting_region": "NORTH_AMERICA",
    }
    record.update(fields)
    return record


def success(data: Any) -> dict[str, Any]:
    return {"code": "RCS902", "message": "Regions fetched successfully", "data": data, "error": {}}


def parse(data: list[Any]) -> Snapshot:
    """The snapshot of a body of these records, the same from bytes and from objects."""
    content = json.dumps(success(data)).encode()
    from_objects = parse_body(success(data), source="test", received_at=NOW)
    from_bytes = parse_body(decode_body(content), source="test", received_at=NOW)
    assert from_bytes == from_objects
    return from_objects


def only(snapshot: Snapshot) -> RegionRecord:
    assert len(snapshot.records) == 1, snapshot
    return snapshot.records[0]


def rejection(snapshot: Snapshot) -> Rejection:
    assert not snapshot.records, snapshot.records
    assert len(snapshot.rejected) == 1, snapshot.rejected
    return snapshot.rejected[0]


def sample_body() -> dict[str, Any]:
    text = resources.files("regionsync.samples").joinpath("regions.json").read_text("utf-8")
    body: dict[str, Any] = json.loads(text)
    return body


# The bundled sample --------------------------------------------------------------------


def test_bundled_sample_is_a_full_valid_success_body() -> None:
    snapshot = parse_body(sample_body(), source="sample", received_at=NOW)
    assert snapshot.fetched == len(snapshot.records) == 12
    assert not snapshot.rejected
    assert not snapshot.duplicates
    assert [r.id for r in snapshot.records] == sorted(r.id for r in snapshot.records)
    assert {r.carrier_enabled for r in snapshot.records} == {True, False}
    hosting = {r.hosting_region for r in snapshot.records}
    assert {"NORTH_AMERICA", "HOSTING_REGION_US"} <= hosting
    assert all(r.management_type_value is not None for r in snapshot.records)
    spellings = {key for raw in sample_body()["data"] for key in raw if "type_value" in key}
    assert spellings == {"managment_type_value", "management_type_value"}


def test_snapshot_carries_source_and_utc_receipt_time() -> None:
    received = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    snapshot = parse_body(success([region()]), source="file:/x.json", received_at=received)
    assert snapshot.source == "file:/x.json"
    assert snapshot.received_at == NOW
    assert snapshot.received_at.utcoffset() == timedelta(0)


def test_naive_receipt_time_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_body(success([]), source="test", received_at=datetime(2026, 1, 1))


# Fields --------------------------------------------------------------------------------


def test_valid_record_is_typed_and_keeps_raw_as_received() -> None:
    raw = region("a", extra={"nested": [1, None]}, future_field="kept")
    record = only(parse([dict(raw)]))
    assert record == RegionRecord(
        id="a",
        region_name="/v1/regions/a",
        display_name="Region a",
        management_type="GOOGLE_MANAGED",
        management_type_value=2,
        carrier_enabled=True,
        hosting_region="NORTH_AMERICA",
        raw=canonical_json(raw),
    )


def test_documented_misspelling_is_accepted() -> None:
    assert only(parse([region(managment_type_value=3)])).management_type_value == 3


def test_correct_spelling_is_accepted() -> None:
    raw = region()
    del raw["managment_type_value"]
    raw["management_type_value"] = 1
    assert only(parse([raw])).management_type_value == 1


def test_correct_spelling_wins_when_both_are_present() -> None:
    record = only(parse([region(managment_type_value=2, management_type_value=7)]))
    assert record.management_type_value == 7
    record = only(parse([region(managment_type_value=2, management_type_value=None)]))
    assert record.management_type_value is None


@pytest.mark.parametrize(
    "name",
    [
        "region_name",
        "display_name",
        "management_type",
        "managment_type_value",
        "hosting_region",
    ],
)
def test_null_optional_field_is_none(name: str) -> None:
    fields: dict[str, Any] = {name: None}
    record = only(parse([region(**fields)]))
    attribute = "management_type_value" if name == "managment_type_value" else name
    assert getattr(record, attribute) is None


def test_absent_optional_fields_are_none() -> None:
    record = only(parse([{"id": "bare", "carrier_enabled": False}]))
    optional: list[object] = [record.region_name, record.display_name, record.hosting_region]
    optional += [record.management_type, record.management_type_value]
    assert optional == [None] * 5
    assert record.carrier_enabled is False


def test_enums_are_open() -> None:
    record = only(parse([region(hosting_region="MARS_ORBIT", management_type="SOMEONE_ELSE")]))
    assert record.hosting_region == "MARS_ORBIT"
    assert record.management_type == "SOMEONE_ELSE"


def test_id_is_text_not_uuid() -> None:
    assert only(parse([region("45XXXXab-7XXa-4XX3-9XXe-fbXXXXXXXXa1")])).id.startswith("45XX")


@pytest.mark.parametrize("value", [-(2**31), 0, 2**31 - 1])
def test_management_type_value_within_integer_range_is_kept(value: int) -> None:
    assert only(parse([region(managment_type_value=value)])).management_type_value == value


# Rejections ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"carrier_enabled": "true"}, "carrier_enabled is a JSON string, not a boolean"),
        ({"carrier_enabled": 1}, "carrier_enabled is a JSON number, not a boolean"),
        ({"carrier_enabled": 0}, "carrier_enabled is a JSON number, not a boolean"),
        ({"carrier_enabled": None}, "carrier_enabled is a JSON null, not a boolean"),
        ({"region_name": 5}, "region_name is a JSON number, not a string"),
        ({"display_name": ["x"]}, "display_name is a JSON array, not a string"),
        ({"management_type": {}}, "management_type is a JSON object, not a string"),
        ({"hosting_region": True}, "hosting_region is a JSON boolean, not a string"),
        ({"managment_type_value": "2"}, "managment_type_value is a JSON string, not an integer"),
        ({"managment_type_value": 2.0}, "managment_type_value is 2.0, not an integer"),
        ({"managment_type_value": 2.5}, "managment_type_value is 2.5, not an integer"),
        ({"managment_type_value": True}, "managment_type_value is a JSON boolean"),
        ({"management_type_value": False}, "management_type_value is a JSON boolean"),
        ({"managment_type_value": 2**31}, "outside the integer range"),
        ({"management_type_value": -(2**31) - 1}, "outside the integer range"),
        ({"managment_type_value": "x", "management_type_value": 1}, "managment_type_value"),
        ({"display_name": "a\x00b"}, "NUL character"),
        ({"display_name": "\ud800"}, "invalid Unicode"),
        ({"extra": {"deep": ["\x00"]}}, "NUL character"),
        ({"extra": float("nan")}, "NaN or infinite"),
        ({"extra": float("inf")}, "NaN or infinite"),
    ],
)
def test_record_with_wrong_field_is_rejected_with_its_id(
    fields: dict[str, Any], reason: str
) -> None:
    rejected = rejection(parse([region("bad", **fields)]))
    assert rejected.region_id == "bad"
    assert reason in rejected.reason
    assert "\n" not in rejected.reason


def test_missing_carrier_enabled_is_rejected() -> None:
    raw = region("no-flag")
    del raw["carrier_enabled"]
    assert rejection(parse([raw])) == Rejection("no-flag", "carrier_enabled is missing")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"carrier_enabled": True}, "record #1 has no id"),
        ({"id": None, "carrier_enabled": True}, "id is a JSON null, not a string"),
        ({"id": 42, "carrier_enabled": True}, "id is a JSON number, not a string"),
        ({"id": ["a"], "carrier_enabled": True}, "id is a JSON array, not a string"),
        ({"id": "", "carrier_enabled": True}, "id is an empty string"),
        ({"id": "   ", "carrier_enabled": True}, "id is an empty string"),
        ("a string", "record #1 is a JSON string, not an object"),
        (None, "record #1 is a JSON null, not an object"),
        (7, "record #1 is a JSON number, not an object"),
        ([region("in-a-list")], "record #1 is a JSON array, not an object"),
    ],
)
def test_record_without_usable_id_is_rejected_without_id(raw: Any, reason: str) -> None:
    rejected = rejection(parse([raw]))
    assert rejected.region_id is None
    assert reason in rejected.reason


def test_id_that_cannot_be_stored_is_not_reported_as_held() -> None:
    snapshot = parse([region("bad\x00id")])
    assert rejection(snapshot).region_id is None
    assert snapshot.held_ids == frozenset()


def test_unknown_extra_fields_never_reject() -> None:
    record = only(parse([region(surprise=[{"a": None}], carrier_enabled_v2="yes")]))
    assert json.loads(record.raw)["surprise"] == [{"a": None}]


def test_rejects_are_reported_not_raised_and_others_still_parse() -> None:
    snapshot = parse([region("ok"), region("bad", carrier_enabled="no"), 17])
    assert [r.id for r in snapshot.records] == ["ok"]
    assert [r.region_id for r in snapshot.rejected] == ["bad", None]
    assert snapshot.held_ids == frozenset({"bad"})
    assert snapshot.fetched == 3


# Duplicates ----------------------------------------------------------------------------


def test_identical_copies_count_once() -> None:
    first = region("d")
    reordered = dict(reversed(list(first.items())))
    snapshot = parse([first, region("e"), reordered])
    assert [r.id for r in snapshot.records] == ["d", "e"]
    assert snapshot.duplicates == ()
    assert snapshot.fetched == 3


def test_differing_copies_last_wins_and_are_reported() -> None:
    snapshot = parse([region("d", display_name="old"), region("d", display_name="new")])
    assert only(snapshot).display_name == "new"
    assert snapshot.duplicates == ("d",)


def test_true_and_one_are_different_json_values() -> None:
    snapshot = parse([region("d", extra=True), region("d", extra=1)])
    assert json.loads(only(snapshot).raw)["extra"] == 1
    assert snapshot.duplicates == ("d",)


@pytest.mark.parametrize("rejected_first", [True, False])
def test_rejected_copy_holds_the_id_even_when_another_copy_is_valid(rejected_first: bool) -> None:
    copies = [region("h", carrier_enabled="yes"), region("h")]
    if not rejected_first:
        copies.reverse()
    snapshot = parse([*copies, region("other")])
    assert [r.id for r in snapshot.records] == ["other"]
    assert snapshot.held_ids == frozenset({"h"})
    assert snapshot.duplicates == ()


def test_records_are_sorted_by_id() -> None:
    snapshot = parse([region(i) for i in ["b", "C", "a", "10", "9"]])
    assert [r.id for r in snapshot.records] == ["10", "9", "C", "a", "b"]


# Bodies --------------------------------------------------------------------------------


def test_empty_data_is_a_valid_empty_snapshot() -> None:
    snapshot = parse([])
    assert snapshot.records == ()
    assert snapshot.fetched == 0


@pytest.mark.parametrize("error", [{}, None, [], ""])
def test_empty_or_absent_error_is_success(error: Any) -> None:
    body = success([region()])
    if error is None:
        del body["error"]
    else:
        body["error"] = error
    assert only(parse_body(body, source="t", received_at=NOW)).id == "r-1"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([region()], "a JSON array instead of an object"),
        ("RCS902", "a JSON string instead of an object"),
        (None, "a JSON null instead of an object"),
        ({"code": "RCS902", "message": "ok", "error": {}}, "it has no data"),
        ({**success(None)}, "data is a JSON null, not an array"),
        ({**success({"id": "x"})}, "data is a JSON object, not an array"),
        ({**success("[]")}, "data is a JSON string, not an array"),
    ],
)
def test_body_not_of_the_success_shape_is_bad_body(body: Any, problem: str) -> None:
    with pytest.raises(PermanentSourceError, match="not the documented success body") as caught:
        parse_body(body, source="t", received_at=NOW)
    assert caught.value.code == "bad-body"
    assert problem in str(caught.value)


def kaleyra_error(code: str, message: str, error_code: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "data": [],
        "error": {"error_code": error_code, "error_message": message},
    }


RCS601 = kaleyra_error("RCS601", "RCS Channel is not enabled for this User", "RCS_CHANNEL_DISABLED")
RCS502 = kaleyra_error("RCS502", "Internal Gateway Error", "RCS_CHANNEL_INTERNAL_ERROR")


def test_error_body_is_never_zero_regions() -> None:
    with pytest.raises(PermanentSourceError) as caught:
        parse_body(RCS601, source="t", received_at=NOW)
    assert caught.value.code == "RCS601"
    with pytest.raises(TransientSourceError):
        parse_body(RCS502, source="t", received_at=NOW)


def test_non_empty_error_with_a_success_code_is_a_failure() -> None:
    body = success([region()])
    body["error"] = {"error_code": "SOMETHING", "error_message": "went wrong"}
    with pytest.raises(PermanentSourceError, match="SOMETHING went wrong"):
        parse_body(body, source="t", received_at=NOW)


# The classifier ------------------------------------------------------------------------


def only_code(error_code: str, message: str = "boom") -> dict[str, Any]:
    return {"data": [], "error": {"error_code": error_code, "error_message": message}}


@pytest.mark.parametrize(
    ("body", "status", "kind", "code"),
    [
        (RCS601, 400, PermanentSourceError, "RCS601"),
        (RCS601, 200, PermanentSourceError, "RCS601"),
        (RCS601, 500, PermanentSourceError, "RCS601"),  # the body decides first
        (RCS502, 500, TransientSourceError, "RCS502"),
        (RCS502, 200, TransientSourceError, "RCS502"),
        (RCS502, 400, TransientSourceError, "RCS502"),
        (kaleyra_error("RCS500", "Internal", "X"), 500, TransientSourceError, "RCS500"),
        (
            kaleyra_error("RCS405", "Method not allowed", "METHOD_NOT_ALLOWED"),
            405,
            PermanentSourceError,
            "RCS405",
        ),
        (kaleyra_error("RCS701", "Invalid JSON", "X"), 400, PermanentSourceError, "RCS701"),
        (only_code("RCS_CHANNEL_DISABLED"), 200, PermanentSourceError, "RCS_CHANNEL_DISABLED"),
        (only_code("METHOD_NOT_ALLOWED"), 405, PermanentSourceError, "METHOD_NOT_ALLOWED"),
        (
            only_code("RCS_CHANNEL_INTERNAL_ERROR"),
            200,
            TransientSourceError,
            "RCS_CHANNEL_INTERNAL_ERROR",
        ),
        (only_code("UNHEARD_OF"), 503, TransientSourceError, "UNHEARD_OF"),
        (only_code("UNHEARD_OF"), 429, TransientSourceError, "UNHEARD_OF"),
        (only_code("UNHEARD_OF"), 401, PermanentSourceError, "UNHEARD_OF"),
        (only_code("UNHEARD_OF"), 200, PermanentSourceError, "UNHEARD_OF"),
        (only_code("UNHEARD_OF"), None, PermanentSourceError, "UNHEARD_OF"),
        ({"detail": "no"}, 500, TransientSourceError, "HTTP 500"),
        ({"detail": "no"}, 418, PermanentSourceError, "HTTP 418"),
        (None, 502, TransientSourceError, "HTTP 502"),
        (None, 403, PermanentSourceError, "HTTP 403"),
        ([1, 2], 429, TransientSourceError, "HTTP 429"),
    ],
)
def test_classifier_reads_the_body_first_then_the_status(
    body: Any, status: int | None, kind: type[SourceError], code: str
) -> None:
    failure = classify_failure(body, Origin("t", f"HTTP {status}", status=status))
    assert type(failure) is kind
    assert failure is not None
    assert failure.code is not None
    assert failure.code.startswith(code)
    assert failure.status == status


def test_classifier_message_names_the_code_in_one_line() -> None:
    failure = classify_failure(RCS601, Origin("t", "HTTP 400", status=400))
    assert str(failure) == (
        "Kaleyra refused: RCS601 RCS Channel is not enabled for this User (HTTP 400)"
    )
    noisy = only_code("X", "line one\n  line two " + "y" * 500)
    assert "\n" not in str(classify_failure(noisy, Origin("t", "HTTP 400", status=400)))


def test_classifier_points_at_the_credentials_on_401() -> None:
    failure = classify_failure(None, Origin("t", "HTTP 401", status=401, reason="Unauthorized"))
    assert "KALEYRA_API_KEY" in str(failure)


@pytest.mark.parametrize("status", [200, 204, None])
def test_classifier_leaves_success_bodies_alone(status: int | None) -> None:
    assert classify_failure(success([]), Origin("t", "x", status=status)) is None


# load_file -----------------------------------------------------------------------------


def write(tmp_path: Path, content: str | bytes, name: str = "saved.json") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def test_load_file_reads_a_saved_response(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(sample_body()))
    before = datetime.now(UTC)
    snapshot = load_file(path)
    assert len(snapshot.records) == 12
    assert snapshot.source == f"file:{path.resolve()}"
    assert before <= snapshot.received_at <= datetime.now(UTC)


def test_load_file_validates_records_like_the_api(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(success([region("ok"), region("bad", carrier_enabled=1)])))
    snapshot = load_file(path)
    assert [r.id for r in snapshot.records] == ["ok"]
    assert snapshot.held_ids == frozenset({"bad"})


def test_load_file_classifies_a_saved_error_body(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(RCS601))
    with pytest.raises(PermanentSourceError) as caught:
        load_file(path)
    assert caught.value.code == "RCS601"
    assert str(caught.value) == (
        f"Kaleyra refused: RCS601 RCS Channel is not enabled for this User (in file {path})"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is not JSON"),
        ("<html>oops</html>", "is not JSON"),
        ('{"data": [', "is not JSON"),
        (b"\xff\xfe\xfa", "is not JSON"),
        ("[]", "a JSON array instead of an object"),
        ('{"code": "RCS902"}', "it has no data"),
    ],
)
def test_load_file_refuses_what_is_not_a_success_body(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(PermanentSourceError) as caught:
        load_file(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.code == "bad-body"


def test_load_file_of_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(PermanentSourceError, match=r"cannot read .*missing\.json: No such file"):
        load_file(tmp_path / "missing.json")


def test_load_file_of_a_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(PermanentSourceError, match="cannot read"):
        load_file(tmp_path)


def test_load_file_has_a_size_cap(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(success([region(str(i)) for i in range(50)])))
    with pytest.raises(PermanentSourceError, match="larger than 1000 bytes") as caught:
        load_file(path, max_bytes=1000)
    assert caught.value.code == "too-large"


# Bounds ----------------------------------------------------------------------------------


def nested(levels: int, leaf: Any = 0) -> Any:
    """``levels`` arrays and objects, alternating, around ``leaf``; built without recursion."""
    value = leaf
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


def padded(size: int) -> dict[str, Any]:
    """A valid record whose canonical JSON is exactly ``size`` bytes."""
    record = region("big")
    room = size - len(canonical_json(record).encode())
    chunk = MAX_STRING_CHARS
    index = 0
    while room > 0:
        overhead = len(f',"p{index:03d}":""')
        take = min(chunk, room - overhead)
        if take < 0:  # too little room for another field: lengthen the previous one
            record[f"p{index - 1:03d}"] = record[f"p{index - 1:03d}"][: take + overhead - 1]
            overhead, take = 0, 0
        record[f"p{index:03d}"] = "x" * take
        room = size - len(canonical_json(record).encode())
        index += 1
    assert len(canonical_json(record).encode()) == size
    return record


def test_id_of_the_longest_length_is_kept() -> None:
    assert only(parse([region("i" * MAX_ID_CHARS)])).id == "i" * MAX_ID_CHARS


def test_id_too_long_for_an_index_is_rejected_and_holds_nothing() -> None:
    snapshot = parse([region("i" * (MAX_ID_CHARS + 1)), region("ok")])
    assert [r.id for r in snapshot.records] == ["ok"]
    assert snapshot.rejected == (
        Rejection(None, f"record #1: id is longer than {MAX_ID_CHARS} characters"),
    )
    assert snapshot.held_ids == frozenset()


@pytest.mark.parametrize(
    "fields",
    [
        {"display_name": "é" * MAX_STRING_CHARS},
        {"hosting_region": "h" * MAX_STRING_CHARS},
        {"extra": ["s" * MAX_STRING_CHARS]},
        {"k" * MAX_STRING_CHARS: True},
    ],
)
def test_strings_of_the_longest_length_are_kept(fields: dict[str, Any]) -> None:
    record = only(parse([region("long", **fields)]))
    assert json.loads(record.raw) == region("long", **fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"display_name": "é" * (MAX_STRING_CHARS + 1)},
        {"region_name": "r" * (MAX_STRING_CHARS + 1)},
        {"extra": {"deep": ["s" * (MAX_STRING_CHARS + 1)]}},
        {"k" * (MAX_STRING_CHARS + 1): True},
    ],
)
def test_a_string_too_long_rejects_the_record_and_holds_its_region(
    fields: dict[str, Any],
) -> None:
    snapshot = parse([region("long", **fields)])
    assert rejection(snapshot) == Rejection(
        "long", f"a string is longer than {MAX_STRING_CHARS} characters"
    )
    assert snapshot.held_ids == frozenset({"long"})


def test_record_of_the_largest_size_is_kept() -> None:
    record = padded(MAX_RECORD_BYTES)
    assert len(only(parse([record])).raw.encode()) == MAX_RECORD_BYTES


def test_record_larger_than_the_limit_is_rejected() -> None:
    assert rejection(parse([padded(MAX_RECORD_BYTES + 1)])) == Rejection(
        "big", f"the record's JSON is larger than {MAX_RECORD_BYTES // 1024} KiB"
    )


@pytest.mark.parametrize("kind", [list, dict])
def test_a_huge_value_is_rejected_as_too_large(kind: type) -> None:
    huge = [0] * 100_000 if kind is list else {str(i): i for i in range(20_000)}
    assert rejection(parse([region("huge", extra=huge)])) == Rejection(
        "huge", f"the record's JSON is larger than {MAX_RECORD_BYTES // 1024} KiB"
    )


def test_record_nested_to_the_limit_is_kept() -> None:
    record = only(parse([region("deep", extra=nested(MAX_DEPTH - 1))]))
    assert json.loads(record.raw)["extra"] == nested(MAX_DEPTH - 1)


def test_record_nested_deeper_is_rejected() -> None:
    assert rejection(parse([region("deep", extra=nested(MAX_DEPTH))])) == Rejection(
        "deep", f"the record is nested deeper than {MAX_DEPTH} levels"
    )


def deep_copies_body(levels: int) -> bytes:
    """Two differing copies of one id, each holding a value nested ``levels`` deep."""
    records = [
        '{"id": "twin", "carrier_enabled": true, "extra": '
        + "[" * levels
        + leaf
        + "]" * levels
        + "}"
        for leaf in ("1", "2")
    ]
    return json.dumps(success([])).replace("[]", "[" + ", ".join(records) + "]").encode()


def test_differing_copies_nested_hundreds_deep_are_rejections_not_a_crash() -> None:
    content = deep_copies_body(900)
    for body in (decode_body(content), decode_json(content)):
        snapshot = parse_body(body, source="t", received_at=NOW)
        assert snapshot.records == ()
        assert [r.region_id for r in snapshot.rejected] == ["twin", "twin"]
        assert "nested deeper" in snapshot.rejected[0].reason


def test_objects_nested_hundreds_deep_are_rejected_without_recursion() -> None:
    copies = [region("twin", extra=nested(5000, leaf)) for leaf in (1, 2)]
    snapshot = parse_body(success(copies), source="t", received_at=NOW)
    assert snapshot.held_ids == frozenset({"twin"})
    assert snapshot.rejected_count == 2


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_body_nested_absurdly_deep_is_a_bad_body(tmp_path: Path, opening: str) -> None:
    path = write(tmp_path, '{"data": [' + opening * 100_000)
    with pytest.raises(PermanentSourceError, match="nested too deeply") as caught:
        load_file(path)
    assert caught.value.code == "bad-body"
    with pytest.raises(ValueError, match="nested too deeply"):
        decode_body(path.read_bytes())


# Absent and null -------------------------------------------------------------------------


def test_absent_optional_fields_are_named() -> None:
    record = only(parse([{"id": "bare", "carrier_enabled": True}]))
    assert record.absent == frozenset(OPTIONAL_FIELDS)


def test_explicit_nulls_are_values_not_absences() -> None:
    nulls = dict.fromkeys(OPTIONAL_FIELDS)
    record = only(parse([{"id": "nulls", "carrier_enabled": True, **nulls}]))
    assert record.absent == frozenset()
    assert [getattr(record, name) for name in OPTIONAL_FIELDS] == [None] * 5


@pytest.mark.parametrize("name", STRING_FIELDS)
def test_one_absent_string_field_is_named_alone(name: str) -> None:
    raw = region("one")
    del raw[name]
    record = only(parse([raw]))
    assert record.absent == frozenset({name})
    assert getattr(record, name) is None


@pytest.mark.parametrize(
    ("spellings", "absent", "value"),
    [
        ({}, True, None),
        ({"managment_type_value": 3}, False, 3),
        ({"management_type_value": 4}, False, 4),
        ({"managment_type_value": None}, False, None),
        ({"management_type_value": None, "managment_type_value": 5}, False, None),
    ],
)
def test_value_field_is_absent_only_when_neither_spelling_is_there(
    spellings: dict[str, Any], absent: bool, value: int | None
) -> None:
    raw = {"id": "v", "carrier_enabled": False, "hosting_region": "EUROPE", **spellings}
    record = only(parse([raw]))
    assert ("management_type_value" in record.absent) is absent
    assert record.management_type_value == value


# raw -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"z": 1, "a": [True, None, "ü€😀"], "m": {"y": -0, "b": "\\u0000"}},
        {"floats": [1e16, 1e-7, 0.1, -0.0, 2.5]},
        {"big": 2**70, "ctl": "\x01\x1f\x7f\u2028"},
    ],
)
def test_raw_is_the_canonical_json_of_the_record_as_received(extra: dict[str, Any]) -> None:
    received = dict(reversed(list(region("c", **extra).items())))
    assert only(parse([dict(received)])).raw == canonical_json(received)


def test_decoded_records_are_released_and_a_callers_list_is_left_alone() -> None:
    data = [region("a"), {"id": "b", "carrier_enabled": True, "x": [1]}]
    parse_body(success(data), source="t", received_at=NOW)
    assert data == [region("a"), {"id": "b", "carrier_enabled": True, "x": [1]}]
    for records in ([region("a")], [region("b", x=[1])]):
        decoded = decode_body(json.dumps(success(records)).encode())
        assert isinstance(decoded, dict)
        parse_body(decoded, source="t", received_at=NOW)
        assert decoded["data"] == [None]


def test_documented_records_take_the_typed_path_and_others_do_not() -> None:
    typed = decode_body(
        json.dumps(success([region("a"), {"id": "b", "carrier_enabled": True}])).encode()
    )
    assert isinstance(typed, dict)
    assert {type(item).__name__ for item in typed["data"]} == {"TypedRecord"}
    other = decode_body(json.dumps(success([region("a"), region("b", extra=1)])).encode())
    assert isinstance(other, dict)
    assert {type(item) for item in other["data"]} == {dict}


# Junk and the rejection limit ------------------------------------------------------------


def test_junk_is_counted_but_only_the_first_anonymous_rejections_are_listed() -> None:
    junk = LISTED_ANONYMOUS_REJECTIONS + 500
    data = [0] * junk + [region("bad", carrier_enabled="x"), region("ok")]
    snapshot = parse(data)
    assert snapshot.fetched == junk + 2
    assert snapshot.rejected_count == junk + 1
    assert snapshot.unlisted_rejections == 500
    assert len(snapshot.rejected) == LISTED_ANONYMOUS_REJECTIONS + 1
    assert snapshot.held_ids == frozenset({"bad"})
    assert snapshot.rejected[0].reason == "record #1 is a JSON number, not an object"


def test_more_rejections_than_the_limit_allows_are_refused_with_the_counts() -> None:
    data = [{"no": "id"}] * 10 + [region(str(i)) for i in range(10)]
    snapshot = parse(data)
    assert (snapshot.fetched, snapshot.rejected_count) == (20, 10)
    with pytest.raises(GuardError, match="refusing to apply: 10 of 20 records were rejected"):
        Guard(max_reject_fraction=0.25).check_rejects(snapshot)


def test_a_share_of_rejections_at_the_limit_is_accepted() -> None:
    snapshot = parse([region("bad", carrier_enabled=None), region("ok")])
    assert snapshot.rejected_count == 1
    Guard(max_reject_fraction=0.5).check_rejects(snapshot)


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_every_record_rejected_fails_whatever_the_limit(fraction: float) -> None:
    with pytest.raises(GuardError, match="every one of the 2 records was rejected"):
        Guard(max_reject_fraction=fraction).check_rejects(parse([1, 2]))


def test_an_empty_body_is_not_all_rejected() -> None:
    snapshot = parse([])
    assert snapshot.fetched == 0
    Guard(max_reject_fraction=0.5).check_rejects(snapshot)


def test_a_saved_files_rejections_count_against_the_limit(tmp_path: Path) -> None:
    snapshot = load_file(write(tmp_path, json.dumps(success([7, 8, region("ok")]))))
    assert (snapshot.fetched, snapshot.rejected_count) == (3, 2)
    with pytest.raises(GuardError, match="2 of 3 records were rejected"):
        Guard(max_reject_fraction=0.5).check_rejects(snapshot)


def test_millions_of_junk_records_are_cheap(tmp_path: Path) -> None:
    count = 500_000
    path = write(tmp_path, b'{"data": [' + b"0," * (count - 1) + b"0]}")
    started = time.monotonic()
    snapshot = load_file(path)
    assert snapshot.rejected_count == count
    assert len(snapshot.rejected) == LISTED_ANONYMOUS_REJECTIONS
    with pytest.raises(GuardError):
        Guard(max_reject_fraction=0.5).check_rejects(snapshot)
    assert time.monotonic() - started < 30  # seconds, on a loaded CI machine


# Properties ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)

FIELD_VALUES = (
    st.none() | st.booleans() | st.integers(-(2**33), 2**33) | st.text(max_size=4) | json_values
)

plausible_records = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b", "c", "", 1, None])},
    optional={
        "carrier_enabled": st.booleans() | FIELD_VALUES,
        "region_name": st.text(max_size=4) | FIELD_VALUES,
        "hosting_region": st.sampled_from(["EUROPE", "HOSTING_REGION_US"]) | FIELD_VALUES,
        "managment_type_value": st.integers(-3, 3) | FIELD_VALUES,
        "management_type_value": st.integers(-3, 3) | FIELD_VALUES,
        "extra": json_values,
    },
)

record_lists = st.lists(plausible_records | json_values, max_size=12)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(record_lists)
def test_any_list_of_json_values_parses_without_raising(data: list[Any]) -> None:
    snapshot = parse(data)
    assert snapshot.rejected_count == len(snapshot.rejected)
    assert snapshot.fetched == len(data)
    ids = [r.id for r in snapshot.records]
    assert ids == sorted(set(ids))
    assert not set(ids) & snapshot.held_ids
    assert set(snapshot.duplicates) <= set(ids)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(record_lists)
def test_every_record_is_kept_rejected_or_a_duplicate(data: list[Any]) -> None:
    outcomes = [validate_record(item, position=n) for n, item in enumerate(data, start=1)]
    snapshot = parse(data)
    assert snapshot.rejected == tuple(o for o in outcomes if isinstance(o, Rejection))
    valid = [o for o in outcomes if isinstance(o, RegionRecord)]
    kept = {r.id: r for r in snapshot.records}
    for record in valid:
        assert record.id in kept or record.id in snapshot.held_ids
    for region_id, record in kept.items():
        copies = [o for o in valid if o.id == region_id]
        assert record == copies[-1]
        differing = any(a.raw != b.raw for a, b in itertools.pairwise(copies))
        assert (region_id in snapshot.duplicates) == differing


documented_strings = st.text(max_size=6) | st.sampled_from(
    ["", " ", "\x00", "a\\u0000", "é" * MAX_STRING_CHARS, "x" * (MAX_STRING_CHARS + 1)]
)
documented_records = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["a", "b", " ", "", "\x00", "i" * MAX_ID_CHARS, "i" * 256]),
        "carrier_enabled": st.booleans(),
    },
    optional={
        name: st.none() | documented_strings
        for name in ("region_name", "display_name", "management_type", "hosting_region")
    }
    | {
        name: st.none() | st.integers(-(2**31) - 1, 2**31) | st.sampled_from([2**70, -1])
        for name in ("management_type_value", "managment_type_value")
    },
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(documented_records, max_size=8))
def test_typed_and_plain_paths_agree_on_documented_records(data: list[dict[str, Any]]) -> None:
    last = {r["id"]: dict(r) for r in data}
    snapshot = parse(data)
    for record in snapshot.records:
        assert json.loads(record.raw) == last[record.id]


hostile_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats()
    | st.text(max_size=5)
    | st.sampled_from(["\ud800", "\x00", "x" * (MAX_STRING_CHARS + 1)]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """A body as a hostile server might send it: odd records, deep values, broken bytes."""
    records = draw(st.lists(hostile_values | documented_records | plausible_records, max_size=6))
    text = json.dumps(draw(st.sampled_from([success(records), records, {"data": records}])))
    depth = draw(st.sampled_from([0, 0, MAX_DEPTH, 2000]))
    if depth:
        text = text.replace("[", "[" * depth, 1).replace("]", "]" * depth, 1)
    content = text.encode()
    cut = draw(st.none() | st.integers(0, len(content)))
    if cut is not None:
        content = content[:cut] + draw(st.sampled_from([b"", b"\xff", b"NaN", b"]"]))
    return content


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(hostile_bodies())
def test_any_body_gives_a_snapshot_or_a_documented_error(content: bytes) -> None:
    try:
        body = decode_body(content)
    except ValueError:
        return
    try:
        snapshot = parse_body(body, source="t", received_at=NOW)
    except SourceError:
        return
    assert snapshot.rejected_count + len(snapshot.records) <= snapshot.fetched
