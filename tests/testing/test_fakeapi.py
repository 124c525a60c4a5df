"""The fake Kaleyra server: what it serves, its fault modes, its admin endpoints, its CLI."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from regionsync.settings import Settings
from regionsync.source.kaleyra import KaleyraClient
from regionsync.testing import fakeapi
from regionsync.testing.fakeapi import FakeKaleyra, parse_fault, sample_regions
from tests.support.cli import Invoke
from tests.support.docs import page
from tests.support.fakeapi_fixtures import API_KEY, FAST

PATH = "/v1/demo/rcs/agent/agent_regions"


def get(fake: FakeKaleyra, path: str = PATH, *, key: str | None = API_KEY) -> requests.Response:
    headers = {"api-key": key} if key is not None else {}
    return requests.get(fake.url + path, headers=headers, timeout=5, allow_redirects=False)


def admin(fake: FakeKaleyra, path: str, body: object) -> requests.Response:
    return requests.put(f"{fake.url}/_fake/{path}", json=body, timeout=5)


# Serving -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [PATH, "/v1/demo/rcs/agent_regions"])
def test_serves_the_regions_at_both_documented_paths(fake: FakeKaleyra, path: str) -> None:
    response = get(fake, path)
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == "RCS902"
    assert body["error"] == {}
    assert body["data"] == sample_regions()


def test_records_what_it_received(fake: FakeKaleyra) -> None:
    get(fake)
    get(fake, key=None)
    first, second = fake.requests
    assert (first.method, first.path, first.headers["api-key"]) == ("GET", PATH, API_KEY)
    assert "api-key" not in second.headers
    assert first.time <= second.time


@pytest.mark.parametrize("key", [None, "wrong"])
def test_missing_or_wrong_key_is_401_with_an_error_body(fake: FakeKaleyra, key: str | None) -> None:
    response = get(fake, key=key)
    assert response.status_code == 401
    assert response.json()["error"]["error_code"] == "UNAUTHORIZED"


@pytest.mark.parametrize("path", ["/v1/other/rcs/agent/agent_regions", "/", "/v1/demo/rcs"])
def test_wrong_sid_or_path_is_404(fake: FakeKaleyra, path: str) -> None:
    response = get(fake, path)
    assert response.status_code == 404
    assert response.json()["error"]["error_code"] == "NOT_FOUND"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_get_the_rcs405_body(fake: FakeKaleyra, method: str) -> None:
    response = requests.request(method, fake.url + PATH, headers={"api-key": API_KEY}, timeout=5)
    assert response.status_code == 405
    assert response.json()["code"] == "RCS405"


def test_set_regions_and_set_body(fake: FakeKaleyra) -> None:
    fake.set_body({"code": "RCS902", "data": "not a list"})
    assert get(fake).json() == {"code": "RCS902", "data": "not a list"}
    fake.set_regions([{"id": "only"}])
    assert get(fake).json()["data"] == [{"id": "only"}]


# Faults --------------------------------------------------------------------------------


def test_fault_applies_the_given_number_of_times(fake: FakeKaleyra) -> None:
    fake.fail("rcs601", times=2)
    assert [get(fake).status_code for _ in range(3)] == [400, 400, 200]


def test_fault_without_times_lasts_until_cleared(fake: FakeKaleyra) -> None:
    fake.fail("http503")
    assert [get(fake).status_code for _ in range(3)] == [503, 503, 503]
    fake.clear_faults()
    assert get(fake).status_code == 200


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("rcs601", 400, "RCS601"),
        ("rcs405", 405, "RCS405"),
        ("rcs502", 500, "RCS502"),
        ("rcs500", 500, "RCS500"),
        ("rcs701", 400, "RCS701"),
        ("rcs502-200", 200, "RCS502"),
        ("rcs601-200", 200, "RCS601"),
        ("rcs502-502", 502, "RCS502"),
    ],
)
def test_kaleyra_error_modes_serve_kaleyras_bodies(
    fake: FakeKaleyra, mode: str, status: int, code: str
) -> None:
    fake.fail(mode)
    response = get(fake)
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code
    assert body["data"] == []
    assert body["error"]["error_code"]


@pytest.mark.parametrize(
    ("mode", "status", "retry_after"),
    [
        ("http401", 401, None),
        ("http403", 403, None),
        ("http404", 404, None),
        ("http429", 429, None),
        ("http429:retry-after=2", 429, "2"),
        ("http503:retry-after=5", 503, "5"),
    ],
)
def test_http_modes_serve_the_status_and_retry_after(
    fake: FakeKaleyra, mode: str, status: int, retry_after: str | None
) -> None:
    fake.fail(mode)
    response = get(fake)
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry_after


@pytest.mark.parametrize(("mode", "status"), [("html500", 500), ("html200", 200)])
def test_html_modes_serve_an_html_page(fake: FakeKaleyra, mode: str, status: int) -> None:
    fake.fail(mode)
    response = get(fake)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")


def test_malformed_is_invalid_json(fake: FakeKaleyra) -> None:
    fake.fail("malformed")
    with pytest.raises(ValueError, match="Expecting"):
        json.loads(get(fake).content)


def test_truncated_is_half_a_body_with_a_matching_length(fake: FakeKaleyra) -> None:
    whole = get(fake).content
    fake.fail("truncated")
    response = get(fake)
    assert response.content == whole[: len(whole) // 2]
    assert response.headers["Content-Length"] == str(len(response.content))


def test_no_data_and_error_200(fake: FakeKaleyra) -> None:
    fake.fail("no-data", times=1)
    assert "data" not in get(fake).json()
    fake.fail("error-200", times=1)
    response = get(fake)
    assert response.status_code == 200
    assert response.json()["error"]["error_code"]


def test_redirect_points_elsewhere(fake: FakeKaleyra) -> None:
    fake.fail("redirect")
    response = get(fake)
    assert response.status_code == 302
    assert response.headers["Location"] != fake.url + PATH


def test_slow_delays_a_good_answer(fake: FakeKaleyra) -> None:
    fake.fail("slow:0.3")
    started = time.monotonic()
    assert get(fake).status_code == 200
    assert time.monotonic() - started >= 0.29


def test_drop_closes_without_answering(fake: FakeKaleyra) -> None:
    fake.fail("drop")
    with pytest.raises(requests.ConnectionError):
        get(fake)


def test_huge_streams_more_than_fifty_mebibytes_without_a_length(fake: FakeKaleyra) -> None:
    fake.fail("huge")
    with requests.get(fake.url + PATH, stream=True, timeout=5) as response:
        assert "Content-Length" not in response.headers
        received = 0
        for chunk in response.iter_content(1024 * 1024):
            if received == 0:
                assert chunk.startswith(b'{"code": "RCS902"')
            received += len(chunk)
    assert received > 50 * 1024 * 1024


def test_huge_stops_cheaply_when_the_client_hangs_up(fake: FakeKaleyra) -> None:
    fake.fail("huge", times=1)
    with requests.get(fake.url + PATH, stream=True, timeout=5) as response:
        next(response.iter_content(1024))
    assert get(fake).status_code == 200


@pytest.mark.parametrize(
    "mode",
    ["", "rcs999", "rcs601:x", "http200", "http600", "http429:wait=2", "slow", "slow:x", "bogus"],
)
def test_unknown_fault_modes_are_refused(mode: str) -> None:
    with pytest.raises(ValueError, match="unknown fault mode"):
        parse_fault(mode)


def test_fault_modes_parse() -> None:
    assert parse_fault("http429:retry-after=2").retry_after == "2"
    assert parse_fault("rcs502-200").status == 200
    assert parse_fault("slow:1.5").delay == 1.5
    assert parse_fault("HUGE").kind == "huge"


# Hostile modes -------------------------------------------------------------------------


def raw_get(fake: FakeKaleyra, timeout: float = 5) -> tuple[bytes, float]:
    """The raw bytes of an answer (headers included) and how long they took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", int(fake.url.rsplit(":", 1)[1])), timeout) as s:
        s.sendall(f"GET {PATH} HTTP/1.0\r\napi-key: {API_KEY}\r\n\r\n".encode())
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    return received, time.monotonic() - started


