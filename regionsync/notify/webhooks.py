"""One webhook POST, signed per the Standard Webhooks specification, and how it ended.

Signature: ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with
the bytes of the ``whsec_`` secret, so any Standard Webhooks library verifies it.
Transport errors come as :class:`~regionsync.httpclient.TransportError` kinds and become an
:class:`Attempt` here, never chained or quoted whole: the foreign errors' text may hold the
URL, and a Slack webhook's URL is its credential.
Redirects are not followed (the body would go elsewhere).

Each attempt is over when :meth:`WebhookClient.post` returns: its connection is cut at the
caller's deadline (:class:`~regionsync.httpclient.Deadline`), and a 2xx counts only once the
whole answer has arrived (a head or body cut short is a failed attempt, retried).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import time
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

import requests

from regionsync import __version__, httpclient
from regionsync.errors import one_line
from regionsync.logs import redact
from regionsync.settings import CABundle, Secret, decode_webhook_secret

#: At most this much of a receiver's answer is read (to quote a short reason from it, or
#: to see a 2xx answer end as it said it would).
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


@dataclass(frozen=True)
class Reach:
    """Whether the receiver could be reached, and one line saying how it went."""

    ok: bool
    detail: str


class WebhookClient:
    """POSTs bodies to the configured URL; never raises for what the receiver does."""

    def __init__(
        self, url: Secret, secret: Secret | None, *, ca_bundle: CABundle | None = None
    ) -> None:
        self._url = url
        self._key = decode_webhook_secret(secret.reveal()) if secret is not None else None
        self._secrets = tuple(s.reveal() for s in (url, secret) if s is not None)
        parts = urlsplit(url.reveal())
        self.host = parts.netloc
        self._verify = httpclient.verify(ca_bundle)

    def __repr__(self) -> str:
        return f"WebhookClient(host={self.host!r})"

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

    def post(
        self, msg_id: str, body: bytes, *, connect: float, read: float, deadline: float
    ) -> Attempt:
        """One attempt with these timeouts, over by ``deadline`` (``time.monotonic()``) at the
        latest, whatever the receiver does: no thread or connection of it outlives the call."""
        with httpclient.Deadline(deadline), httpclient.watched_session() as session:
            try:
                with httpclient.translated():
                    response = session.post(
                        self._url.reveal(),
                        data=body,
                        headers=self.headers(msg_id, body),
                        timeout=(connect, read),
                        allow_redirects=False,
                        stream=True,
                        verify=self._verify,
                    )
            except httpclient.TransportError as error:
                return self._unanswered(error, connect, read)
            with response:
                attempt = self._classify(response)
            if httpclient.cut_short():  # the cut can also look like the answer's end
                return self._too_late()
            return attempt

    def _unanswered(self, error: httpclient.TransportError, connect: float, read: float) -> Attempt:
        """How an attempt ended that got no whole head of an answer back."""
        match error:
            case httpclient.DeadlineCut():
                return self._too_late()
            case httpclient.TLSFailed():
                reason = self._reason(error) + httpclient.tls_hint(error)
                return Attempt(False, False, f"TLS connection to {self.host} failed: {reason}")
            case httpclient.ConnectTimedOut():
                return Attempt(
                    False, True, f"could not connect to {self.host} within {connect:.1f} s"
                )
            case httpclient.ReadTimedOut():
                return Attempt(False, True, f"{self.host} did not answer within {read:.1f} s")
            case httpclient.CutShort():
                return Attempt(False, True, f"{self.host}: {self._reason(error)}")
            case httpclient.ConnectionFailed():
                return Attempt(False, True, f"could not reach {self.host}: {self._reason(error)}")
        return Attempt(False, False, f"could not send to {self.host}: {error.raised}")

    def _reason(self, error: httpclient.TransportError) -> str:
        """The OS-level reason of a failed attempt, e.g. "Connection refused", scrubbed."""
        said = one_line(error.reason, limit=80) if error.reason else "connection failed"
        return redact(said, self._secrets)

    def _too_late(self) -> Attempt:
        return Attempt(
            False,
            True,
            f"{self.host} had not answered in full by the delivery deadline; "
            "the connection was cut",
        )

    def reach(self, seconds: float) -> Reach:
        """Connect to the receiver (and negotiate TLS for https) within ``seconds``, then
        hang up: ``check``'s probe, which sends no request, so nothing can be delivered.

        TLS trusts what the POST would (the configured CA bundle, else requests'); a URL
        that goes through a proxy is not probed, since the proxy, not this host, connects.
        """
        url = self._url.reveal()
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        with requests.Session() as session:  # reads the proxy and CA settings, opens nothing
            found = session.merge_environment_settings(url, {}, None, self._verify, None)
        if requests.utils.select_proxy(url, found["proxies"]):
            return Reach(True, "not probed: it is sent through a proxy")
        deadline = time.monotonic() + seconds
        stage = f"cannot connect to {where}"
        try:
            with socket.create_connection((host, port), timeout=seconds) as raw:
                if parts.scheme != "https":
                    return Reach(True, f"{where} accepts connections (nothing sent)")
                stage = f"TLS handshake with {where} failed"
                raw.settimeout(max(deadline - time.monotonic(), 0.001))
                with _tls_context(found["verify"]).wrap_socket(raw, server_hostname=host):
                    return Reach(True, f"TLS handshake with {where} succeeded (nothing sent)")
        except ssl.SSLCertVerificationError as error:
            return Reach(
                False, f"{stage}: {one_line(error.verify_message or 'untrusted', limit=80)}"
            )
        except TimeoutError:
            return Reach(False, f"{stage}: no answer within {seconds:g} s")
        except ssl.SSLError as error:
            return Reach(False, f"{stage}: {one_line(error.reason or 'TLS error', limit=80)}")
        except OSError as error:
            return Reach(False, f"{stage}: {one_line(error.strerror or 'failed', limit=80)}")

    def _classify(self, response: requests.Response) -> Attempt:
        status = response.status_code
        if 200 <= status < 300:
            broken = _read_to_end(response)
            if broken is not None:
                error = f"{self.host}: the answer was cut short: HTTP {status}, then {broken}"
                return Attempt(False, True, error, status)
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
            after = httpclient.parse_retry_after(response.headers.get("Retry-After"))
            return Attempt(False, True, error, status, after)
        return Attempt(False, False, error, status)

    def _answer(self, response: requests.Response) -> str:
        """The start of a short text answer (Slack says ``invalid_payload``), scrubbed."""
        if not response.headers.get("Content-Type", "").startswith(("text/", "application/json")):
            return ""
        try:
            with httpclient.translated():
                raw = response.raw.read(MAX_ANSWER_BYTES, decode_content=True)
        except (httpclient.TransportError, ValueError):
            return ""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
        return redact(one_line(text, limit=120), self._secrets)


def _tls_context(verify: object) -> ssl.SSLContext:
    """The certificates ``requests`` would trust: its ``verify`` path, else certifi's."""
    trusted = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
    if os.path.isdir(trusted):
        return ssl.create_default_context(capath=trusted)
    return ssl.create_default_context(cafile=trusted)


def _read_to_end(response: requests.Response) -> str | None:
    """Read a 2xx answer's body to its end (or past :data:`MAX_ANSWER_BYTES`, enough to
    know it is not cut short); None when it ended as its head said, else how it broke."""
    read = 0
    try:
        with httpclient.translated():
            for chunk in response.raw.stream(1024, decode_content=False):
                read += len(chunk)
                if read > MAX_ANSWER_BYTES:
                    break
    except httpclient.CutShort:
        return "the connection closed before the end of its body"
    except httpclient.TransportError as error:
        return f"its body broke off ({error.raised})"
    return None
