"""Outbound HTTP, for Kaleyra and webhooks: exchanges that end by a wall-clock deadline,
answers that must arrive whole, and the CA bundle the settings name.

Socket timeouts bound each read, not the sum of them, so a server that drips a byte every
few seconds would hold a read forever: :class:`Deadline` shuts the connection's socket down
when the time is up, which wakes any blocked read, in the caller's own thread. Nothing is
left running once the ``with`` block ends, so no abandoned thread can hold a lock or write
a result after its caller moved on. See README, *Daemon* and *Notifications*.

``http.client`` takes a head (status line and headers) that ends at a closed connection
for a whole one (``HTTP/1.1 200 OK`` then nothing reads as an empty 200), and urllib3 only
logs a head that does not parse. The sessions here refuse both (:class:`BrokenHead`); a
body shorter than its ``Content-Length`` or a broken chunked body is refused by urllib3.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import socket
import ssl
import threading
import time
from typing import Any

import requests
import urllib3

from regionsync.settings import CABundle


class BrokenHead(ConnectionResetError, http.client.HTTPException):
    """The head of an answer was cut short or does not parse; ``strerror`` says which.

    Both an ``OSError`` and an ``HTTPException``, as ``http.client.RemoteDisconnected`` is:
    urllib3 and requests then report it as a broken connection, its text as the reason.
    """

    def __init__(self, what: str) -> None:
        super().__init__(0, what)


_watching: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "regionsync_http_deadline", default=None
)


class Deadline:
    """Shuts down every socket of the exchanges in its ``with`` block when its time is up,
    from a timer thread that does nothing else and is joined on exit.

    A shut-down socket makes a blocked ``recv`` return at once, so the headers and the body
    end by the deadline whatever the server sends (the TCP connect and the TLS handshake have
    the connect timeout, capped by the time left, as a deadline of their own); :attr:`fired`
    tells the reader that the cut was ours. Each socket is watched through a duplicate of its
    descriptor, taken as soon as it connects: shutting the duplicate down shuts the
    connection down whatever wraps the original, and the duplicate is ours to close, so a
    descriptor reused elsewhere is never hit.
    """

    def __init__(self, at: float) -> None:
        self.at = at
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, at - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.name = "regionsync-http-deadline"
        self._token: contextvars.Token[Deadline | None] | None = None

    def __enter__(self) -> Deadline:
        self._token = _watching.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._timer.join()
        if self._token is not None:
            _watching.reset(self._token)
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()

    def watch(self, sock: socket.socket | None) -> None:
        """Cut this socket's connection at the deadline (at once if it has passed)."""
        if sock is None:
            return
        try:
            duplicate = sock.dup()
        except OSError:
            return  # already closed: nothing left to cut
        with self._lock:
            if not self.fired:
                self._sockets.append(duplicate)
                return
        _cut(duplicate)
        duplicate.close()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _cut(sock)


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def cut_short() -> bool:
    """Whether the current deadline has cut its connections."""
    watching = _watching.get()
    return watching is not None and watching.fired


def watch(sock: socket.socket | None) -> None:
    """Put a socket connected elsewhere (a caller's session) under the current deadline."""
    watching = _watching.get()
    if watching is not None:
        watching.watch(sock)


def error_chain(error: BaseException) -> list[BaseException]:
    """An error and everything nested in it (causes, contexts, urllib3 reasons, args)."""
    found: list[BaseException] = []
    stack = [error]
    while stack:
        current = stack.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        for nested in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(nested, BaseException):
                stack.append(nested)
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return found


def broken_head(error: BaseException) -> BrokenHead | None:
    """The :class:`BrokenHead` behind a requests error, if that is what it was."""
    return next((e for e in error_chain(error) if isinstance(e, BrokenHead)), None)


def tls_hint(error: BaseException) -> str:
    """What to do when TLS failed because the server's certificate is not trusted."""
    if not any(isinstance(e, ssl.SSLCertVerificationError) for e in error_chain(error)):
        return ""
    return (
        " (a private or corporate CA? name its PEM bundle in SSL_CERT_FILE or "
        "REQUESTS_CA_BUNDLE: see README, Trusting a private CA)"
    )


class _LastLine:
    """A reader that remembers the last line read: the head's end, for :class:`_WholeHead`."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self.last = b""

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._reader.readline(limit)
        self.last = line
        return line


class _WholeHead(http.client.HTTPResponse):
    """An answer whose head must parse and end with its blank line, not a closed connection."""

    def begin(self) -> None:
        if self.headers is not None:
            return  # begun already
        reader = self.fp
        lines = _LastLine(reader)
        self.fp = lines  # begin() reads the head line by line, and nothing else
        try:
            super().begin()
        finally:
            self.fp = reader
        if lines.last not in (b"\r\n", b"\n"):
            raise BrokenHead("the answer was cut short: the connection closed in its headers")
        try:
            urllib3.util.response.assert_header_parsing(self.msg)
        except (urllib3.exceptions.HeaderParsingError, TypeError):
            raise BrokenHead("the answer's headers are malformed") from None


def _watched(sock: socket.socket) -> socket.socket:
    watch(sock)
    return sock


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _WholeHead

    def _new_conn(self) -> socket.socket:
        return _watched(super()._new_conn())


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _WholeHead

    def _new_conn(self) -> socket.socket:
        return _watched(super()._new_conn())


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections (direct, or through an HTTP proxy) register their
    sockets with the current deadline and refuse answers cut short."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager


def watched_session() -> requests.Session:
    """A session for one exchange (or one fetch): open it inside the :class:`Deadline`."""
    session = requests.Session()
    for prefix in ("https://", "http://"):
        session.mount(prefix, _WatchedAdapter())
    return session


def verify(bundle: CABundle | None) -> str | bool:
    """requests' ``verify``: the configured CA bundle, else its default (certifi's bundle,
    or ``REQUESTS_CA_BUNDLE`` read by requests itself)."""
    return True if bundle is None else str(bundle.path)