@pytest.mark.slow
def test_drip_sends_headers_at_once_then_the_body_a_byte_at_a_time(fake: FakeKaleyra) -> None:
    fake.set_regions([{"id": "r", "carrier_enabled": True}])
    fake.fail("drip:0.01")
    received, took = raw_get(fake)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert json.loads(body)["data"] == [{"id": "r", "carrier_enabled": True}]
    assert took >= len(body) * 0.01


def test_drip_headers_never_finishes_its_headers(fake: FakeKaleyra) -> None:
    fake.fail("drip-headers:0.05")
    with socket.create_connection(("127.0.0.1", int(fake.url.rsplit(":", 1)[1])), 5) as s:
        s.sendall(f"GET {PATH} HTTP/1.0\r\n\r\n".encode())
        time.sleep(0.5)
        received = s.recv(65536)
    assert received.startswith(b"HTTP/1.1 200 OK\r\nX-Padding: a")
    assert b"\r\n\r\n" not in received


def test_endless_is_a_chunked_body_that_never_ends(fake: FakeKaleyra) -> None:
    fake.fail("endless")
    with requests.get(fake.url + PATH, stream=True, timeout=5) as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        received = 0
        for chunk in response.iter_content(1024 * 1024):
            received += len(chunk)
            if received > 20 * 1024 * 1024:
                break
    assert received > 20 * 1024 * 1024


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "wbits"), [("gzip-bomb", 31), ("deflate-bomb", 15)])
def test_bombs_are_small_and_inflate_past_the_cap(fake: FakeKaleyra, mode: str, wbits: int) -> None:
    fake.fail(mode)
    with requests.get(fake.url + PATH, stream=True, timeout=30) as response:
        assert response.headers["Content-Encoding"] == mode.partition("-")[0]
        compressed = response.raw.read(decode_content=False)
    assert len(compressed) < 1024 * 1024
    inflater = zlib.decompressobj(wbits)
    inflated = len(inflater.decompress(compressed, 0))
    assert inflated == fakeapi.BOMB_BYTES + len(b'{"code": "RCS902", "error": {}, "data": []}')


