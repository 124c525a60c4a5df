"""One webhook POST, signed per the Standard Webhooks specification, and how it ended.

Signature: ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with
the bytes of the ``whsec_`` secret, so any Standard Webhooks library verifies it.
``requests`` errors are translated into an :class:`Attempt` here and never chained or
quoted whole: their text may hold the URL, and a Slack webhook's URL is its credential.
Redirects are not followed (the body would go elsewhere).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

import requests

from regionsync import __version__
from regionsync.errors import one_line
from regionsync.kaleyra import parse_retry_after
from regionsync.logs import redact
from regionsync.settings import Secret, decode_webhook_secret

#: At most this much of a receiver's answer is read (to quote a short reason from it).
MAX_ANSWER_BYTES = 4096


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@dataclass(frozen=True)
class Attempt:
    """How one POST ended. ``retry`` is False for a delivery (or a definite refusal)."""

    delivered: bool
    retry: bool
    error: str | None = None
    status: int | None = None
    retry_after: float | None = None


class WebhookClient:
    """POSTs bodies to the configured URL; never raises for what the receiver does."""

    def __init__(
        self, url: Secret, secret: Secret | None, *, session: requests.Session | None = None
    ) -> None:
        self._url = url
        self._key = decode_webhook_secret(secret.reveal()) if secret is not None else None
        self._secrets = tuple(s.reveal() for s in (url, secret) if s is not None)
        parts = urlsplit(url.reveal())
        self.host = parts.netloc
        self._session = session if session is not None else requests.Session()

    def __repr__(self) -> str:
        return f"WebhookClient(host={self.host!r})"

    def close(self) -> None:
        self._session.close()

    def headers(self, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        stamp = int(time.time()) if timestamp is None else timestamp
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"regionsync/{__version__}",
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, stamp, body)
        return headers

    def post(self, msg_id: str, body: bytes, *, connect: float, read: float) -> Attempt:
        """One attempt with these timeouts (the caller caps them by its deadline)."""
        try:
            response = self._session.post(
                self._url.reveal(),
                data=body,
                headers=self.headers(msg_id, body),
                timeout=(connect, read),
                allow_redirects=False,
                stream=True,
                verify=True,
            )
        except requests.exceptions.SSLError:
            return Attempt(False, False, f"TLS connection to {self.host} failed")
        except requests.exceptions.ConnectTimeout:
            return Attempt(False, True, f"could not connect to {self.host} within {connect:.1f} s")
        except requests.Timeout:
            return Attempt(False, True, f"{self.host} did not answer within {read:.1f} s")
        except requests.ConnectionError as error:
            return Attempt(False, True, f"could not reach {self.host}: {_reason(error)}")
        except requests.RequestException as error:
            return Attempt(False, False, f"could not send to {self.host}: {type(error).__name__}")
        with response:
            return self._classify(response)

    def _classify(self, response: requests.Response) -> Attempt:
        status = response.status_code
        if 200 <= status < 300:
            return Attempt(True, False, status=status)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        said = self._answer(response)
        error = f"{self.host} answered HTTP {status} {phrase}".rstrip() + (
            f": {said}" if said else ""
        )
        if 300 <= status < 400:
            return Attempt(False, False, error + " (redirects are not followed)", status)
        if status == 429 or status >= 500:
            after = parse_retry_after(response.headers.get("Retry-After"))
            return Attempt(False, True, error, status, after)
        return Attempt(False, False, error, status)

    def _answer(self, response: requests.Response) -> str:
        """The start of a short text answer (Slack says ``invalid_payload``), scrubbed."""
        if not response.headers.get("Content-Type", "").startswith(("text/", "application/json")):
            return ""
        try:
            raw = response.raw.read(MAX_ANSWER_BYTES, decode_content=True)
        except (requests.RequestException, OSError, ValueError):
            return ""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
        return redact(one_line(text, limit=120), self._secrets)


def _reason(error: BaseException) -> str:
    """The OS-level reason of a connection error, e.g. "Connection refused"."""
    seen: list[BaseException] = []
    stack: list[BaseException] = [error]
    while stack:
        current = stack.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        foreign = isinstance(current, OSError) and not isinstance(
            current, requests.RequestException
        )
        if foreign and isinstance(current, OSError) and current.strerror:
            return one_line(current.strerror, limit=80)
        for nested in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(nested, BaseException):
                stack.append(nested)
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return "connection failed"
