"""A fake Kaleyra "Get an Agent's Regions" API, for trials and tests (``regionsync fake-api``).

It serves the regions over plain HTTP on loopback, checks the SID and ``api-key`` as
Kaleyra would, and can be told to fail in the ways docs/contract.md §1 lists (see
:data:`FAULT_MODES`), from Python or over its admin endpoints:

- ``GET /_fake/regions``: what the API serves now, byte for byte (a file for ``--regions``);
- ``PUT /_fake/regions``: a JSON list of regions, or a whole body to serve as it is;
- ``PATCH /_fake/regions/{id}``: a JSON object of fields merged into that one region;
- ``PUT /_fake/fault``: ``{"mode": "http429:retry-after=2", "times": 3}``, ``{"mode": null}``
  to clear;
- ``GET /_fake/requests``: ``{"count": N}``, the API requests received so far;
- the webhook receiver's endpoints under ``/_fake/webhook`` (see
  :mod:`regionsync.testing.fakehook`).

Besides Kaleyra's own failures it has hostile modes, for the reliability suite (see
docs/reliability.md, *What the tests inject*): a server that drips its headers or body, an
endless chunked body, compression bombs, a redirect to another host, and bodies with huge or
deeply nested values, long ids, junk records, non-UTF-8 bytes, NaN/Infinity or NUL
characters. It serves from a
:class:`~regionsync.httpserver.BoundedHTTPServer`.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import re
import signal
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote

from regionsync.httpserver import BoundedHTTPServer, ServerThread
from regionsync.settings import LOOPBACK, is_loopback_host
from regionsync.testing import fakehook

REGIONS_PATHS = ("/v1/{sid}/rcs/agent/agent_regions", "/v1/{sid}/rcs/agent_regions")
SUCCESS = {"code": "RCS902", "message": "Regions fetched successfully"}
HUGE_BYTES = 60 * 1024 * 1024
#: What a compression bomb inflates to: four times the most regionsync accepts.
BOMB_BYTES = 200 * 1024 * 1024
HUGE_VALUE_CHARS = 10 * 1024 * 1024
LONG_ID_CHARS = 3000
DEFAULT_DEPTH = 1000
DEFAULT_JUNK = 1000
#: Junk records: every JSON type but an object with a string id and a boolean.
JUNK = (
    "null",
    "42",
    '"region"',
    "[]",
    "{}",
    '{"id": 7, "carrier_enabled": true}',
    '{"id": "", "carrier_enabled": true}',
    '{"id": "junk", "carrier_enabled": "yes"}',
)
MAX_REQUEST_BYTES = 10 * 1024 * 1024
REGION_PATH = "/_fake/regions/"
#: Every admin endpoint, the webhook receiver's included: what a 404 under /_fake/ lists.
ADMIN_HELP = (
    "admin endpoints: GET /_fake/regions, PUT /_fake/regions, PATCH /_fake/regions/{id}, "
    f"PUT /_fake/fault, GET /_fake/requests, POST {fakehook.PATH}, GET {fakehook.PATH}, "
    f"DELETE {fakehook.PATH}, PUT {fakehook.FAULT_PATH}"
)

#: Kaleyra's error bodies, by fault name: (code, message, error_code, usual HTTP status).
KALEYRA_ERRORS = {
    "rcs601": ("RCS601", "RCS Channel is not enabled for this User", "RCS_CHANNEL_DISABLED", 400),
    "rcs405": ("RCS405", "Method not allowed", "METHOD_NOT_ALLOWED", 405),
    "rcs502": ("RCS502", "Internal Gateway Error", "RCS_CHANNEL_INTERNAL_ERROR", 500),
    "rcs500": ("RCS500", "Internal Server Error", "INTERNAL_SERVER_ERROR", 500),
    "rcs701": ("RCS701", "Invalid JSON", "INVALID_JSON", 400),
}

FAULT_MODES = (
    "rcs601, rcs405, rcs502, rcs500, rcs701 (Kaleyra's error bodies with their usual status; "
    "add -STATUS for another, e.g. rcs502-200), http401, http403, http404, http429, "
    "http503 or any httpNNN from 400 to 599 (add :retry-after=N), html500, html200, "
    "malformed, truncated, no-data, error-200, redirect, slow:SECONDS, drop, huge; "
    "hostile: drip:SECONDS (the body a byte at a time), drip-headers:SECONDS, "
    "endless:SECONDS (a chunked body that never ends), gzip-bomb, deflate-bomb, "
    "redirect-away (to another host), huge-value, deep:LEVELS, long-id, junk:COUNT, "
    "latin1, nan, nul"
)

_KALEYRA_FAULT = re.compile(r"(rcs\d{3})(?:-(\d{3}))?")
_HTTP_FAULT = re.compile(r"http(\d{3})")
_SIMPLE_FAULTS = frozenset(
    {
        "html500",
        "html200",
        "malformed",
        "truncated",
        "no-data",
        "error-200",
        "redirect",
        "drop",
        "huge",
        "gzip-bomb",
        "deflate-bomb",
        "redirect-away",
        "huge-value",
        "long-id",
        "latin1",
        "nan",
        "nul",
    }
)
#: Modes with a number: name -> (default, largest).
_NUMBER_FAULTS = {
    "slow": (None, 3600.0),
    "drip": (1.0, 3600.0),
    "drip-headers": (1.0, 3600.0),
    "endless": (0.0, 3600.0),
    "deep": (DEFAULT_DEPTH, 10_000_000),
    "junk": (DEFAULT_JUNK, 10_000_000),
}


@dataclass(frozen=True)
class RequestRecord:
    """One API request the fake received; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    time: float  # time.monotonic()


