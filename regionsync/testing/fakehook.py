"""A fake webhook receiver, for trials and tests: served by ``regionsync fake-api``.

It records every POST to ``/_fake/webhook`` (ids, timestamps, whether the Standard
Webhooks signature verified, the JSON body) and can be told to fail:

- ``POST /_fake/webhook``: a delivery; 204 when accepted, 401 when a secret is set and the
  signature does not verify;
- ``GET /_fake/webhook``: ``{"received": [...], "accepted_ids": [...]}``;
- ``PUT /_fake/webhook/fault``: ``{"status": 503, "times": 3, "retry_after": "2"}`` answers
  the next 3 deliveries with 503; ``{"hang": 30, "times": 1}`` holds the next one 30 s
  before answering; ``{"drip": 5}`` sends the next answer a byte at a time over 5 s;
  ``{"status": 200, "cut_at": 27}`` sends only the first 27 bytes of the next answer
  (``HTTP/1.0 200 OK\r\nContent-Ty``) and closes the connection; ``{"status": null}``
  clears;
- ``DELETE /_fake/webhook``: forget what was received.
"""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any

from regionsync.errors import ConfigError
from regionsync.httpserver import BoundedHTTPServer, ServerThread
from regionsync.notify.webhooks import sign
from regionsync.settings import LOOPBACK, decode_webhook_secret

PATH = "/_fake/webhook"
FAULT_PATH = PATH + "/fault"
MAX_BODY_BYTES = 1024 * 1024
#: Standard Webhooks receivers refuse timestamps further than this from their clock.
TOLERANCE_S = 300
MAX_HANG_S = 600.0

Verifier = Callable[[bytes, dict[str, str]], bool]


def hmac_verifier(secret: str) -> Verifier:
    """Check ``webhook-signature`` the way the Standard Webhooks libraries do."""
    try:
        key = decode_webhook_secret(secret)
    except ConfigError as error:
        raise ValueError(error.problem) from None

    def verify(body: bytes, headers: dict[str, str]) -> bool:
        msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE_S:
            return False
        expected = base64.b64decode(sign(key, msg_id, int(stamp), body).partition(",")[2])
        for given in headers.get("webhook-signature", "").split():
            version, _, value = given.partition(",")
            try:
                decoded = base64.b64decode(value, validate=True)
            except ValueError:
                continue
            if version == "v1" and hmac.compare_digest(decoded, expected):
                return True
        return False

    return verify


@dataclass
class Received:
    """One POST: its Standard Webhooks headers, body, and what the receiver answered."""

    webhook_id: str | None
    webhook_timestamp: str | None
    signature: str | None
    verified: bool | None
    body: Any
    raw_size: int
    at: float  # time.monotonic() when it arrived
    answered: int | None = None  # None: not answered yet, or the sender went away first


@dataclass(frozen=True)
class _Fault:
    status: int | None
    retry_after: str | None
    hang: float
    drip: float = 0.0
    cut_at: int | None = None


