"""The one boundary where outbound HTTP errors are translated (regionsync.httpclient)."""

from __future__ import annotations

import inspect
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import ModuleType

import pytest
import requests
import urllib3

from regionsync import httpclient
from regionsync.httpclient import (
    FOREIGN_ERRORS,
    WRAPPED_ERRORS,
    BrokenHead,
    ConnectionFailed,
    ConnectTimedOut,
    CutShort,
    DeadlineCut,
    NotSent,
    ReadTimedOut,
    TLSFailed,
    TransportError,
    kind_of,
    parse_retry_after,
    translated,
)


def exception_types(module: ModuleType) -> list[type[BaseException]]:
    """The exceptions a module defines (its warnings are not errors)."""
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and not issubclass(value, Warning)
        and value.__module__ == module.__name__
    ]


FOREIGN_MODULES = (requests.exceptions, urllib3.exceptions)


@pytest.mark.parametrize(
    "error",
    [e for module in FOREIGN_MODULES for e in exception_types(module)]
    + [ssl.SSLError, ssl.SSLCertVerificationError, socket.gaierror, TimeoutError, OSError],
    ids=lambda e: f"{e.__module__}.{e.__qualname__}",
)
def test_every_foreign_error_is_mapped(error: type[BaseException]) -> None:
    assert kind_of(error, FOREIGN_ERRORS) is not None
    assert issubclass(error, tuple(FOREIGN_ERRORS))


def test_every_entry_maps_to_a_kind_of_transport_error() -> None:
    for table in (FOREIGN_ERRORS, WRAPPED_ERRORS):
        for foreign, kind in table.items():
            assert issubclass(kind, TransportError), foreign
            assert not issubclass(foreign, TransportError), foreign


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (requests.exceptions.SSLError, TLSFailed),
        (requests.exceptions.ConnectTimeout, ConnectTimedOut),
        (requests.exceptions.ReadTimeout, ReadTimedOut),
        (requests.exceptions.ChunkedEncodingError, CutShort),
        (requests.exceptions.ProxyError, ConnectionFailed),
        (requests.exceptions.ConnectionError, ConnectionFailed),
        (requests.exceptions.InvalidURL, NotSent),
        (requests.exceptions.InvalidHeader, NotSent),
        (urllib3.exceptions.NewConnectionError, ConnectionFailed),
        (urllib3.exceptions.ConnectTimeoutError, ConnectTimedOut),
        (urllib3.exceptions.ReadTimeoutError, ReadTimedOut),
        (urllib3.exceptions.ProtocolError, CutShort),
        (urllib3.exceptions.IncompleteRead, ConnectionFailed),
        (urllib3.exceptions.LocationParseError, NotSent),
        (urllib3.exceptions.ProxySchemeUnsupported, NotSent),
        (BrokenHead, CutShort),
        (ssl.SSLCertVerificationError, TLSFailed),
        (TimeoutError, ReadTimedOut),
        (ConnectionRefusedError, ConnectionFailed),
        (socket.gaierror, ConnectionFailed),
    ],
)
def test_each_foreign_error_takes_its_most_specific_kind(
    error: type[BaseException], kind: type[TransportError]
) -> None:
    assert kind_of(error, FOREIGN_ERRORS) is kind


def test_the_kind_is_raised_from_the_foreign_error_with_its_reason_not_its_text() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    foreign = requests.exceptions.ConnectionError("http://secret@host/path")
    foreign.__cause__ = refused
    with pytest.raises(ConnectionFailed) as caught, translated():
        raise foreign
    assert caught.value.__cause__ is foreign
    assert caught.value.reason == "Connection refused"
    assert caught.value.raised == "ConnectionError"
    assert str(caught.value) == "Connection refused"


def test_an_error_without_an_os_level_reason_names_its_type() -> None:
    with pytest.raises(NotSent) as caught, translated():
        raise requests.exceptions.InvalidURL("http://secret@host:port")
    assert caught.value.reason is None
    assert str(caught.value) == "InvalidURL"


@pytest.mark.parametrize(
    ("inner", "kind", "reason"),
    [
        (
            BrokenHead("the answer's headers are malformed"),
            CutShort,
            "the answer's headers are malformed",
        ),
        (urllib3.exceptions.ReadTimeoutError(None, None, "Read timed out."), ReadTimedOut, None),
    ],
)
def test_a_connection_error_is_mapped_by_what_it_wraps_when_that_says_more(
    inner: BaseException, kind: type[TransportError], reason: str | None
) -> None:
    aborted = urllib3.exceptions.ProtocolError("Connection aborted.", inner)
    with pytest.raises(kind) as caught, translated():
        raise requests.exceptions.ConnectionError(aborted)
    assert caught.value.reason == reason


def test_a_reset_connection_stays_a_connection_failure() -> None:
    reset = ConnectionResetError(104, "Connection reset by peer")
    aborted = urllib3.exceptions.ProtocolError("Connection aborted.", reset)
    with pytest.raises(ConnectionFailed) as caught, translated():
        raise requests.exceptions.ConnectionError(aborted)
    assert caught.value.reason == "Connection reset by peer"


def test_once_the_deadline_cut_the_connection_any_foreign_error_is_the_cut() -> None:
    with httpclient.Deadline(time.monotonic()) as deadline:
        while not deadline.fired:
            time.sleep(0.001)
        with pytest.raises(DeadlineCut), translated():
            raise requests.exceptions.ReadTimeout("read timed out")


def test_errors_that_are_not_foreign_pass_untouched() -> None:
    with pytest.raises(KeyError), translated():
        raise KeyError("ours")


def test_retry_after_is_read_as_seconds_or_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after("2", now=now) == 2
    assert parse_retry_after(" 1.5 ", now=now) == 1.5
    assert parse_retry_after(later, now=now) == 90
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now=now) == 0
    assert parse_retry_after("-5", now=now) == 0
    for junk in (None, "", "soon", "nan"):
        assert parse_retry_after(junk, now=now) is None
