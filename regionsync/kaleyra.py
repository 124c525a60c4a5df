"""The Kaleyra source: one GET of "Get an Agent's Regions", classified, retried when worth it.

``requests``/``urllib3`` errors are translated into :mod:`regionsync.errors` here and only
here, and never chained: their text and attributes may hold the request (and so the key).
Failures are classified as docs/contract.md §1 says, by :func:`classify_failure`: the body
first, then the HTTP status.

The whole fetch (connect, headers, body, every attempt) ends within the budget
(:data:`FETCH_BUDGET_SECONDS`) whatever the server does. Socket timeouts bound each read, not
the sum of them, so a server that drips a byte every few seconds would hold a read forever:
:class:`_Deadline` shuts the connection's socket down when the time is up, which wakes any
blocked read. See README, *Daemon*.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog
import tenacity
import urllib3

from regionsync import __version__
from regionsync.errors import PermanentSourceError, SourceError, TransientSourceError, one_line
from regionsync.logs import redact
from regionsync.records import (
    MAX_BODY_BYTES,
    Snapshot,
    bad_body,
    classify_failure,
    decode_body,
    describe_size,
    parse_body,
)
from regionsync.settings import Settings

MAX_RESPONSE_BYTES = MAX_BODY_BYTES
CHUNK_BYTES = 64 * 1024
NOT_FOUND_HINT = (
    "check KALEYRA_SID, KALEYRA_POD or KALEYRA_BASE_URL, and KALEYRA_REGIONS_PATH "
    "(the URL must reach the agent's regions)"
)
#: The wall-clock budget of one fetch, all attempts and waits included.
FETCH_BUDGET_SECONDS = 90.0

logger = structlog.get_logger("regionsync.kaleyra")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard :meth:`KaleyraClient.fetch` tries before giving up.

    Defaults: at most 5 attempts and 90 s in all (attempts included, so a failing API is
    given up on well within two minutes); waits of 1 s doubling up to 20 s, plus up to
    ``backoff_initial`` of random jitter, or longer when Kaleyra sends ``Retry-After``;
    each attempt may take 5 s to connect and 30 s between bytes read, capped by the time
    left.
    """

    attempts: int = 5
    total_seconds: float = FETCH_BUDGET_SECONDS
    backoff_initial: float = 1.0
    backoff_max: float = 20.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        for name in ("total_seconds", "connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.backoff_initial <= self.backoff_max:
            raise ValueError("backoff must satisfy 0 <= backoff_initial <= backoff_max")


#: The policy of every fetch not given one: replaced only by tests that need a short budget.
DEFAULT_RETRY = RetryPolicy()


def seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


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


def _chain(error: BaseException) -> list[BaseException]:
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


def _root_reason(error: BaseException) -> str:
    """The OS-level reason of a requests error (e.g. "Connection refused")."""
    errors = [
        e
        for e in _chain(error)
        if isinstance(e, OSError) and not isinstance(e, requests.RequestException)
    ]
    reasons = [e.strerror for e in errors if e.strerror] + [str(e) for e in errors if str(e)]
    return reasons[0] if reasons else type(error).__name__


def _timed_out(error: BaseException) -> bool:
    return any(isinstance(e, TimeoutError | urllib3.exceptions.TimeoutError) for e in _chain(error))


_watching: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "regionsync_fetch_deadline", default=None
)


class _Deadline:
    """Shuts down every socket of one fetch when its time is up, from a timer thread.

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
        self._timer.name = "regionsync-fetch-deadline"
        self._token: contextvars.Token[_Deadline | None] | None = None

    def __enter__(self) -> _Deadline:
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


def _cut_short() -> bool:
    """Whether this fetch's deadline has cut its connection."""
    watching = _watching.get()
    return watching is not None and watching.fired


def _watched(sock: socket.socket) -> socket.socket:
    deadline = _watching.get()
    if deadline is not None:
        deadline.watch(sock)
    return sock


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _watched(super()._new_conn())


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _watched(super()._new_conn())


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections register their sockets with the fetch's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def _watched_session() -> requests.Session:
    session = requests.Session()
    for prefix in ("https://", "http://"):
        session.mount(prefix, _WatchedAdapter())
    return session


