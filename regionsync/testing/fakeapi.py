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
- with a fleet (``accounts=N``), ``GET|PUT /_fake/accounts/{sid}/regions`` and
  ``PUT /_fake/accounts/{sid}/fault``: the same, for one account of the fleet;
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
import collections
import copy
import functools
import json
import re
import signal
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote

from regionsync.durations import parse_duration
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
ACCOUNTS_PATH = "/_fake/accounts/"
#: The fleet's admin endpoints, listed too when the fake serves one.
ACCOUNTS_HELP = (
    f"GET {ACCOUNTS_PATH}{{sid}}/regions, PUT {ACCOUNTS_PATH}{{sid}}/regions, "
    f"PUT {ACCOUNTS_PATH}{{sid}}/fault"
)
#: A fleet's account ``i`` (1..N) has the SID ``FAKE{i:05d}`` and the api-key ``key-<SID>``.
FLEET_RULE = "account i (1..N) has SID FAKE{i:05d} (FAKE00001...) and api-key key-<SID>"
MAX_ACCOUNTS = 100_000
DEFAULT_REGIONS_PER_ACCOUNT = 12
MAX_REGIONS_PER_ACCOUNT = 100_000
#: How many untouched fleet accounts keep their built regions; one changed over the admin
#: endpoints is kept for good, so a change is never lost.
FLEET_CACHE = 1024
MAX_LATENCY_SECONDS = 3600
_FLEET_SID = re.compile(r"FAKE([0-9]{5,6})", re.ASCII)
_MILLISECONDS = re.compile(r"\s*([0-9]{1,7})\s*ms\s*", re.IGNORECASE | re.ASCII)

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


def fleet_sid(number: int) -> str:
    """The SID of a fleet's account ``number`` (see :data:`FLEET_RULE`)."""
    return f"FAKE{number:05d}"


def fleet_key(sid: str) -> str:
    """The api-key of the fleet's account with this SID: derived, so a trial can compute it."""
    return f"key-{sid}"


def fleet_number(sid: str) -> int | None:
    """The number of the fleet account this SID names, or None when it names none."""
    match = _FLEET_SID.fullmatch(sid)
    if match is None or fleet_sid(int(match.group(1))) != sid:
        return None
    return int(match.group(1)) or None


def fleet_regions(sid: str, count: int) -> list[dict[str, Any]]:
    """``count`` regions shaped as the sample's, with ids and switches derived from ``sid``:
    every account serves regions of its own, the same ones on every start."""
    sample = sample_regions()
    regions = []
    for index in range(count):
        region_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-kaleyra:{sid}:{index}"))
        enabled = zlib.crc32(region_id.encode()) % 4 != 0
        regions.append({**sample[index % len(sample)], "id": region_id, "carrier_enabled": enabled})
    return regions


