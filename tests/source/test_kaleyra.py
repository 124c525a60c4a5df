"""The HTTP client against the fake Kaleyra over loopback: classification, retries, secrecy."""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
import structlog

from regionsync import __version__
from regionsync.errors import PermanentSourceError, SourceError, TransientSourceError
from regionsync.settings import Settings
from regionsync.source.kaleyra import KaleyraClient, RetryPolicy
from regionsync.testing.fakeapi import FakeKaleyra
from tests.support.fakeapi_fixtures import (
    API_KEY,
    FAST,
    client_for_fake,
    exception_texts,
    settings_for_fake,
)


def failing_fetch(fake: FakeKaleyra, retry: RetryPolicy = FAST) -> SourceError:
    with pytest.raises(SourceError) as caught:
        client_for_fake(fake, retry).fetch()
    return caught.value


# Success -------------------------------------------------------------------------------


def test_fetch_returns_the_validated_snapshot(fake: FakeKaleyra) -> None:
    before = datetime.now(UTC)
    snapshot = client_for_fake(fake).fetch()
    assert len(snapshot.records) == snapshot.fetched == 12
    assert snapshot.source == f"{fake.url}/v1/demo/rcs/agent/agent_regions"
    assert before <= snapshot.received_at <= datetime.now(UTC)
    assert len(fake.requests) == 1


def test_request_carries_the_documented_headers(fake: FakeKaleyra) -> None:
    client_for_fake(fake).fetch()
    (request,) = fake.requests
    assert request.method == "GET"
    assert request.path == "/v1/demo/rcs/agent/agent_regions"
    assert request.headers["api-key"] == API_KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"] == f"regionsync/{__version__}"


def test_the_prose_path_is_a_setting(fake: FakeKaleyra) -> None:
    api = client_for_fake(fake, KALEYRA_REGIONS_PATH="/v1/{sid}/rcs/agent_regions")
    assert len(api.fetch().records) == 12
    assert fake.requests[0].path == "/v1/demo/rcs/agent_regions"


def test_transient_failures_are_retried_until_success(fake: FakeKaleyra) -> None:
    fake.fail("rcs502", times=2)
    assert len(client_for_fake(fake).fetch().records) == 12
    assert len(fake.requests) == 3


def test_records_are_validated_on_the_way_in(fake: FakeKaleyra) -> None:
    fake.set_regions([{"id": "ok", "carrier_enabled": True}, {"id": "bad", "carrier_enabled": 1}])
    snapshot = client_for_fake(fake).fetch()
    assert [r.id for r in snapshot.records] == ["ok"]
    assert snapshot.held_ids == frozenset({"bad"})


# Classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "code", "status"),
    [
        ("rcs601", "RCS601", 400),
        ("rcs601-200", "RCS601", 200),
        ("rcs601-500", "RCS601", 500),
        ("rcs405", "RCS405", 405),
        ("rcs701", "RCS701", 400),
        ("http401", "UNAUTHORIZED", 401),
        ("http403", "FORBIDDEN", 403),
        ("http404", "NOT_FOUND", 404),
        ("http418", "I_M_A_TEAPOT", 418),
        ("html200", "bad-body", 200),
        ("malformed", "bad-body", 200),
        ("truncated", "bad-body", 200),
        ("no-data", "bad-body", 200),
        ("error-200", "UNEXPECTED", 200),
        ("redirect", "HTTP 302", 302),
        ("huge", "too-large", 200),
    ],
)
def test_permanent_failures_are_not_retried(
    fake: FakeKaleyra, mode: str, code: str, status: int
) -> None:
    fake.fail(mode)
    error = failing_fetch(fake)
    assert isinstance(error, PermanentSourceError)
    assert (error.code, error.status) == (code, status)
    assert len(fake.requests) == 1
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("mode", "code", "status"),
    [
        ("rcs502", "RCS502", 500),
        ("rcs502-200", "RCS502", 200),
        ("rcs502-502", "RCS502", 502),
        ("rcs500", "RCS500", 500),
        ("http429", "TOO_MANY_REQUESTS", 429),
        ("http500", "INTERNAL_SERVER_ERROR", 500),
        ("http503", "SERVICE_UNAVAILABLE", 503),
        ("html500", "HTTP 500", 500),
        ("drop", "connection", None),
    ],
)
def test_transient_failures_give_up_after_the_attempts(
    fake: FakeKaleyra, mode: str, code: str, status: int | None
) -> None:
    fake.fail(mode)
    error = failing_fetch(fake)
    assert isinstance(error, TransientSourceError)
    assert (error.code, error.status) == (code, status)
    assert len(fake.requests) == FAST.attempts
    assert f"gave up after {FAST.attempts} attempts" in str(error)