class _Attempts:
    """One :meth:`KaleyraClient.fetch`: its deadline, its waits, and why it stopped."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.started = time.monotonic()
        self.deadline = self.started + policy.total_seconds
        self.made = 0
        self.backoff = tenacity.wait_exponential(
            multiplier=policy.backoff_initial, max=policy.backoff_max
        ) + tenacity.wait_random(0, policy.backoff_initial)
        self.stopped_by = ""
        self.asked = 0.0
        self.left_then = 0.0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def wait(self, state: tenacity.RetryCallState) -> float:
        wait = min(self.policy.backoff_max, self.backoff(state))
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TransientSourceError) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        return wait

    def stop(self, state: tenacity.RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        left = self.left()
        asked = error.retry_after if isinstance(error, TransientSourceError) else None
        if state.attempt_number >= self.policy.attempts:
            self.stopped_by = "attempts"
        elif asked is not None and asked >= left:
            self.stopped_by, self.asked, self.left_then = "retry-after", asked, max(left, 0.0)
        elif state.upcoming_sleep >= left:
            self.stopped_by = "budget"
        return bool(self.stopped_by)

    def give_up(self, last: TransientSourceError, count: int) -> TransientSourceError:
        elapsed = time.monotonic() - self.started
        logger.warning(
            "fetch.gave_up",
            attempts=count,
            elapsed=round(elapsed, 3),
            code=last.code,
            status=last.status,
            reason=self.stopped_by,
        )
        tried = f"{count} attempt{'s' if count != 1 else ''} in {seconds(elapsed)} s"
        if self.stopped_by == "retry-after":
            message = (
                f"Kaleyra asked to retry after {seconds(self.asked)} s, more than the "
                f"{seconds(self.left_then)} s left; gave up after {tried}: {last}"
            )
        elif self.stopped_by == "budget":
            message = (
                f"{last} (gave up after {tried}: the "
                f"{seconds(self.policy.total_seconds)} s retry budget is spent)"
            )
        else:
            message = f"{last} (gave up after {tried})"
        return TransientSourceError(
            message, code=last.code, status=last.status, retry_after=last.retry_after
        )

    def before_sleep(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.warning(
            "fetch.attempt_failed",
            attempt=state.attempt_number,
            code=getattr(error, "code", None),
            status=getattr(error, "status", None),
            error=str(error),
            wait=round(state.upcoming_sleep, 3),
        )


class KaleyraClient:
    """Fetches the agent's regions; translates every failure into a :class:`SourceError`."""

    def __init__(
        self,
        settings: Settings,
        *,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        settings.require_kaleyra()
        assert settings.kaleyra_api_key is not None
        self.url = settings.regions_url
        self.retry = retry if retry is not None else DEFAULT_RETRY
        self.max_bytes = max_bytes
        self._key = settings.kaleyra_api_key
        self._own_session = session is None
        self._session = session if session is not None else _watched_session()

    def __repr__(self) -> str:
        return f"KaleyraClient(url={self.url!r}, retry={self.retry!r})"

    def __enter__(self) -> KaleyraClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._own_session:
            self._session.close()

    def fetch(self) -> Snapshot:
        """Fetch with retries; raises :class:`TransientSourceError` once it gives up."""
        attempts = _Attempts(self.retry)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientSourceError),
            wait=attempts.wait,
            stop=attempts.stop,
            before_sleep=attempts.before_sleep,
        )
        try:
            with _Deadline(attempts.deadline):
                return retrying(self._attempt, attempts.deadline, attempts)
        except tenacity.RetryError as error:
            last = error.last_attempt.exception()
            count = error.last_attempt.attempt_number
        assert isinstance(last, TransientSourceError)
        raise attempts.give_up(last, count)

    def fetch_once(self) -> Snapshot:
        """One attempt, classified, no retry."""
        deadline = time.monotonic() + self.retry.total_seconds
        with _Deadline(deadline):
            return self._attempt(deadline)

    def _attempt(self, deadline: float, attempts: _Attempts | None = None) -> Snapshot:
        number = 1
        if attempts is not None:
            attempts.made += 1
            number = attempts.made
        logger.debug("fetch.attempt", attempt=number, url=self.url)
        try:
            return self._get(deadline)
        except SourceError as error:
            self._redact(error)
            if isinstance(error, PermanentSourceError):
                logger.warning(
                    "fetch.attempt_failed",
                    attempt=number,
                    code=error.code,
                    status=error.status,
                    error=str(error),
                    wait=None,
                )
            raise

    def _redact(self, error: SourceError) -> None:
        """Guard against a server echoing the key back into a message."""
        key = self._key.reveal()
        error.args = tuple(
            redact(arg, (key,)) if isinstance(arg, str) else arg for arg in error.args
        )
        if error.code is not None:
            error.code = redact(error.code, (key,))

    def _headers(self) -> dict[str, str]:
        return {
            "api-key": self._key.reveal(),
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"regionsync/{__version__}",
        }

    def _get(self, deadline: float) -> Snapshot:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientSourceError("no time left to ask Kaleyra", code="timeout")
        timeout = (min(self.retry.connect_timeout, left), min(self.retry.read_timeout, left))
        failure: SourceError
        try:
            response = self._session.get(
                self.url,
                headers=self._headers(),
                timeout=timeout,
                allow_redirects=False,
                stream=True,
                verify=True,
            )
        except requests.RequestException as error:
            failure = self._over_budget(None) if _cut_short() else self._translate(error, timeout)
        else:
            with response:
                # A connection from a caller's session was made outside this deadline.
                watching = _watching.get()
                if watching is not None and self._own_session is False:
                    watching.watch(getattr(response.raw.connection, "sock", None))
                return self._read(response, deadline)
        raise failure

    def _over_budget(self, status: int | None) -> TransientSourceError:
        where = "answer" if status is None else f"answer (HTTP {status})"
        return TransientSourceError(
            f"Kaleyra's {where} took longer than the "
            f"{seconds(self.retry.total_seconds)} s budget; the connection was cut",
            code="timeout",
            status=status,
        )

    def _translate(
        self, error: requests.RequestException, timeout: tuple[float, float]
    ) -> SourceError:
        host = urlsplit(self.url).netloc
        reason = one_line(_root_reason(error))
        if isinstance(error, requests.exceptions.SSLError):
            return PermanentSourceError(f"TLS connection to {host} failed: {reason}", code="tls")
        if isinstance(error, requests.exceptions.ConnectTimeout):
            return TransientSourceError(
                f"could not connect to Kaleyra at {host} within {seconds(timeout[0])} s",
                code="timeout",
            )
        if isinstance(error, requests.Timeout):
            return TransientSourceError(
                f"Kaleyra at {host} did not answer within {seconds(timeout[1])} s", code="timeout"
            )
        if isinstance(error, requests.ConnectionError):
            return TransientSourceError(
                f"could not reach Kaleyra at {host}: {reason}", code="connection"
            )
        return PermanentSourceError(
            f"could not send the request to Kaleyra at {host}: {type(error).__name__}",
            code="request",
        )

    def _read(self, response: requests.Response, deadline: float) -> Snapshot:
        status = response.status_code
        where = f"HTTP {status}"
        if 300 <= status < 400:
            location = one_line(response.headers.get("Location", "nowhere"), limit=120)
            raise PermanentSourceError(
                f"Kaleyra answered HTTP {status} redirecting to {location}; redirects are "
                "not followed so the API key is not sent elsewhere (check KALEYRA_BASE_URL "
                "and KALEYRA_REGIONS_PATH)",
                code=f"HTTP {status}",
                status=status,
            )
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        content = self._content(response, deadline)
        body: Any = None
        problem = ""
        try:
            body = decode_body(content)
        except ValueError as error:
            problem = str(error)
        del content  # the decoded body holds what is needed; at 100,000 regions this is 25 MB

        failure = classify_failure(
            None if problem else body, status=status, where=where, reason=response.reason or ""
        )
        if failure is not None:
            if isinstance(failure, TransientSourceError):
                failure.retry_after = retry_after
            elif status == 404:
                failure.args = (f"{failure}; {NOT_FOUND_HINT}",)
            raise failure
        if problem:
            kind = one_line(response.headers.get("Content-Type", "no content type"), limit=60)
            raise bad_body(
                f"HTTP {status} with a body that is not JSON ({kind}): {problem}", status=status
            )
        try:
            return parse_body(body, source=self.url, received_at=datetime.now(UTC))
        except PermanentSourceError as error:
            error.status = status
            raise

    def _content(self, response: requests.Response, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length", "")
        status = response.status_code
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(status, f"it declares {declared} bytes")
        content = bytearray()
        failure: SourceError | None = None
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                content += chunk
                if len(content) > self.max_bytes:
                    raise self._too_large(status, "it kept coming")
                if time.monotonic() > deadline:
                    raise self._over_budget(status)
        except requests.RequestException as error:
            if _cut_short():
                failure = self._over_budget(status)
            elif _timed_out(error):
                failure = TransientSourceError(
                    f"Kaleyra stopped sending mid-answer (HTTP {status}): read timed out",
                    code="timeout",
                    status=status,
                )
            else:
                failure = TransientSourceError(
                    f"Kaleyra's answer broke off (HTTP {status}): {one_line(_root_reason(error))}",
                    code="connection",
                    status=status,
                )
        if failure is None and _cut_short():  # the cut can also look like a clean end
            failure = self._over_budget(status)
        if failure is not None:
            raise failure
        return bytes(content)

    def _too_large(self, status: int, detail: str) -> PermanentSourceError:
        return PermanentSourceError(
            f"Kaleyra's answer (HTTP {status}) is larger than {describe_size(self.max_bytes)}, "
            f"refused: {detail}",
            code="too-large",
            status=status,
        )
