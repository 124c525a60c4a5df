"""Outbound HTTP, for Kaleyra and webhooks: exchanges that end by a wall-clock deadline,
answers that must arrive whole, the one boundary where their errors are translated, and the
CA bundle the settings name.

Socket timeouts bound each read, not the sum of them, so a server that drips a byte every
few seconds would hold a read forever: :class:`Deadline` shuts the connection's socket down
when the time is up, which wakes any blocked read, in the caller's own thread. Nothing is
left running once the ``with`` block ends, so no abandoned thread can hold a lock or write
a result after its caller moved on. See docs/reliability.md and docs/notifications.md.

``http.client`` takes a head (status line and headers) that ends at a closed connection
for a whole one (``HTTP/1.1 200 OK`` then nothing reads as an empty 200), and urllib3 only
logs a head that does not parse. The sessions here refuse both (:class:`BrokenHead`); a
body shorter than its ``Content-Length`` or a broken chunked body is refused by urllib3.

Inside :func:`translated`, every ``requests``, urllib3, ``ssl`` or socket error is raised as
one kind of :class:`TransportError`, looked up in :data:`FOREIGN_ERRORS`: each client words
its own message from the kind, and neither repeats the walk over an error's causes.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
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


def reason(error: BaseException) -> str | None:
    """The OS-level reason behind an error ("Connection refused"), if one is given: the
    socket's or TLS's own words, never a ``requests`` error's text (which holds the URL)."""
    found = [
        e
        for e in error_chain(error)
        if isinstance(e, OSError) and not isinstance(e, requests.RequestException)
    ]
    said = [e.strerror for e in found if e.strerror] + [str(e) for e in found if str(e)]
    return said[0] if said else None


class TransportError(Exception):
    """An exchange that got no whole answer, as one of the kinds below; :func:`translated`
    raises it ``from`` the foreign error.

    ``reason`` is the OS-level reason, if any (:func:`reason`); ``raised`` names the foreign
    error's type. Neither quotes the foreign error's text, which may hold the URL (a Slack
    webhook's credential): each client words its own error from the kind and raises that
    unchained.
    """

    def __init__(self, reason: str | None, raised: str) -> None:
        super().__init__(reason or raised)
        self.reason = reason
        self.raised = raised


class DeadlineCut(TransportError):
    """The :class:`Deadline` cut the connection: whatever broke, the time was up."""


class TLSFailed(TransportError):
    """The TLS handshake failed (an untrusted certificate? :func:`tls_hint`)."""


class ConnectTimedOut(TransportError):
    """No connection within the connect timeout."""


class ReadTimedOut(TransportError):
    """Connected, but the server sent nothing for the read timeout."""


class CutShort(TransportError):
    """The answer ended before it was whole: its head (:class:`BrokenHead`) or its body."""


class ConnectionFailed(TransportError):
    """The server could not be reached, or the connection broke."""


class NotSent(TransportError):
    """The request could not be sent (a bad URL or header): a retry fails alike."""


#: What each foreign error means, as httpx's ``map_httpcore_exceptions``: an error takes the
#: kind of its most specific type listed here (the first in its method resolution order), so
#: a subclass listed overrides its base (``NewConnectionError`` is a ``ConnectTimeoutError``
#: to urllib3, but a refused connection to us).
FOREIGN_ERRORS: dict[type[BaseException], type[TransportError]] = {
    requests.exceptions.SSLError: TLSFailed,
    requests.exceptions.ConnectTimeout: ConnectTimedOut,
    requests.exceptions.Timeout: ReadTimedOut,
    requests.exceptions.ChunkedEncodingError: CutShort,
    requests.exceptions.ConnectionError: ConnectionFailed,
    requests.exceptions.RequestException: NotSent,
    urllib3.exceptions.SSLError: TLSFailed,
    urllib3.exceptions.NewConnectionError: ConnectionFailed,
    urllib3.exceptions.ConnectTimeoutError: ConnectTimedOut,
    urllib3.exceptions.TimeoutError: ReadTimedOut,
    urllib3.exceptions.ProtocolError: CutShort,
    urllib3.exceptions.LocationValueError: NotSent,
    urllib3.exceptions.ProxySchemeUnsupported: NotSent,
    urllib3.exceptions.HTTPError: ConnectionFailed,
    BrokenHead: CutShort,
    ssl.SSLError: TLSFailed,
    TimeoutError: ReadTimedOut,
    OSError: ConnectionFailed,
}

#: What a :class:`ConnectionFailed` error wraps, when that says more: requests reports a head
#: cut short, and a body read that timed out, as a plain ``ConnectionError``.
WRAPPED_ERRORS: dict[type[BaseException], type[TransportError]] = {
    BrokenHead: CutShort,
    urllib3.exceptions.ReadTimeoutError: ReadTimedOut,
}

_FOREIGN = tuple(FOREIGN_ERRORS)


def kind_of(
    error: type[BaseException], table: dict[type[BaseException], type[TransportError]]
) -> type[TransportError] | None:
    """The kind ``table`` gives an error of this type: its most specific type listed."""
    return next((table[t] for t in error.__mro__ if t in table), None)


def _translate(error: BaseException) -> TransportError:
    """The :class:`TransportError` a foreign error (one of :data:`FOREIGN_ERRORS`) means."""
    raised = type(error).__name__
    if cut_short():
        return DeadlineCut(reason(error), raised)
    kind = kind_of(type(error), FOREIGN_ERRORS) or ConnectionFailed
    if kind is ConnectionFailed:
        for inner in error_chain(error)[1:]:
            wrapped = kind_of(type(inner), WRAPPED_ERRORS)
            if wrapped is not None:
                return wrapped(reason(inner), raised)
    return kind(reason(error), raised)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Inside the block, a foreign error is raised as its :class:`TransportError` kind,
    ``from`` it; any other error passes untouched."""
    try:
        yield
    except _FOREIGN as error:
        raise _translate(error) from error


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds from now (delta-seconds or an HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        delay = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = (when - (now or datetime.now(UTC))).total_seconds()
    if delay != delay:  # NaN
        return None
    return max(0.0, delay)


def tls_hint(error: BaseException) -> str:
    """What to do when TLS failed because the server's certificate is not trusted."""
    if not any(isinstance(e, ssl.SSLCertVerificationError) for e in error_chain(error)):
        return ""
    return (
        " (a private or corporate CA? name its PEM bundle in SSL_CERT_FILE or "
        "REQUESTS_CA_BUNDLE: see docs/operations.md, Trusting a private CA)"
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