def test_redirect_away_points_at_another_host(fake: FakeKaleyra) -> None:
    fake.fail("redirect-away")
    response = get(fake)
    assert response.status_code == 302
    assert response.headers["Location"] == "https://elsewhere.example" + PATH


def hostile(fake: FakeKaleyra, mode: str) -> bytes:
    fake.fail(mode)
    response = get(fake)
    assert response.status_code == 200
    return response.content


def test_hostile_records(fake: FakeKaleyra) -> None:
    first = sample_regions()[0]
    huge = json.loads(hostile(fake, "huge-value"))["data"]
    assert len(huge[0]["display_name"]) == fakeapi.HUGE_VALUE_CHARS
    assert huge[1:] == sample_regions()[1:]
    assert json.loads(hostile(fake, "long-id"))["data"][0]["id"] == "a" * fakeapi.LONG_ID_CHARS
    deep = json.loads(hostile(fake, "deep:50"))["data"][0]["extra"]
    for _ in range(49):
        [deep] = deep
    assert deep == []
    with pytest.raises(RecursionError):
        json.loads(hostile(fake, "deep:1000000"))
    junk = json.loads(hostile(fake, "junk:10"))["data"]
    assert len(junk) == 10 + len(sample_regions())
    assert junk[:3] == [None, 42, "region"]
    with pytest.raises(UnicodeDecodeError):
        hostile(fake, "latin1").decode("utf-8")
    assert json.loads(hostile(fake, "latin1").decode("latin-1"))["data"][0]["extra"] == "Zürich"
    nan = json.loads(hostile(fake, "nan"))["data"][0]
    assert math.isnan(nan["extra"]["a"])
    assert nan["extra"]["b"] == math.inf
    assert nan["id"] == first["id"]
    assert json.loads(hostile(fake, "nul"))["data"][0]["extra"] == "NUL\x00here"


def test_set_raw_body_serves_exact_bytes(fake: FakeKaleyra) -> None:
    fake.set_raw_body(b'{"data": [NaN]}\x00\xff', "text/plain")
    response = get(fake)
    assert (response.status_code, response.content) == (200, b'{"data": [NaN]}\x00\xff')
    assert response.headers["Content-Type"] == "text/plain"
    fake.set_regions([])
    assert get(fake).json()["data"] == []


@pytest.mark.parametrize("mode", ["drip:x", "deep:-1", "junk:1.5e9", "endless:9999"])
def test_hostile_modes_refuse_bad_numbers(mode: str) -> None:
    with pytest.raises(ValueError, match="unknown fault mode"):
        parse_fault(mode)