@dataclass(frozen=True)
class Fault:
    """A parsed fault mode: ``kind`` plus its status, Retry-After or delay."""

    mode: str
    kind: str
    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0


def parse_fault(mode: str) -> Fault:
    """Parse a fault mode string; raises ValueError naming the modes on a bad one."""
    text = mode.strip().lower()
    name, _, option = text.partition(":")
    if match := _KALEYRA_FAULT.fullmatch(name):
        if match.group(1) in KALEYRA_ERRORS and not option:
            status = int(match.group(2) or KALEYRA_ERRORS[match.group(1)][3])
            if 200 <= status <= 599:
                return Fault(text, match.group(1), status=status)
    elif match := _HTTP_FAULT.fullmatch(name):
        status = int(match.group(1))
        key, sep, value = option.partition("=")
        if 400 <= status <= 599 and (not option or (key == "retry-after" and sep and value)):
            retry_after = mode.strip().partition("=")[2].strip() if option else None
            return Fault(text, "http", status=status, retry_after=retry_after)
    elif name in _NUMBER_FAULTS:
        default, largest = _NUMBER_FAULTS[name]
        try:
            delay = float(option) if option or default is None else float(default)
        except ValueError:
            delay = -1.0
        if 0 <= delay <= largest:
            return Fault(text, name, delay=delay)
    elif name in _SIMPLE_FAULTS and not option:
        return Fault(text, name)
    raise ValueError(f"unknown fault mode {mode!r}; modes: {FAULT_MODES}")


def error_body(code: str | None, message: str, error_code: str) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message, "data": []}
    if code is not None:
        body = {"code": code, **body}
    body["error"] = {"error_code": error_code, "error_message": message}
    return body


def success_body(regions: list[Any]) -> dict[str, Any]:
    return {**SUCCESS, "data": regions, "error": {}}


def load_regions(text: str | bytes) -> tuple[list[Any] | None, object]:
    """A JSON list of regions or a whole body: ``(regions, None)`` or ``(None, body)``."""
    value = json.loads(text)
    if isinstance(value, list):
        return value, None
    return None, value


def sample_regions() -> list[Any]:
    """The regions of the bundled sample response (``regionsync/samples/regions.json``)."""
    text = resources.files("regionsync.samples").joinpath("regions.json").read_text("utf-8")
    body = json.loads(text)
    regions: list[Any] = body["data"]
    return regions


class _Server(BoundedHTTPServer):
    fake: FakeKaleyra