def test_message_names_the_kaleyra_code(fake: FakeKaleyra) -> None:
    fake.fail("rcs601")
    assert str(failing_fetch(fake)) == (
        "Kaleyra refused: RCS601 RCS Channel is not enabled for this User (HTTP 400)"
    )


def test_bad_credentials_are_permanent_and_say_which_settings(fake: FakeKaleyra) -> None:
    settings = Settings.from_env(
        {"KALEYRA_BASE_URL": fake.url, "KALEYRA_SID": "demo", "KALEYRA_API_KEY": "wrong"}
    )
    with pytest.raises(PermanentSourceError) as caught:
        KaleyraClient(settings.require_kaleyra(), retry=FAST).fetch()
    assert caught.value.status == 401
    assert "check KALEYRA_API_KEY and KALEYRA_SID" in str(caught.value)
    assert len(fake.requests) == 1


def test_unknown_sid_is_permanent(fake: FakeKaleyra) -> None:
    with pytest.raises(PermanentSourceError) as caught:
        client_for_fake(fake, KALEYRA_SID="other").fetch()
    assert caught.value.status == 404


def test_redirect_is_not_followed(fake: FakeKaleyra) -> None:
    fake.fail("redirect")
    error = failing_fetch(fake)
    assert "not followed" in str(error)
    assert [r.path for r in fake.requests] == ["/v1/demo/rcs/agent/agent_regions"]


def test_declared_size_over_the_cap_is_refused_unread(fake: FakeKaleyra) -> None:
    api = KaleyraClient(settings_for_fake(fake).require_kaleyra(), retry=FAST, max_bytes=1000)
    with pytest.raises(PermanentSourceError, match="larger than 1000 bytes") as caught:
        api.fetch()
    assert "declares" in str(caught.value)
    assert caught.value.code == "too-large"


def test_streamed_body_over_the_cap_is_refused(fake: FakeKaleyra) -> None:
    fake.fail("huge")
    error = failing_fetch(fake)
    assert "larger than 50 MiB" in str(error)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_connection_refused_is_transient() -> None:
    settings = Settings.from_env(
        {
            "KALEYRA_BASE_URL": f"http://127.0.0.1:{free_port()}",
            "KALEYRA_SID": "demo",
            "KALEYRA_API_KEY": API_KEY,
        }
    )
    with pytest.raises(TransientSourceError) as caught:
        KaleyraClient(settings.require_kaleyra(), retry=FAST).fetch()
    assert caught.value.code == "connection"
    assert "Connection refused" in str(caught.value)


def test_tls_failure_is_permanent(fake: FakeKaleyra) -> None:
    https_url = fake.url.replace("http://", "https://")
    with pytest.raises(PermanentSourceError) as caught:
        client_for_fake(fake, KALEYRA_BASE_URL=https_url).fetch()
    assert caught.value.code == "tls"


# Time ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_retry_after_is_honoured(fake: FakeKaleyra) -> None:
    fake.fail("http429:retry-after=1", times=1)
    client_for_fake(fake).fetch()
    first, second = fake.requests
    assert second.time - first.time >= 0.95


def test_retry_after_longer_than_the_time_left_gives_up_at_once(fake: FakeKaleyra) -> None:
    fake.fail("http503:retry-after=300")
    started = time.monotonic()
    error = failing_fetch(fake, RetryPolicy(total_seconds=42, backoff_initial=0.01))
    assert time.monotonic() - started < 2
    assert len(fake.requests) == 1
    assert isinstance(error, TransientSourceError)
    assert str(error).startswith("Kaleyra asked to retry after 300 s, more than the 42 s left")
    assert error.retry_after == 300


@pytest.mark.slow
def test_slow_answers_time_out_within_the_total_budget(fake: FakeKaleyra) -> None:
    fake.fail("slow:30")
    policy = RetryPolicy(attempts=10, total_seconds=1.0, backoff_initial=0.01, read_timeout=30)
    started = time.monotonic()
    error = failing_fetch(fake, policy)
    assert time.monotonic() - started < 2.5
    assert error.code == "timeout"
    assert "retry budget is spent" in str(error)


def test_persistent_failures_give_up_within_the_total_budget(fake: FakeKaleyra) -> None:
    fake.fail("rcs502")
    policy = RetryPolicy(attempts=1000, total_seconds=0.5, backoff_initial=0.05, backoff_max=0.1)
    started = time.monotonic()
    error = failing_fetch(fake, policy)
    assert time.monotonic() - started < 1.5
    assert 2 <= len(fake.requests) < 50
    assert "retry budget is spent" in str(error)


def test_a_single_attempt_policy_makes_one_attempt_and_reports_retry_after(
    fake: FakeKaleyra,
) -> None:
    fake.fail("http429:retry-after=7")
    with pytest.raises(TransientSourceError) as caught:
        client_for_fake(fake, replace(FAST, attempts=1)).fetch()
    assert caught.value.retry_after == 7
    assert len(fake.requests) == 1


