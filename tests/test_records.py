"""The body contract of DESIGN.md §1: what is a record, a reject, a duplicate, a bad body."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regionsync.errors import PermanentSourceError, SourceError, TransientSourceError
from regionsync.records import (
    RegionRecord,
    Rejection,
    Snapshot,
    classify_failure,
    json_equal,
    load_file,
    parse_body,
    validate_record,
)

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
    return parse_body(success(data), source="test", received_at=NOW)


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
    record = only(parse([raw]))
    assert record == RegionRecord(
        id="a",
        region_name="/v1/regions/a",
        display_name="Region a",
        management_type="GOOGLE_MANAGED",
        management_type_value=2,
        carrier_enabled=True,
        hosting_region="NORTH_AMERICA",
        raw=raw,
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
    assert record.raw["surprise"] == [{"a": None}]


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
    assert only(snapshot).raw["extra"] == 1
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
    failure = classify_failure(body, status=status, where=f"HTTP {status}")
    assert type(failure) is kind
    assert failure is not None
    assert failure.code is not None
    assert failure.code.startswith(code)
    assert failure.status == status


def test_classifier_message_names_the_code_in_one_line() -> None:
    failure = classify_failure(RCS601, status=400, where="HTTP 400")
    assert str(failure) == (
        "Kaleyra refused: RCS601 RCS Channel is not enabled for this User (HTTP 400)"
    )
    noisy = only_code("X", "line one\n  line two " + "y" * 500)
    assert "\n" not in str(classify_failure(noisy, status=400, where="HTTP 400"))


def test_classifier_points_at_the_credentials_on_401() -> None:
    failure = classify_failure(None, status=401, where="HTTP 401", reason="Unauthorized")
    assert "KALEYRA_API_KEY" in str(failure)


@pytest.mark.parametrize("status", [200, 204, None])
def test_classifier_leaves_success_bodies_alone(status: int | None) -> None:
    assert classify_failure(success([]), status=status, where="x") is None


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


@settings(max_examples=300, deadline=None)
@given(record_lists)
def test_any_list_of_json_values_parses_without_raising(data: list[Any]) -> None:
    snapshot = parse(data)
    assert snapshot.fetched == len(data)
    ids = [r.id for r in snapshot.records]
    assert ids == sorted(set(ids))
    assert not set(ids) & snapshot.held_ids
    assert set(snapshot.duplicates) <= set(ids)


@settings(max_examples=300, deadline=None)
@given(record_lists)
def test_every_record_is_kept_rejected_or_a_duplicate(data: list[Any]) -> None:
    snapshot = parse(data)
    outcomes = [validate_record(item, position=n) for n, item in enumerate(data, start=1)]
    assert snapshot.rejected == tuple(o for o in outcomes if isinstance(o, Rejection))
    valid = [o for o in outcomes if isinstance(o, RegionRecord)]
    kept = {r.id: r for r in snapshot.records}
    for record in valid:
        assert record.id in kept or record.id in snapshot.held_ids
    for region_id, record in kept.items():
        copies = [o for o in valid if o.id == region_id]
        assert record.raw is copies[-1].raw
        differing = any(not json_equal(a.raw, b.raw) for a, b in itertools.pairwise(copies))
        assert (region_id in snapshot.duplicates) == differing