class FakeKaleyra:
    """The fake API, serving from a daemon thread; use as a context manager."""

    def __init__(
        self,
        *,
        sid: str = "demo",
        api_key: str = "demo-key",
        regions: list[dict[str, Any]] | None = None,
        host: str = LOOPBACK,
        port: int = 0,
        verbose: bool = False,
    ) -> None:
        self.sid = sid
        self.host = host
        self.port = port
        self.verbose = verbose
        self._api_key = api_key
        self._lock = threading.Lock()
        self._regions: list[Any] = copy.deepcopy(regions) if regions is not None else []
        self._body: object = None
        self._has_body = False
        self._encoded: bytes | None = None
        self._fault: Fault | None = None
        self._fault_times: int | None = None
        self._requests: list[RequestRecord] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._serving: ServerThread | None = None
        self._raw: tuple[bytes, str] | None = None
        self.webhooks = fakehook.WebhookReceiver()  # a webhook receiver too: see fakehook

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        return f"FakeKaleyra({where}, sid={self.sid!r})"

    @property
    def url(self) -> str:
        """The base URL to give regionsync as ``KALEYRA_BASE_URL``."""
        if self._server is None:
            raise RuntimeError("the fake Kaleyra API is not started")
        address = self._server.server_address
        host, port = str(address[0]), address[1]
        # A wildcard address is not one a client can use: name the loopback one instead.
        host = {"0.0.0.0": LOOPBACK, "::": "::1"}.get(host, host)  # noqa: S104
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    @property
    def regions_url(self) -> str:
        return self.url + REGIONS_PATHS[0].format(sid=self.sid)

    @property
    def requests(self) -> list[RequestRecord]:
        """The API requests received so far (admin requests excluded), oldest first."""
        with self._lock:
            return list(self._requests)

    def start(self) -> FakeKaleyra:
        # Hostile modes hold a connection for as long as they drip: no lifetime to speak of.
        server = _Server(
            (self.host, self.port), _Handler, max_connections=64, idle_timeout=30, lifetime=3600
        )
        server.fake = self
        self._server = server
        self._stopping.clear()
        self._serving = ServerThread(server, name="fake-kaleyra", poll_interval=0.05)
        self._serving.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._serving is not None:
            self._serving.stop()
        self._server = self._serving = None

    def __enter__(self) -> FakeKaleyra:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def set_regions(self, regions: list[dict[str, Any]]) -> None:
        """Serve these regions in a success body (and forget any body set before)."""
        with self._lock:
            self._regions = copy.deepcopy(regions)
            self._body, self._has_body, self._raw = None, False, None
            self._encoded = None

    def set_body(self, body: object) -> None:
        """Serve this whole JSON body with HTTP 200 instead of the regions."""
        with self._lock:
            self._body, self._has_body, self._raw = copy.deepcopy(body), True, None
            self._encoded = None

    def update_region(self, region_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Merge ``fields`` into the served region with this id; returns the region as changed.

        Raises KeyError when no served region has that id, and ValueError when a whole body
        (not a list of regions) is being served.
        """
        with self._lock:
            if self._has_body or self._raw is not None:
                raise ValueError(
                    "a whole body is being served, not a list of regions: "
                    "PUT /_fake/regions a list first"
                )
            for region in self._regions:
                if isinstance(region, dict) and region.get("id") == region_id:
                    region.update(copy.deepcopy(fields))
                    self._encoded = None
                    return copy.deepcopy(region)
        raise KeyError(region_id)

    def set_raw_body(self, content: bytes, content_type: str = "application/json") -> None:
        """Serve these exact bytes with HTTP 200 (e.g. a body no JSON encoder would write)."""
        with self._lock:
            self._raw = (bytes(content), content_type)

    def raw_body(self) -> tuple[bytes, str] | None:
        with self._lock:
            return self._raw

    def fail(self, mode: str, *, times: int | None = None) -> None:
        """Fail the next ``times`` API requests (None: until cleared) in fault ``mode``."""
        fault = parse_fault(mode)
        if times is not None and times < 0:
            raise ValueError("times must not be negative")
        if fault.kind in ("gzip-bomb", "deflate-bomb"):
            _bomb(fault.kind.partition("-")[0])  # built now, so serving it is instant
        with self._lock:
            self._fault, self._fault_times = (fault, times) if times != 0 else (None, None)

    def clear_faults(self) -> None:
        with self._lock:
            self._fault, self._fault_times = None, None

    def check_api_key(self, given: str | None) -> bool:
        return given == self._api_key

    def take_fault(self) -> Fault | None:
        """The fault for this request, counting it against ``times``."""
        with self._lock:
            fault = self._fault
            if fault is not None and self._fault_times is not None:
                self._fault_times -= 1
                if self._fault_times <= 0:
                    self._fault, self._fault_times = None, None
            return fault

    def current_body(self) -> object:
        with self._lock:
            if self._has_body:
                return copy.deepcopy(self._body)
            return success_body(copy.deepcopy(self._regions))

    def encoded_body(self) -> bytes:
        """The body as sent, encoded once per change: the benchmark serves 100,000 regions."""
        with self._lock:
            if self._encoded is None:
                body = self._body if self._has_body else success_body(self._regions)
                self._encoded = json.dumps(body).encode()
            return self._encoded

    def record(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        entry = RequestRecord(handler.command, handler.path, headers, time.monotonic())
        with self._lock:
            self._requests.append(entry)

    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; True when it slept the whole time."""
        return not self._stopping.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "FakeKaleyra/1"
    sys_version = ""

    @property
    def fake(self) -> FakeKaleyra:
        return self.server.fake

    def log_message(self, format: str, *args: Any) -> None:
        if self.fake.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path.startswith(fakehook.PATH):
                self.fake.webhooks.handle(self, path)
            elif path.startswith("/_fake/"):
                self._admin(path)
            else:
                self._read_body()  # unread, it could reset the connection before the answer
                self._api(path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # The API ---------------------------------------------------------------------------

    def _api(self, path: str) -> None:
        self.fake.record(self)
        sid = self._sid(path)
        if sid != self.fake.sid:
            self._json(404, error_body(None, "Not Found", "NOT_FOUND"))
            return
        fault = self.fake.take_fault()
        if fault is not None:
            self._fault(fault)
            return
        if not self.fake.check_api_key(self.headers.get("api-key")):
            self._json(401, error_body(None, "Invalid or missing api-key", "UNAUTHORIZED"))
            return
        if self.command != "GET":
            code, message, error_code, status = KALEYRA_ERRORS["rcs405"]
            self._json(status, error_body(code, message, error_code))
            return
        raw = self.fake.raw_body()
        if raw is not None:
            self._send(200, raw[0], raw[1])
            return
        self._send(200, self.fake.encoded_body(), "application/json")

    def _sid(self, path: str) -> str | None:
        for template in REGIONS_PATHS:
            prefix, suffix = template.split("{sid}")
            if path.startswith(prefix) and path.endswith(suffix):
                sid = path[len(prefix) : len(path) - len(suffix)]
                if sid and "/" not in sid:
                    return sid
        return None

    def _fault(self, fault: Fault) -> None:
        kind = fault.kind
        if kind in KALEYRA_ERRORS:
            code, message, error_code, _ = KALEYRA_ERRORS[kind]
            self._json(fault.status, error_body(code, message, error_code))
        elif kind == "http":
            try:
                phrase = HTTPStatus(fault.status).phrase
            except ValueError:
                phrase = "Error"
            error_code = re.sub(r"\W+", "_", phrase).upper()
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._json(fault.status, error_body(None, phrase, error_code), headers)
        elif kind in ("html500", "html200"):
            page = b"<!DOCTYPE html><html><head><title>Error</title></head><body>oops</body></html>"
            self._send(int(kind[4:]), page, "text/html; charset=utf-8")
        elif kind == "malformed":
            self._send(200, b'{"code": "RCS902", "data": [{"id": "x",]', "application/json")
        elif kind == "truncated":
            whole = json.dumps(self.fake.current_body()).encode()
            self._send(200, whole[: len(whole) // 2], "application/json")
        elif kind == "no-data":
            self._json(200, {**SUCCESS, "error": {}})
        elif kind == "error-200":
            body = {
                **SUCCESS,
                "data": [],
                "error": {"error_code": "UNEXPECTED", "error_message": "Something went wrong"},
            }
            self._json(200, body)
        elif kind == "redirect":
            self._send(302, b"", "text/plain", {"Location": f"{self.fake.url}/moved{self.path}"})
        elif kind == "slow":
            if self.fake.sleep(fault.delay):
                self._send(200, self.fake.encoded_body(), "application/json")
        elif kind == "drop":
            self.close_connection = True
        elif kind == "huge":
            self._huge()
        elif kind in _HOSTILE:
            _HOSTILE[kind](self, fault)

    def _huge(self) -> None:
        """A valid-looking body of :data:`HUGE_BYTES`, streamed without a Content-Length."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        record = json.dumps(
            {"id": "00000000-0000-0000-0000-000000000000", "carrier_enabled": True}
        ).encode()
        chunk = b",".join([record] * (1024 * 1024 // (len(record) + 1))) + b","
        self.wfile.write(b'{"code": "RCS902", "error": {}, "data": [')
        sent = 0
        while sent < HUGE_BYTES:
            self.wfile.write(chunk)
            sent += len(chunk)
        self.wfile.write(record + b"]}")

    # Hostile modes ---------------------------------------------------------------------

    def _body_bytes(self) -> bytes:
        return self.fake.encoded_body()

    def _drip(self, fault: Fault) -> None:
        """Headers at once, then the body one byte every ``delay`` seconds."""
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
        self.wfile.flush()
        for byte in self._body_bytes():
            if not self.fake.sleep(fault.delay):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    def _drip_headers(self, fault: Fault) -> None:
        """A status line, then a header that never ends, one byte every ``delay`` seconds."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
        self.wfile.flush()
        while self.fake.sleep(fault.delay):
            self.wfile.write(b"a")
            self.wfile.flush()

    def _endless(self, fault: Fault) -> None:
        """A chunked success body whose ``data`` never ends (a chunk every ``delay`` s)."""
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        record = b'{"id": "00000000-0000-0000-0000-000000000000", "carrier_enabled": true},'
        chunks = [b'{"code": "RCS902", "error": {}, "data": [', record * 64]
        chunk = chunks[0]
        while True:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            if not self.fake.sleep(fault.delay):
                return
            chunk = chunks[1]

    def _bomb(self, fault: Fault) -> None:
        encoding = fault.kind.partition("-")[0]
        content = _bomb(encoding)
        self._send(200, content, "application/json", {"Content-Encoding": encoding})

    def _redirect_away(self, fault: Fault) -> None:
        location = f"https://elsewhere.example{self.path}"
        self._send(302, b"", "text/plain", {"Location": location})

    def _hostile_body(self, fault: Fault) -> None:
        self._send(200, hostile_body(fault, self.fake.current_body()), "application/json")

    # Admin -----------------------------------------------------------------------------

    def _admin(self, path: str) -> None:
        if path == "/_fake/requests" and self.command == "GET":
            self._json(200, {"count": self.fake.request_count()})
            return
        if path == "/_fake/regions" and self.command == "GET":
            raw = self.fake.raw_body()
            self._send(200, *(raw or (self.fake.encoded_body(), "application/json")))
            return
        if path.startswith(REGION_PATH) and self.command == "PATCH":
            self._patch_region(unquote(path.removeprefix(REGION_PATH)))
            return
        if self.command != "PUT" or path not in ("/_fake/regions", "/_fake/fault"):
            self._json(
                404,
                {"error": ADMIN_HELP},
            )
            return
        try:
            value = json.loads(self._read_body())
        except ValueError as error:
            self._json(400, {"error": f"not JSON: {error}"})
            return
        try:
            if path == "/_fake/regions":
                if isinstance(value, list):
                    self.fake.set_regions(value)
                else:
                    self.fake.set_body(value)
            else:
                self._set_fault(value)
        except ValueError as error:
            self._json(400, {"error": str(error)})
            return
        self._json(200, {"ok": True})

    def _patch_region(self, region_id: str) -> None:
        try:
            fields = json.loads(self._read_body())
        except ValueError as error:
            self._json(400, {"error": f"not JSON: {error}"})
            return
        if not isinstance(fields, dict):
            self._json(
                400, {"error": 'expected a JSON object of fields, e.g. {"carrier_enabled": false}'}
            )
            return
        try:
            region = self.fake.update_region(region_id, fields)
        except KeyError:
            self._json(404, {"error": f"no region with id {region_id[:100]!r} is served"})
            return
        except ValueError as error:
            self._json(409, {"error": str(error)})
            return
        self._json(200, {"ok": True, "region": region})

    def _set_fault(self, value: object) -> None:
        if not isinstance(value, dict) or "mode" not in value:
            raise ValueError('expected {"mode": "...", "times": N} or {"mode": null}')
        mode, times = value["mode"], value.get("times")
        if mode is None:
            self.fake.clear_faults()
            return
        if not isinstance(mode, str):
            raise ValueError("mode must be a string or null")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise ValueError("times must be an integer or null")
        self.fake.fail(mode, times=times)

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length", "0")
        size = int(length) if length.isdigit() else 0
        return self.rfile.read(min(size, MAX_REQUEST_BYTES))

    # Output ----------------------------------------------------------------------------

    def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(
        self, status: int, content: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(content)


@functools.cache
def _bomb(encoding: str) -> bytes:
    """A success body padded with :data:`BOMB_BYTES` of spaces, compressed (about 200 KiB)."""
    compressor = (
        zlib.compressobj(9, zlib.DEFLATED, 31) if encoding == "gzip" else zlib.compressobj(9)
    )
    parts = [compressor.compress(b'{"code": "RCS902", "error": {}, "data": [')]
    block = b" " * (1024 * 1024)
    parts += [compressor.compress(block) for _ in range(BOMB_BYTES // len(block))]
    parts += [compressor.compress(b"]}"), compressor.flush()]
    return b"".join(parts)


def hostile_body(fault: Fault, body: object) -> bytes:
    """``body`` (a success body) with its first record made hostile as ``fault`` says.

    Built as text, so it can hold what ``json.dumps`` would refuse or could not nest.
    """
    if not isinstance(body, dict) or not isinstance(body.get("data"), list) or not body["data"]:
        body = success_body([{"id": "hostile", "carrier_enabled": True}])
    assert isinstance(body, dict)
    data = body["data"]
    first = dict(data[0]) if isinstance(data[0], dict) else {"carrier_enabled": True}
    marker = "\x01HOSTILE\x01"
    kind = fault.kind
    if kind == "huge-value":
        first["display_name"] = "x" * HUGE_VALUE_CHARS
    elif kind == "long-id":
        first["id"] = "a" * LONG_ID_CHARS
    elif kind in ("deep", "nan", "nul", "latin1"):
        first["extra"] = marker
    text = json.dumps({**body, "data": [first, *data[1:]]})
    if kind == "deep":
        depth = int(fault.delay)
        text = text.replace(json.dumps(marker), "[" * depth + "]" * depth)
    elif kind == "nan":
        text = text.replace(json.dumps(marker), '{"a": NaN, "b": Infinity, "c": -Infinity}')
    elif kind == "nul":
        text = text.replace(json.dumps(marker), '"NUL\\u0000here"')
    elif kind == "latin1":
        return text.replace(json.dumps(marker), '"Z\u00fcrich"').encode("latin-1")
    elif kind == "junk":
        junk = ", ".join(JUNK[i % len(JUNK)] for i in range(int(fault.delay)))
        text = text.replace('"data": [', f'"data": [{junk}, ' if junk else '"data": [', 1)
    return text.encode()


_HOSTILE = {
    "drip": _Handler._drip,
    "drip-headers": _Handler._drip_headers,
    "endless": _Handler._endless,
    "gzip-bomb": _Handler._bomb,
    "deflate-bomb": _Handler._bomb,
    "redirect-away": _Handler._redirect_away,
    "huge-value": _Handler._hostile_body,
    "deep": _Handler._hostile_body,
    "long-id": _Handler._hostile_body,
    "junk": _Handler._hostile_body,
    "latin1": _Handler._hostile_body,
    "nan": _Handler._hostile_body,
    "nul": _Handler._hostile_body,
}


DESCRIPTION = "Serve a fake Kaleyra 'Get an Agent's Regions' API, for trials and tests."


def _build_parser() -> argparse.ArgumentParser:
    """``python -m regionsync.testing.fakeapi``'s parser: ``regionsync fake-api``'s options."""
    parser = argparse.ArgumentParser(prog="regionsync fake-api", description=DESCRIPTION)
    add_options(parser)
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    return parser


def add_options(parser: argparse.ArgumentParser) -> None:
    """The fake's own options; ``-q``/``--quiet`` (do not log each request) is every command's
    in ``regionsync fake-api`` (see :func:`regionsync.cli.parser.build_parser`)."""
    parser.add_argument(
        "--host", default=LOOPBACK, help=f"address to listen on (default {LOOPBACK})"
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)"
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow listening on a non-loopback address"
    )
    parser.add_argument(
        "--regions",
        type=Path,
        metavar="FILE",
        help="a JSON list of regions or a whole API body (default: the bundled sample)",
    )
    parser.add_argument("--sid", default="demo", help="the account SID to accept (default demo)")
    parser.add_argument(
        "--api-key", default="demo-key", help="the api-key to accept (default demo-key)"
    )
    parser.add_argument(
        "--fault", metavar="MODE", help=f"fail requests in this mode: {FAULT_MODES}"
    )
    parser.add_argument(
        "--fault-times", type=int, metavar="N", help="fail only the next N requests (default: all)"
    )
    parser.add_argument(
        "--webhook-secret",
        metavar="WHSEC",
        help=f"verify the signatures of webhooks POSTed to {fakehook.PATH} with this secret",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m regionsync.testing.fakeapi``: serve until SIGINT or SIGTERM."""
    parser = _build_parser()
    return serve(parser.parse_args(argv), parser)


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``regionsync fake-api``: check the options ``parser`` read into ``args`` (a bad one
    exits 2 through ``parser.error``), then serve until SIGINT or SIGTERM."""
    if not is_loopback_host(args.host) and not args.allow_remote:
        parser.error(
            f"--host {args.host} is not a loopback address; add --allow-remote to allow it"
        )
    if not 0 <= args.port <= 65535:
        parser.error("--port must be from 0 to 65535")
    if not args.sid.isalnum():
        parser.error("--sid must be letters and digits only")
    if args.fault_times is not None and (args.fault is None or args.fault_times < 0):
        parser.error("--fault-times needs --fault and a number of 0 or more")

    regions: list[Any] | None = None
    body: object = None
    if args.regions is None:
        regions = sample_regions()
    else:
        try:
            regions, body = load_regions(args.regions.read_bytes())
        except OSError as error:
            parser.error(f"--regions: cannot read {args.regions}: {error.strerror}")
        except ValueError as error:
            parser.error(f"--regions: {args.regions} is not JSON: {error}")

    fake = FakeKaleyra(
        sid=args.sid,
        api_key=args.api_key,
        regions=regions,
        host=args.host,
        port=args.port,
        verbose=not args.quiet,
    )
    if regions is None:
        fake.set_body(body)
    if args.webhook_secret:
        try:
            fake.webhooks = fakehook.WebhookReceiver(secret=args.webhook_secret)
        except ValueError as error:
            parser.error(f"--webhook-secret: {error}")
    if args.fault:
        try:
            fake.fail(args.fault, times=args.fault_times)
        except ValueError as error:
            parser.error(f"--fault: {error}")

    try:
        fake.start()
    except OSError as error:
        parser.error(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(
            f"Fake Kaleyra API listening on {fake.url} (regions at {fake.regions_url}); "
            f"point regionsync at it with: KALEYRA_BASE_URL={fake.url} "
            f"KALEYRA_SID={args.sid} KALEYRA_API_KEY={args.api_key}",
            flush=True,
        )
        print(_webhook_banner(fake, args.webhook_secret), flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        fake.stop()
    return 0


def _webhook_banner(fake: FakeKaleyra, secret: str | None) -> str:
    """The settings that point regionsync's notifications at the fake's webhook receiver.

    Like the Kaleyra line, it repeats the credential the fake was started with (a secret for
    this trial, given on its command line). Without one regionsync's json format has nothing
    to sign with, so the line names the unsigned slack format instead.
    """
    url = f"{fake.url}{fakehook.PATH}"
    settings = (
        f"REGIONSYNC_WEBHOOK_URL={url} REGIONSYNC_WEBHOOK_SECRET={secret}"
        if secret
        else f"REGIONSYNC_WEBHOOK_URL={url} REGIONSYNC_WEBHOOK_FORMAT=slack "
        "(or start it with --webhook-secret WHSEC for signed json)"
    )
    return (
        f"Webhook receiver at {url} (GET it to see what came); point regionsync at it with: "
        + settings
    )


if __name__ == "__main__":
    sys.exit(main())