def test_hostile_modes_parse_with_defaults() -> None:
    assert parse_fault("drip").delay == 1.0
    assert parse_fault("endless").delay == 0.0
    assert parse_fault("deep").delay == fakeapi.DEFAULT_DEPTH
    assert parse_fault("junk:7").delay == 7
    assert parse_fault("GZIP-BOMB").kind == "gzip-bomb"


# Admin endpoints -----------------------------------------------------------------------


def test_admin_sets_regions_from_a_list_or_a_whole_body(fake: FakeKaleyra) -> None:
    assert admin(fake, "regions", [{"id": "x", "carrier_enabled": True}]).status_code == 200
    assert get(fake).json()["data"] == [{"id": "x", "carrier_enabled": True}]
    assert admin(fake, "regions", {"code": "RCS601", "data": []}).status_code == 200
    assert get(fake).json() == {"code": "RCS601", "data": []}


def test_admin_sets_and_clears_faults(fake: FakeKaleyra) -> None:
    assert admin(fake, "fault", {"mode": "rcs502", "times": 1}).status_code == 200
    assert [get(fake).status_code for _ in range(2)] == [500, 200]
    admin(fake, "fault", {"mode": "http403"})
    assert get(fake).status_code == 403
    admin(fake, "fault", {"mode": None})
    assert get(fake).status_code == 200


@pytest.mark.parametrize(
    "body", [{"mode": "bogus"}, {"times": 1}, {"mode": 5}, {"mode": "drop", "times": "x"}, []]
)
def test_admin_refuses_bad_faults(fake: FakeKaleyra, body: object) -> None:
    response = admin(fake, "fault", body)
    assert response.status_code == 400
    assert response.json()["error"]


def test_admin_counts_api_requests_only(fake: FakeKaleyra) -> None:
    get(fake)
    get(fake, "/nowhere")
    admin(fake, "fault", {"mode": None})
    response = requests.get(fake.url + "/_fake/requests", timeout=5)
    assert response.json() == {"count": 2}


def test_admin_unknown_endpoint_is_404(fake: FakeKaleyra) -> None:
    assert requests.get(fake.url + "/_fake/nothing", timeout=5).status_code == 404


def test_admin_404_lists_every_admin_endpoint_and_each_one_answers(fake: FakeKaleyra) -> None:
    listed = requests.get(fake.url + "/_fake/nothing", timeout=5).json()["error"]
    endpoints = re.findall(r"\b(GET|PUT|PATCH|POST|DELETE) (/_fake/[\w/{}]+)", listed)
    assert set(endpoints) >= {
        ("GET", "/_fake/regions"),
        ("PUT", "/_fake/regions"),
        ("PATCH", "/_fake/regions/{id}"),
        ("PUT", "/_fake/fault"),
        ("GET", "/_fake/requests"),
        ("POST", "/_fake/webhook"),
        ("GET", "/_fake/webhook"),
        ("DELETE", "/_fake/webhook"),
        ("PUT", "/_fake/webhook/fault"),
    }
    for method, path in endpoints:  # none of them is the 404 itself
        url = fake.url + path.replace("{id}", "no-such-region")
        response = requests.request(method, url, data=b"{}", timeout=5)
        assert response.status_code != 404 or "no region" in response.text, (method, path)


def test_admin_get_regions_returns_exactly_what_is_served(fake: FakeKaleyra) -> None:
    served = requests.get(fake.url + "/_fake/regions", timeout=5)
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "application/json"
    assert served.content == get(fake).content
    assert served.json()["data"] == sample_regions()
    admin(fake, "regions", [{"id": "x", "carrier_enabled": True}])
    assert requests.get(fake.url + "/_fake/regions", timeout=5).content == get(fake).content
    admin(fake, "regions", {"code": "RCS601", "data": []})
    assert requests.get(fake.url + "/_fake/regions", timeout=5).json() == {
        "code": "RCS601",
        "data": [],
    }
    fake.set_raw_body(b'{"data": [NaN]}')
    assert requests.get(fake.url + "/_fake/regions", timeout=5).content == b'{"data": [NaN]}'
    # Only the API's own requests count, not these looks at what it serves.
    assert requests.get(fake.url + "/_fake/requests", timeout=5).json() == {"count": 2}