def parse_latency(text: str) -> float:
    """Seconds from ``200ms`` or a duration (``2s``, ``1m``), up to
    :data:`MAX_LATENCY_SECONDS`; raises ValueError on anything else."""
    if match := _MILLISECONDS.fullmatch(text):
        seconds = int(match.group(1)) / 1000
    elif (duration := parse_duration(text)) is not None:
        seconds = duration.total_seconds()
    else:
        raise ValueError(f"{text!r} is not a latency such as 200ms or 2s")
    if seconds > MAX_LATENCY_SECONDS:
        raise ValueError(f"{text!r} is more than {MAX_LATENCY_SECONDS}s")
    return seconds


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
        accounts: int = 0,
        regions_per_account: int = DEFAULT_REGIONS_PER_ACCOUNT,
        latency: float = 0.0,
    ) -> None:
        """``accounts=N`` serves a fleet besides ``sid``: see :data:`FLEET_RULE`, each account
        with ``regions_per_account`` regions of its own (:func:`fleet_regions`), built on its
        first request. ``latency`` delays every API answer by that many seconds."""
        self.sid = sid
        self.accounts = accounts
        self.regions_per_account = regions_per_account
        self.latency = latency
        self._fleet: collections.OrderedDict[str, FakeKaleyra] = collections.OrderedDict()
        self._changed: dict[str, FakeKaleyra] = {}
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

    def account(self, sid: str, *, keep: bool = False) -> FakeKaleyra | None:
        """The account this SID names, this fake's own or one of its fleet's, or None.

        A fleet account is built on its first request and cached (at most
        :data:`FLEET_CACHE` untouched ones); ``keep`` keeps it for good, for a change.
        """
        if sid == self.sid:
            return self
        number = fleet_number(sid)
        if number is None or number > self.accounts:
            return None
        with self._lock:
            if sid in self._changed:
                return self._changed[sid]
            account = self._fleet.pop(sid, None)
            if account is None:
                regions = fleet_regions(sid, self.regions_per_account)
                account = FakeKaleyra(sid=sid, api_key=fleet_key(sid), regions=regions)
            if keep:
                self._changed[sid] = account
            else:
                self._fleet[sid] = account
                while len(self._fleet) > FLEET_CACHE:
                    self._fleet.popitem(last=False)
            return account

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
    #: The account the API request names: what it is answered from.
    account: FakeKaleyra
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
        if self.fake.latency and not self.fake.sleep(self.fake.latency):
            return
        sid = self._sid(path)
        account = self.fake.account(sid) if sid is not None else None
        if account is None:
            self._json(404, error_body(None, "Not Found", "NOT_FOUND"))
            return
        self.account = account
        fault = account.take_fault()
        if fault is not None:
            self._fault(fault)
            return
        if not account.check_api_key(self.headers.get("api-key")):
            self._json(401, error_body(None, "Invalid or missing api-key", "UNAUTHORIZED"))
            return
        if self.command != "GET":
            code, message, error_code, status = KALEYRA_ERRORS["rcs405"]
            self._json(status, error_body(code, message, error_code))
            return
        self._send_served(account)

    def _send_served(self, account: FakeKaleyra) -> None:
        """What ``account`` serves now: its raw bytes if it has some, else its body."""
        raw = account.raw_body()
        self._send(200, *(raw or (account.encoded_body(), "application/json")))

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
            whole = json.dumps(self.account.current_body()).encode()
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
                self._send(200, self.account.encoded_body(), "application/json")
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
        return self.account.encoded_body()

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
        self._send(200, hostile_body(fault, self.account.current_body()), "application/json")

    # Admin -----------------------------------------------------------------------------

    def _admin(self, path: str) -> None:
        if path == "/_fake/requests" and self.command == "GET":
            self._json(200, {"count": self.fake.request_count()})
            return
        if path.startswith(REGION_PATH) and self.command == "PATCH":
            self._patch_region(unquote(path.removeprefix(REGION_PATH)))
            return
        account, what = self._admin_target(path)
        if account is not None and what == "regions" and self.command == "GET":
            self._send_served(account)
        elif account is not None and what in ("regions", "fault") and self.command == "PUT":
            self._put(account, what)
        else:
            help_text = ADMIN_HELP + (f", {ACCOUNTS_HELP}" if self.fake.accounts else "")
            self._json(404, {"error": help_text})

    def _admin_target(self, path: str) -> tuple[FakeKaleyra | None, str]:
        """The account an admin path is about and what of it (``regions``, ``fault``):
        this fake's own for ``/_fake/regions|fault``, a fleet's under ``/_fake/accounts/``."""
        if path in ("/_fake/regions", "/_fake/fault"):
            return self.fake, path.removeprefix("/_fake/")
        if path.startswith(ACCOUNTS_PATH) and self.fake.accounts:
            sid, _, what = path.removeprefix(ACCOUNTS_PATH).partition("/")
            return self.fake.account(unquote(sid), keep=self.command == "PUT"), what
        return None, ""

    def _put(self, account: FakeKaleyra, what: str) -> None:
        try:
            value = json.loads(self._read_body())
        except ValueError as error:
            self._json(400, {"error": f"not JSON: {error}"})
            return
        try:
            if what == "fault":
                self._set_fault(account, value)
            elif isinstance(value, list):
                account.set_regions(value)
            else:
                account.set_body(value)
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

    def _set_fault(self, account: FakeKaleyra, value: object) -> None:
        if not isinstance(value, dict) or "mode" not in value:
            raise ValueError('expected {"mode": "...", "times": N} or {"mode": null}')
        mode, times = value["mode"], value.get("times")
        if mode is None:
            account.clear_faults()
            return
        if not isinstance(mode, str):
            raise ValueError("mode must be a string or null")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise ValueError("times must be an integer or null")
        account.fail(mode, times=times)

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
    parser.add_argument(
        "--accounts",
        type=int,
        metavar="N",
        help=f"also serve a fleet of N accounts (up to {MAX_ACCOUNTS:,}): {FLEET_RULE}",
    )
    parser.add_argument(
        "--regions-per-account",
        type=int,
        metavar="M",
        help=f"regions each fleet account serves (default {DEFAULT_REGIONS_PER_ACCOUNT})",
    )
    parser.add_argument(
        "--latency",
        type=_latency_option,
        default=0.0,
        metavar="DURATION",
        help="delay every API answer by this much, e.g. 200ms or 2s (default none)",
    )


def _latency_option(text: str) -> float:
    try:
        return parse_latency(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
    if args.accounts is not None and not 1 <= args.accounts <= MAX_ACCOUNTS:
        parser.error(f"--accounts must be from 1 to {MAX_ACCOUNTS}")
    per_account = args.regions_per_account
    if per_account is not None and (
        args.accounts is None or not 0 <= per_account <= MAX_REGIONS_PER_ACCOUNT
    ):
        parser.error(f"--regions-per-account needs --accounts and 0 to {MAX_REGIONS_PER_ACCOUNT}")

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
        accounts=args.accounts or 0,
        regions_per_account=DEFAULT_REGIONS_PER_ACCOUNT if per_account is None else per_account,
        latency=args.latency,
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
        if fake.accounts:
            first = fleet_sid(1)
            print(
                f"Serving a fleet of {fake.accounts} accounts besides {args.sid}: {FLEET_RULE}; "
                f"the first: KALEYRA_BASE_URL={fake.url} KALEYRA_SID={first} "
                f"KALEYRA_API_KEY={fleet_key(first)}",
                flush=True,
            )
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
