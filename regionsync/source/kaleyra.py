"""The Kaleyra source: one GET of "Get an Agent's Regions", retried when worth it.

Transport errors come as :class:`~regionsync.httpclient.TransportError` kinds and become
:mod:`regionsync.errors` here, never chained: the foreign errors' text and attributes may
hold the request (and so the key).
What an answer means (its records, or the failure it reports) is
:func:`regionsync.source.answer.read_answer`'s to say.

The whole fetch (connect, headers, body, every attempt) ends within the budget
(:data:`FETCH_BUDGET_SECONDS`) whatever the server does: its connections are cut by a
:class:`~regionsync.httpclient.Deadline`. See docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import requests
import structlog

from regionsync import __version__, httpclient
from regionsync.errors import PermanentSourceError, SourceError, TransientSourceError, one_line
from regionsync.logs import redact
from regionsync.records import Snapshot
from regionsync.settings import KaleyraConfig
from regionsync.source.answer import MAX_BODY_BYTES, Origin, describe_size, read_answer

MAX_RESPONSE_BYTES = MAX_BODY_BYTES
CHUNK_BYTES = 64 * 1024
#: The wall-clock budget of one fetch, all attempts and waits included.
FETCH_BUDGET_SECONDS = 90.0

logger = structlog.get_logger("regionsync.source.kaleyra")


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


def _backoff(policy: RetryPolicy, attempt: int) -> float:
    """The wait after a failed attempt: exponential, plus jitter, capped."""
    exponential = policy.backoff_initial * 2 ** min(attempt - 1, 64)
    jitter = random.uniform(0, policy.backoff_initial)  # noqa: S311 - jitter, not a secret
    return min(policy.backoff_max, min(policy.backoff_max, float(exponential)) + jitter)


def _log_failure(error: SourceError, attempt: int, *, wait: float | None) -> None:
    logger.warning(
        "fetch.attempt_failed",
        attempt=attempt,
        code=error.code,
        status=error.status,
        error=str(error),
        wait=wait,
    )


def _give_up(
    last: TransientSourceError,
    attempts: int,
    elapsed: float,
    stopped_by: str,
    left: float,
    policy: RetryPolicy,
) -> TransientSourceError:
    """The last failure, saying why no attempt follows (``stopped_by``), and logged so."""
    logger.warning(
        "fetch.gave_up",
        attempts=attempts,
        elapsed=round(elapsed, 3),
        code=last.code,
        status=last.status,
        reason=stopped_by,
    )
    tried = f"{attempts} attempt{'s' if attempts != 1 else ''} in {seconds(elapsed)} s"
    if stopped_by == "retry-after":
        message = (
            f"Kaleyra asked to retry after {seconds(last.retry_after or 0.0)} s, more than the "
            f"{seconds(max(left, 0.0))} s left; gave up after {tried}: {last}"
        )
    elif stopped_by == "budget":
        message = (
            f"{last} (gave up after {tried}: the "
            f"{seconds(policy.total_seconds)} s retry budget is spent)"
        )
    else:
        message = f"{last} (gave up after {tried})"
    return TransientSourceError(
        message, code=last.code, status=last.status, retry_after=last.retry_after
    )


class KaleyraClient:
    """The Kaleyra API as a :class:`~regionsync.records.Source`: fetches the agent's regions,
    translating every failure into a :class:`SourceError`.

    Each fetch opens its own session (unless given one), so that every connection it uses
    is watched by its own deadline.
    """

    def __init__(
        self,
        config: KaleyraConfig,
        *,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.url = config.regions_url
        self.retry = retry if retry is not None else DEFAULT_RETRY
        self.max_bytes = max_bytes
        self._key = config.api_key
        self._credentials = config.credentials
        self._verify = httpclient.verify(config.ca_bundle)
        self._session = session

    def __repr__(self) -> str:
        return f"KaleyraClient(url={self.url!r}, retry={self.retry!r})"

    @property
    def description(self) -> str:
        return self.url

    def fetch(self) -> Snapshot:
        """Fetch, retrying transient failures within the policy's attempts and time budget;
        raises the last failure, worded to say why it gave up."""
        policy = self.retry
        started = time.monotonic()
        deadline = started + policy.total_seconds
        attempt = 0
        with httpclient.Deadline(deadline), self._session_for_fetch() as session:
            while True:
                attempt += 1
                try:
                    return self._attempt(session, attempt, deadline)
                except TransientSourceError as error:
                    last = error
                left = deadline - time.monotonic()
                asked = last.retry_after
                wait = max(_backoff(policy, attempt), asked or 0.0)
                if attempt >= policy.attempts:
                    stopped_by = "attempts"
                elif asked is not None and asked >= left:
                    stopped_by = "retry-after"
                elif wait >= left:
                    stopped_by = "budget"
                else:
                    _log_failure(last, attempt, wait=round(wait, 3))
                    time.sleep(wait)
                    continue
                elapsed = time.monotonic() - started
                raise _give_up(last, attempt, elapsed, stopped_by, left, policy)

    @contextlib.contextmanager
    def _session_for_fetch(self) -> Iterator[requests.Session]:
        if self._session is not None:
            yield self._session
            return
        with httpclient.watched_session() as session:
            yield session

    def _attempt(self, session: requests.Session, number: int, deadline: float) -> Snapshot:
        logger.debug("fetch.attempt", attempt=number, url=self.url)
        try:
            return self._get(session, deadline)
        except PermanentSourceError as error:
            _log_failure(error, number, wait=None)
            raise

    def _scrub(self, text: str) -> str:
        """Text the server controls, without the key should it echo it back."""
        return redact(text, (self._key.reveal(),))

    def _headers(self) -> dict[str, str]:
        return {
            "api-key": self._key.reveal(),
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"regionsync/{__version__}",
        }

    def _get(self, session: requests.Session, deadline: float) -> Snapshot:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientSourceError("no time left to ask Kaleyra", code="timeout")
        timeout = (min(self.retry.connect_timeout, left), min(self.retry.read_timeout, left))
        failure: SourceError
        try:
            with httpclient.translated():
                response = session.get(
                    self.url,
                    headers=self._headers(),
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                    verify=self._verify,
                )
        except httpclient.TransportError as error:
            failure = self._unanswered(error, timeout)
        else:
            with response:
                # A connection from a caller's session was made outside this deadline.
                if session is self._session:
                    httpclient.watch(getattr(response.raw.connection, "sock", None))
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

    def _reason(self, error: httpclient.TransportError) -> str:
        """The OS-level reason of a failed request (else the error's type), scrubbed."""
        return self._scrub(one_line(error.reason or error.raised))

    def _unanswered(
        self, error: httpclient.TransportError, timeout: tuple[float, float]
    ) -> SourceError:
        """How a request ended that got no whole head of an answer back."""
        host = urlsplit(self.url).netloc
        match error:
            case httpclient.DeadlineCut():
                return self._over_budget(None)
            case httpclient.TLSFailed():
                return PermanentSourceError(
                    f"TLS connection to {host} failed: "
                    f"{self._reason(error)}{httpclient.tls_hint(error)}",
                    code="tls",
                )
            case httpclient.ConnectTimedOut():
                return TransientSourceError(
                    f"could not connect to Kaleyra at {host} within {seconds(timeout[0])} s",
                    code="timeout",
                )
            case httpclient.ReadTimedOut():
                return TransientSourceError(
                    f"Kaleyra at {host} did not answer within {seconds(timeout[1])} s",
                    code="timeout",
                )
            case httpclient.CutShort():
                return TransientSourceError(
                    f"Kaleyra at {host}: {self._reason(error)}", code="connection"
                )
            case httpclient.ConnectionFailed():
                return TransientSourceError(
                    f"could not reach Kaleyra at {host}: {self._reason(error)}", code="connection"
                )
        return PermanentSourceError(
            f"could not send the request to Kaleyra at {host}: {error.raised}", code="request"
        )

    def _read(self, response: requests.Response, deadline: float) -> Snapshot:
        status = response.status_code
        if 300 <= status < 400:
            location = one_line(response.headers.get("Location", "nowhere"), limit=120)
            raise PermanentSourceError(
                f"Kaleyra answered HTTP {status} redirecting to {self._scrub(location)}; "
                "redirects are not followed so the API key is not sent elsewhere (check "
                "KALEYRA_BASE_URL and KALEYRA_REGIONS_PATH)",
                code=f"HTTP {status}",
                status=status,
            )
        origin = Origin(
            source=self.url,
            where=f"HTTP {status}",
            status=status,
            reason=response.reason or "",
            content_type=response.headers.get("Content-Type", ""),
            retry_after=httpclient.parse_retry_after(response.headers.get("Retry-After")),
            scrub=self._scrub,
            credentials=self._credentials,
        )
        # The content is not kept here: a large body is let go once decoded.
        return read_answer(self._content(response, deadline), origin, received_at=datetime.now(UTC))

    def _content(self, response: requests.Response, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length", "")
        status = response.status_code
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(status, f"it declares {declared} bytes")
        content = bytearray()
        failure: SourceError | None = None
        try:
            with httpclient.translated():
                for chunk in response.iter_content(CHUNK_BYTES):
                    content += chunk
                    if len(content) > self.max_bytes:
                        raise self._too_large(status, "it kept coming")
                    if time.monotonic() > deadline:
                        raise self._over_budget(status)
        except httpclient.DeadlineCut:
            failure = self._over_budget(status)
        except httpclient.ReadTimedOut:
            failure = TransientSourceError(
                f"Kaleyra stopped sending mid-answer (HTTP {status}): read timed out",
                code="timeout",
                status=status,
            )
        except httpclient.TransportError as error:
            failure = TransientSourceError(
                f"Kaleyra's answer broke off (HTTP {status}): {self._reason(error)}",
                code="connection",
                status=status,
            )
        if failure is None and httpclient.cut_short():  # the cut can look like a clean end
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