def test_admin_patch_changes_one_region_and_nothing_else(fake: FakeKaleyra) -> None:
    first, second, *rest = sample_regions()
    response = requests.patch(
        f"{fake.url}/_fake/regions/{first['id']}", json={"carrier_enabled": False}, timeout=5
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "region": {**first, "carrier_enabled": False}}
    assert get(fake).json()["data"] == [{**first, "carrier_enabled": False}, second, *rest]


@pytest.mark.parametrize(
    ("region", "body", "status"),
    [("no-such-region", {"carrier_enabled": False}, 404), (None, [1], 400), (None, "x", 400)],
)
def test_admin_patch_refuses_an_unknown_region_or_a_body_that_is_no_object(
    fake: FakeKaleyra, region: str | None, body: object, status: int
) -> None:
    region = region or sample_regions()[0]["id"]
    response = requests.patch(f"{fake.url}/_fake/regions/{region}", json=body, timeout=5)
    assert response.status_code == status
    assert response.json()["error"]
    assert get(fake).json()["data"] == sample_regions()


def test_admin_patch_refuses_while_a_whole_body_is_served(fake: FakeKaleyra) -> None:
    admin(fake, "regions", {"code": "RCS601", "data": "not a list"})
    response = requests.patch(f"{fake.url}/_fake/regions/x", json={}, timeout=5)
    assert response.status_code == 409
    assert "PUT /_fake/regions" in response.json()["error"]


def test_the_docs_recipe_saves_a_changed_regions_file(fake: FakeKaleyra, tmp_path: Path) -> None:
    # The command lines of docs/fake-api.md, run as a user would, against this fake's port.
    after = page("fake-api.md").split("A changed regions file", 1)[1]
    block = after.split("\n\n    ", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    assert len(lines) == 2, lines  # the PATCH of one region, then saving what is served
    region = sample_regions()[0]["id"]
    for line in lines:
        command = line.replace("localhost:8080", fake.url.removeprefix("http://"))
        command = command.replace("REGION_ID", region)
        subprocess.run(["/bin/bash", "-c", command], cwd=tmp_path, check=True, timeout=30)
    saved = json.loads((tmp_path / "changed.json").read_text())
    assert saved == get(fake).json()
    assert saved["data"][0] == {**sample_regions()[0], "carrier_enabled": False}


# Logging -------------------------------------------------------------------------------


def test_verbose_log_shows_requests_but_never_the_key(capfd: pytest.CaptureFixture[str]) -> None:
    with FakeKaleyra(api_key=API_KEY, verbose=True) as fake:
        get(fake)
        get(fake, key="a-wrong-key-xyz")
    err = capfd.readouterr().err
    assert f"GET {PATH}" in err
    assert API_KEY not in err
    assert "a-wrong-key-xyz" not in err


def test_url_needs_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeKaleyra().url


# The command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--host", "0.0.0.0"],  # noqa: S104 - the point: refused without --allow-remote
        ["--host", "192.0.2.1"],
        ["--port", "70000"],
        ["--port", "x"],
        ["--fault", "bogus"],
        ["--fault-times", "2"],
        ["--sid", "not/alnum"],
        ["--regions", "/nonexistent/regions.json"],
        ["--unknown"],
    ],
)
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        fakeapi.main(argv)
    assert caught.value.code == 2
    assert "regionsync fake-api" in capsys.readouterr().err


def test_regions_file_that_is_not_json_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "regions.json"
    path.write_text("nope", encoding="utf-8")
    with pytest.raises(SystemExit) as caught:
        fakeapi.main(["--regions", str(path)])
    assert caught.value.code == 2