def test_default_policy_gives_up_well_within_two_minutes() -> None:
    policy = RetryPolicy()
    assert policy.total_seconds < 120
    assert policy.attempts >= 2
    worst_wait = sum(
        min(policy.backoff_max, policy.backoff_initial * 2**n + policy.backoff_initial)
        for n in range(policy.attempts - 1)
    )
    assert worst_wait < policy.total_seconds


@pytest.mark.parametrize(
    "options",
    [{"attempts": 0}, {"total_seconds": 0}, {"backoff_initial": 2, "backoff_max": 1}],
)
def test_retry_policy_refuses_nonsense(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**options)


def test_retry_after_as_http_date_is_honoured(fake: FakeKaleyra) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=600), usegmt=True)
    fake.fail(f"http503:retry-after={when}")
    error = failing_fetch(fake, RetryPolicy(total_seconds=30, backoff_initial=0.01))
    assert "Kaleyra asked to retry after" in str(error)
    assert len(fake.requests) == 1


# Logs ----------------------------------------------------------------------------------


def test_each_failed_attempt_is_logged_with_its_wait(fake: FakeKaleyra) -> None:
    fake.fail("rcs502")
    with structlog.testing.capture_logs() as logs:
        failing_fetch(fake)
    failed = [e for e in logs if e["event"] == "fetch.attempt_failed"]
    assert [e["attempt"] for e in failed] == list(range(1, FAST.attempts))
    assert all(e["code"] == "RCS502" and e["wait"] > 0 for e in failed)
    (gave_up,) = [e for e in logs if e["event"] == "fetch.gave_up"]
    assert gave_up["attempts"] == FAST.attempts


def test_permanent_failure_is_logged_once(fake: FakeKaleyra) -> None:
    fake.fail("rcs601")
    with structlog.testing.capture_logs() as logs:
        failing_fetch(fake)
    failed = [e for e in logs if e["event"] == "fetch.attempt_failed"]
    assert [(e["attempt"], e["code"], e["wait"]) for e in failed] == [(1, "RCS601", None)]


# The HTTP session ----------------------------------------------------------------------


def test_client_closes_only_its_own_session(fake: FakeKaleyra) -> None:
    session = requests.Session()
    KaleyraClient(settings_for_fake(fake).require_kaleyra(), retry=FAST, session=session).fetch()
    assert session.get(fake.url + "/_fake/requests", timeout=5).json() == {"count": 1}
    session.close()


# The key never shows -------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    ["rcs601", "rcs502", "http401", "http429:retry-after=0", "html200", "redirect", "drop", "huge"],
)
def test_api_key_never_appears_in_errors_or_logs(fake: FakeKaleyra, mode: str) -> None:
    fake.fail(mode)
    with structlog.testing.capture_logs() as logs:
        error = failing_fetch(fake)
    assert not [text for text in exception_texts(error) if API_KEY in text]
    assert API_KEY not in repr(logs)


def test_api_key_echoed_by_the_server_is_redacted(fake: FakeKaleyra) -> None:
    fake.set_body(
        {
            "code": "RCS601",
            "message": f"api-key {API_KEY} has no RCS channel",
            "data": [],
            "error": {"error_code": API_KEY, "error_message": f"key {API_KEY}"},
        }
    )
    with structlog.testing.capture_logs() as logs:
        error = failing_fetch(fake)
    assert "**********" in str(error)
    assert not [text for text in exception_texts(error) if API_KEY in text]
    assert API_KEY not in repr(logs)


def test_api_key_never_appears_when_the_connection_fails() -> None:
    settings = Settings.from_env(
        {
            "KALEYRA_BASE_URL": f"http://127.0.0.1:{free_port()}",
            "KALEYRA_SID": "demo",
            "KALEYRA_API_KEY": API_KEY,
        }
    )
    with structlog.testing.capture_logs() as logs:
        api = KaleyraClient(settings.require_kaleyra(), retry=FAST)
        with pytest.raises(SourceError) as caught:
            api.fetch()
        assert API_KEY not in repr(api)
    assert not [text for text in exception_texts(caught.value) if API_KEY in text]
    assert API_KEY not in repr(logs)


# The wall-clock budget -----------------------------------------------------------------