class WebhookReceiver:
    """What was received and how to answer next; shared by the HTTP handler threads."""

    def __init__(self, *, secret: str | None = None, verify: Verifier | None = None) -> None:
        self._verify = verify or (hmac_verifier(secret) if secret else None)
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._fault: _Fault | None = None
        self._times: int | None = None
        self._released = threading.Event()

    def fail(
        self,
        status: int | None = 503,
        *,
        times: int | None = 1,
        retry_after: str | None = None,
        hang: float = 0.0,
        drip: float = 0.0,
        cut_at: int | None = None,
    ) -> None:
        """Answer the next ``times`` deliveries (None: all) with ``status`` (None: as usual),
        after ``hang`` s, spread over ``drip`` s, or cut after its first ``cut_at`` bytes."""
        if status is not None and not 200 <= status <= 599:
            raise ValueError("status must be from 200 to 599")
        for name, seconds in (("hang", hang), ("drip", drip)):
            if not 0 <= seconds <= MAX_HANG_S:
                raise ValueError(f"{name} must be from 0 to {MAX_HANG_S:.0f} seconds")
        if cut_at is not None and cut_at < 0:
            raise ValueError("cut_at must be a number of bytes, 0 or more")
        with self._lock:
            self._fault = _Fault(status, retry_after, hang, drip, cut_at)
            self._times = times
            self._released.clear()

    def clear_faults(self) -> None:
        with self._lock:
            self._fault, self._times = None, None
        self._released.set()

    def release(self) -> None:
        """End any hang now (the server is stopping, or a test is done waiting)."""
        self._released.set()

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def accepted_ids(self) -> list[str | None]:
        """The ids of deliveries answered with a 2xx, in order (repeats show duplicates)."""
        return [r.webhook_id for r in self.received if r.answered and 200 <= r.answered < 300]

    def forget(self) -> None:
        with self._lock:
            self._received.clear()

    def as_json(self) -> dict[str, Any]:
        return {"received": [asdict(r) for r in self.received], "accepted_ids": self.accepted_ids()}

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            fault = self._fault
            if fault is not None and self._times is not None:
                self._times -= 1
                if self._times <= 0:
                    self._fault, self._times = None, None
            return fault

    # HTTP --------------------------------------------------------------------------------

    def handle(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        """Serve one request under ``/_fake/webhook`` on ``handler``."""
        method = handler.command
        if path == PATH and method == "POST":
            self._deliver(handler)
        elif path == PATH and method == "GET":
            _answer(handler, 200, self.as_json())
        elif path == PATH and method == "DELETE":
            self.forget()
            _answer(handler, 200, {"ok": True})
        elif path == FAULT_PATH and method == "PUT":
            self._set_fault(handler)
        else:
            _answer(handler, 404, {"error": f"POST/GET/DELETE {PATH}, PUT {FAULT_PATH}"})

    def _deliver(self, handler: BaseHTTPRequestHandler) -> None:
        body = _read(handler)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        verified = None if self._verify is None else self._verify(body, headers)
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body[:200].decode("utf-8", "replace")
        entry = Received(
            headers.get("webhook-id"),
            headers.get("webhook-timestamp"),
            headers.get("webhook-signature"),
            verified,
            parsed,
            len(body),
            time.monotonic(),
        )
        with self._lock:
            self._received.append(entry)
        fault = self._take_fault()
        status, extra = (204 if verified is not False else 401), {}
        if fault is not None:
            if fault.hang:
                self._released.wait(fault.hang)
            if fault.status is not None:
                status = fault.status
            if fault.retry_after is not None:
                extra["Retry-After"] = fault.retry_after
        # Recorded before the answer is written: a sender that has its answer may ask at once
        # what was accepted, and must find it there.
        entry.answered = status
        answer = None if status == 204 else {"status": status}
        try:
            if fault is not None and (fault.drip or fault.cut_at is not None):
                self._answer_badly(handler, fault, status, answer, extra)
            else:
                _answer(handler, status, answer, extra)
        except (BrokenPipeError, ConnectionResetError):
            entry.answered = None  # the sender went away first

    def _answer_badly(
        self,
        handler: BaseHTTPRequestHandler,
        fault: _Fault,
        status: int,
        body: object,
        headers: dict[str, str],
    ) -> None:
        """The answer cut after ``fault.cut_at`` bytes, a byte at a time over ``fault.drip``
        seconds (all at once on :meth:`release`); then the connection closes."""
        raw = _answer_bytes(handler, status, body, headers)[: fault.cut_at]
        handler.close_connection = True
        if not fault.drip:
            handler.wfile.write(raw)
            return
        pause = fault.drip / max(1, len(raw))
        for at in range(len(raw)):
            if self._released.wait(pause):
                handler.wfile.write(raw[at:])
                return
            handler.wfile.write(raw[at : at + 1])

    def _set_fault(self, handler: BaseHTTPRequestHandler) -> None:
        try:
            value = json.loads(_read(handler))
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            hang = float(value.get("hang") or 0)
            drip = float(value.get("drip") or 0)
            cut_at = value.get("cut_at")
            if cut_at is not None and (isinstance(cut_at, bool) or not isinstance(cut_at, int)):
                raise ValueError("cut_at must be a whole number of bytes")
            misbehaves = bool(hang or drip) or cut_at is not None
            status = value.get("status", None if misbehaves else 503)
            if status is None and not misbehaves:
                self.clear_faults()
            else:
                retry_after = value.get("retry_after")
                self.fail(
                    status,
                    times=value.get("times", 1),
                    retry_after=None if retry_after is None else str(retry_after),
                    hang=hang,
                    drip=drip,
                    cut_at=cut_at,
                )
        except (ValueError, TypeError) as error:
            _answer(handler, 400, {"error": str(error)})
            return
        _answer(handler, 200, {"ok": True})


def _read(handler: BaseHTTPRequestHandler) -> bytes:
    length = handler.headers.get("Content-Length", "0")
    size = int(length) if length.isdigit() else 0
    return handler.rfile.read(min(size, MAX_BODY_BYTES))


def _answer_bytes(
    handler: BaseHTTPRequestHandler, status: int, body: object, headers: dict[str, str]
) -> bytes:
    """A whole answer as it goes on the wire, as :func:`_answer` would send it."""
    content = b"" if body is None else json.dumps(body).encode()
    phrase = handler.responses.get(status, ("",))[0]
    lines = [
        f"{handler.protocol_version} {status} {phrase}".rstrip(),
        "Content-Type: application/json",
        f"Content-Length: {len(content)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + content


def _answer(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: object,
    headers: dict[str, str] | None = None,
) -> None:
    content = b"" if body is None else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(content)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(content)


class _Server(BoundedHTTPServer):
    receiver: WebhookReceiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read what was received from the receiver itself."""

    def _any(self) -> None:
        self.server.receiver.handle(self, self.path.split("?", 1)[0])

    do_GET = do_POST = do_PUT = do_DELETE = _any


class WebhookServer:
    """A receiver on its own loopback port (tests); ``fake-api`` mounts one instead."""

    def __init__(
        self, receiver: WebhookReceiver | None = None, *, host: str = LOOPBACK, port: int = 0
    ) -> None:
        self.receiver = receiver or WebhookReceiver()
        self.host, self.port = host, port
        self._serving: ServerThread | None = None

    @property
    def url(self) -> str:
        """Where to point ``REGIONSYNC_WEBHOOK_URL``."""
        return f"http://{self.host}:{self.port}{PATH}"

    def start(self) -> WebhookServer:
        # A held delivery (``hang``) keeps its connection up to MAX_HANG_S: the lifetime must
        # outlast it, as in the fake Kaleyra server that mounts a receiver too.
        server = _Server(
            (self.host, self.port),
            _Handler,
            max_connections=64,
            idle_timeout=30,
            lifetime=MAX_HANG_S + 60,
        )
        server.receiver = self.receiver
        self.port = server.port
        self._serving = ServerThread(server, name="fake-webhook", poll_interval=0.05)
        self._serving.start()
        return self

    def stop(self) -> None:
        self.receiver.release()
        if self._serving is not None:
            self._serving.stop()
        self._serving = None

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