def run_command(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "regionsync.testing.fakeapi", "--port", "0", "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, line


def env_from(line: str, prefix: str = "KALEYRA_") -> dict[str, str]:
    return dict(word.split("=", 1) for word in line.split() if word.startswith(prefix))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_command_serves_the_sample_until_signalled(sig: signal.Signals) -> None:
    process, line = run_command("--sid", "ABC123", "--api-key", "trial-key")
    try:
        assert "listening on http://127.0.0.1:" in line
        env = env_from(line)
        assert env["KALEYRA_SID"] == "ABC123"
        assert env["KALEYRA_API_KEY"] == "trial-key"
        api = KaleyraClient(Settings.from_env(env).require_kaleyra(), retry=FAST)
        assert len(api.fetch().records) == 12
    finally:
        process.send_signal(sig)
        assert process.wait(timeout=10) == 0


@pytest.mark.slow
def test_command_takes_regions_and_a_fault(tmp_path: Path) -> None:
    path = tmp_path / "regions.json"
    path.write_text(json.dumps([{"id": "one", "carrier_enabled": False}]), encoding="utf-8")
    process, line = run_command("--regions", str(path), "--fault", "rcs502", "--fault-times", "1")
    try:
        api = KaleyraClient(Settings.from_env(env_from(line)).require_kaleyra(), retry=FAST)
        snapshot = api.fetch()
        assert [r.id for r in snapshot.records] == ["one"]
        url = env_from(line)["KALEYRA_BASE_URL"]
        assert requests.get(url + "/_fake/requests", timeout=5).json() == {"count": 2}
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "verified"), [(["--webhook-secret", SECRET], True), ([], None)]
)
def test_command_banner_gives_the_webhook_settings_and_they_deliver(
    invoke: Invoke, tmp_path: Path, options: list[str], verified: bool | None
) -> None:
    process, line = run_command(*options)
    try:
        assert process.stdout is not None
        hook_line = process.stdout.readline()
        env = {**env_from(line), **env_from(hook_line, "REGIONSYNC_")}
        assert env["REGIONSYNC_WEBHOOK_URL"] == env["KALEYRA_BASE_URL"] + "/_fake/webhook"
        env["REGIONSYNC_DATABASE_URL"] = f"sqlite:///{tmp_path / 'banner.db'}"
        assert invoke("migrate", env=env).returncode == 0
        done = invoke("run", env=env)
        assert done.returncode == 0, done.stderr
        url = env["REGIONSYNC_WEBHOOK_URL"]
        received = requests.get(url, timeout=5).json()["received"]
        assert [(r["verified"], r["answered"]) for r in received] == [(verified, 204)]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


@pytest.mark.slow
def test_command_accepts_a_whole_body_file(tmp_path: Path) -> None:
    body: dict[str, Any] = {"code": "RCS601", "message": "off", "data": [], "error": {"x": 1}}
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body), encoding="utf-8")
    process, line = run_command("--regions", str(path))
    try:
        url = env_from(line)["KALEYRA_BASE_URL"]
        response = requests.get(
            url + "/v1/demo/rcs/agent/agent_regions", timeout=5, headers={"api-key": "demo-key"}
        )
        assert response.json() == body
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


# A fleet of accounts -------------------------------------------------------------------


def fleet_get(fake: FakeKaleyra, sid: str, key: str | None = None) -> requests.Response:
    path = f"/v1/{sid}/rcs/agent/agent_regions"
    return get(fake, path, key=fakeapi.fleet_key(sid) if key is None else key)


@pytest.fixture
def fleet() -> Iterator[FakeKaleyra]:
    with FakeKaleyra(
        api_key=API_KEY, regions=sample_regions(), accounts=3, regions_per_account=5
    ) as fake:
        yield fake


def test_fleet_accounts_serve_regions_of_their_own_with_their_own_keys(
    fleet: FakeKaleyra,
) -> None:
    served = {}
    for number in (1, 2, 3):
        sid = fakeapi.fleet_sid(number)
        response = fleet_get(fleet, sid)
        assert response.status_code == 200, response.text
        served[sid] = {region["id"] for region in response.json()["data"]}
        assert len(served[sid]) == 5
        assert fleet_get(fleet, sid).json() == response.json()  # the same on each request
    assert len(set().union(*served.values())) == 15
    assert fleet_get(fleet, "FAKE00001", key="key-FAKE00002").status_code == 401
    assert fleet_get(fleet, "FAKE00004").status_code == 404  # past N
    assert fleet_get(fleet, "FAKE1").status_code == 404  # not the rule's spelling
    assert get(fleet).json()["data"] == sample_regions()  # its own account still served