#: Two seconds in all, and per-read timeouts far longer, so only the wall clock can stop it.
TWO_SECONDS = RetryPolicy(
    attempts=3, total_seconds=2.0, backoff_initial=0.01, connect_timeout=30, read_timeout=30
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [
        "drip:0.2",  # a byte every 0.2 s: each read succeeds, the whole never ends in time
        "drip-headers:0.2",  # the same in the headers
        "endless:0.05",  # a chunked body that never ends
        "slow:30",
    ],
)
def test_the_whole_fetch_ends_within_its_budget_whatever_the_server_does(
    fake: FakeKaleyra, mode: str
) -> None:
    fake.fail(mode)
    started = time.monotonic()
    error = failing_fetch(fake, TWO_SECONDS)
    elapsed = time.monotonic() - started
    assert 1.9 < elapsed < 2.5, elapsed
    assert isinstance(error, TransientSourceError)
    assert error.code == "timeout"
    assert "2.0 s" in str(error)


@pytest.mark.slow
def test_a_single_attempt_is_bounded_by_the_budget_too(fake: FakeKaleyra) -> None:
    fake.fail("drip:0.2")
    started = time.monotonic()
    with pytest.raises(TransientSourceError) as caught:
        client_for_fake(fake, replace(TWO_SECONDS, attempts=1)).fetch()
    assert time.monotonic() - started < 2.5
    assert caught.value.code == "timeout"


def test_a_drip_that_ends_in_time_is_read_whole(fake: FakeKaleyra) -> None:
    fake.set_regions([{"id": "r1", "carrier_enabled": True}])
    fake.fail("drip:0.002")
    snapshot = client_for_fake(fake, TWO_SECONDS).fetch()
    assert [r.id for r in snapshot.records] == ["r1"]


def test_the_deadline_timer_is_gone_after_the_fetch(fake: FakeKaleyra) -> None:
    client_for_fake(fake, TWO_SECONDS).fetch()
    assert [t for t in threading.enumerate() if t.name == "regionsync-http-deadline"] == []


def test_http_404_names_the_settings_that_build_the_url(fake: FakeKaleyra) -> None:
    fake.fail("http404")
    error = failing_fetch(fake)
    assert isinstance(error, PermanentSourceError)
    for setting in ("KALEYRA_SID", "KALEYRA_POD", "KALEYRA_BASE_URL", "KALEYRA_REGIONS_PATH"):
        assert setting in str(error)
    assert len(fake.requests) == 1


class DrippingTLSServer:
    """Answers a TLS ClientHello with the start of a 16 KiB record, then a byte at a time."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        self.listener.settimeout(5)
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection:
            connection.recv(65536)  # the ClientHello
            try:
                connection.sendall(b"\x16\x03\x03\x40\x00")
                while not self.stop.wait(0.2):
                    connection.sendall(b"\x02")
            except OSError:
                return

    def __enter__(self) -> str:
        self.thread.start()
        return f"https://127.0.0.1:{self.listener.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()


@pytest.mark.slow
def test_a_tls_handshake_dripped_a_byte_at_a_time_ends_within_the_budget() -> None:
    """The handshake is bounded by the connect timeout, capped by the time left."""
    with DrippingTLSServer() as url:
        settings = Settings.from_env(
            {"KALEYRA_BASE_URL": url, "KALEYRA_SID": "demo", "KALEYRA_API_KEY": API_KEY}
        )
        started = time.monotonic()
        with pytest.raises(TransientSourceError) as caught:
            KaleyraClient(settings.require_kaleyra(), retry=TWO_SECONDS).fetch()
        assert time.monotonic() - started < 2.5
    assert caught.value.code == "timeout"


@pytest.mark.slow
def test_the_deadline_closes_the_descriptors_it_watched(fake: FakeKaleyra) -> None:
    before = len(os.listdir("/proc/self/fd"))
    fake.fail("drip:0.2", times=1)
    with pytest.raises(TransientSourceError):
        client_for_fake(fake, TWO_SECONDS).fetch()
    client_for_fake(fake, TWO_SECONDS).fetch()
    settle = time.monotonic() + 3  # the fake's side of the cut connection closes on its own
    while len(os.listdir("/proc/self/fd")) > before and time.monotonic() < settle:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= before


class CutShortServer:
    """Answers every request with the start of a head, ``HTTP/1.1 200 OK\\r\\nContent-Le``,
    then closes: no fake mode cuts a head, so this one speaks raw sockets."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.stop = threading.Event()
        self.answered = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
                self.answered += 1

    def __enter__(self) -> CutShortServer:
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()


def test_an_answer_cut_short_in_its_head_is_a_broken_connection_retried() -> None:
    with CutShortServer() as server:
        settings = Settings.from_env(
            {"KALEYRA_BASE_URL": server.url, "KALEYRA_SID": "demo", "KALEYRA_API_KEY": API_KEY}
        )
        with pytest.raises(TransientSourceError) as caught:
            KaleyraClient(settings.require_kaleyra(), retry=FAST).fetch()
        assert server.answered == FAST.attempts
    assert caught.value.code == "connection"
    assert "the answer was cut short" in str(caught.value)