def test_fleet_faults_and_regions_are_per_account(fleet: FakeKaleyra) -> None:
    first, second = fakeapi.fleet_sid(1), fakeapi.fleet_sid(2)
    assert admin(fleet, f"accounts/{first}/fault", {"mode": "rcs502"}).status_code == 200
    assert fleet_get(fleet, first).json()["code"] == "RCS502"
    assert fleet_get(fleet, second).status_code == 200
    assert get(fleet).status_code == 200
    assert admin(fleet, f"accounts/{first}/fault", {"mode": "bogus"}).status_code == 400
    assert admin(fleet, f"accounts/{first}/fault", {"mode": None}).status_code == 200
    assert fleet_get(fleet, first).status_code == 200

    regions = [{"id": "only", "carrier_enabled": True}]
    assert admin(fleet, f"accounts/{second}/regions", regions).status_code == 200
    assert fleet_get(fleet, second).json()["data"] == regions
    served = requests.get(f"{fleet.url}/_fake/accounts/{second}/regions", timeout=5)
    assert served.content == fleet_get(fleet, second).content
    assert fleet_get(fleet, first).json()["data"] != regions
    assert admin(fleet, "accounts/FAKE00009/regions", regions).status_code == 404
    listed = requests.get(fleet.url + "/_fake/nothing", timeout=5).json()["error"]
    assert "PUT /_fake/accounts/{sid}/fault" in listed


def test_fleet_changes_outlive_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fakeapi, "FLEET_CACHE", 2)
    with FakeKaleyra(accounts=10, regions_per_account=1) as fake:
        admin(fake, "accounts/FAKE00001/regions", [])
        for number in range(2, 11):
            assert fleet_get(fake, fakeapi.fleet_sid(number)).status_code == 200
        assert fleet_get(fake, "FAKE00001").json()["data"] == []


def test_latency_delays_every_api_answer_but_not_admin_calls() -> None:
    with FakeKaleyra(api_key=API_KEY, latency=0.3) as fake:
        started = time.monotonic()
        assert get(fake).status_code == 200
        assert 0.3 <= time.monotonic() - started < 3
        started = time.monotonic()
        requests.get(fake.url + "/_fake/requests", timeout=5)
        assert time.monotonic() - started < 0.3


@pytest.mark.parametrize(
    ("text", "seconds"), [("200ms", 0.2), ("0ms", 0.0), ("2s", 2.0), ("1m", 60.0)]
)
def test_latency_parses(text: str, seconds: float) -> None:
    assert fakeapi.parse_latency(text) == seconds


@pytest.mark.parametrize("text", ["200", "-1s", "0.2s", "2h", "ms"])
def test_latency_refuses_others(text: str) -> None:
    with pytest.raises(ValueError, match=r"latency|more than"):
        fakeapi.parse_latency(text)


def test_ten_thousand_accounts_start_at_once_and_the_last_answers() -> None:
    started = time.monotonic()
    with FakeKaleyra(accounts=10_000) as fake:
        assert time.monotonic() - started < 2  # nothing built before it is asked
        response = fleet_get(fake, fakeapi.fleet_sid(10_000))
        assert response.status_code == 200
        assert len(response.json()["data"]) == fakeapi.DEFAULT_REGIONS_PER_ACCOUNT
        assert fleet_get(fake, fakeapi.fleet_sid(10_001)).status_code == 404


@pytest.mark.parametrize(
    "argv",
    [
        ["--accounts", "0"],
        ["--accounts", "100001"],
        ["--regions-per-account", "3"],
        ["--accounts", "2", "--regions-per-account", "-1"],
        ["--latency", "soon"],
    ],
)
def test_bad_fleet_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        fakeapi.main(argv)
    assert caught.value.code == 2
    assert "regionsync fake-api" in capsys.readouterr().err


@pytest.mark.slow
def test_command_prints_how_to_reach_the_fleet() -> None:
    process, _ = run_command("--accounts", "1000", "--regions-per-account", "2")
    try:
        assert process.stdout is not None
        process.stdout.readline()  # the webhook receiver's line
        fleet_line = process.stdout.readline()
        assert "SID FAKE{i:05d}" in fleet_line
        env = env_from(fleet_line)
        assert (env["KALEYRA_SID"], env["KALEYRA_API_KEY"]) == ("FAKE00001", "key-FAKE00001")
        api = KaleyraClient(Settings.from_env(env).require_kaleyra(), retry=FAST)
        assert len(api.fetch().records) == 2
        env["KALEYRA_SID"], env["KALEYRA_API_KEY"] = "FAKE01000", "key-FAKE01000"
        api = KaleyraClient(Settings.from_env(env).require_kaleyra(), retry=FAST)
        assert len(api.fetch().records) == 2
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
