"""Logging (regionsync/logs.py): secrets redacted in every form, long values and tracebacks cut
so a line stays bounded, no frame locals, and what Python and other libraries log rendered
the same way."""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import structlog

from regionsync import logs
from tests.support.leaks import FORMATS, KEY, PASSWORD, assert_clean, escaped_forms

#: Plain ASCII: written raw into a line, so finding it there is a leak.
PLAIN_KEY = "k3y-7f58a94e84b671aca43"
PLAIN_PASSWORD = "pa55-w0rd-xyz"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each test configures logging its own way; the tests after it start from the defaults."""
    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, threading.excepthook
    yield
    root.handlers[:], root.level, threading.excepthook = handlers, level, hook
    logging.captureWarnings(False)
    structlog.reset_defaults()


def json_events(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines()]


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# Redaction -------------------------------------------------------------------------------


def test_each_escaped_form_is_redacted() -> None:
    for secret in (KEY, PASSWORD):
        for form in escaped_forms(secret):
            assert logs.redact(f"<{form}>", (secret,)) == f"<{logs.REDACTED}>", form


def test_no_secrets_or_empty_ones_redact_nothing() -> None:
    text = "an ordinary line, with ** and '' in it"
    assert logs.redact(text, ()) == text
    assert logs.redact(text, ("",)) == text
    assert not logs.Redactor(["", ""])


def test_logs_scrub_secrets_even_when_code_passes_them(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(level="INFO", fmt="json", secrets=(PLAIN_KEY, PLAIN_PASSWORD))
    try:
        structlog.get_logger("t").info(
            "oops", detail=f"key={PLAIN_KEY}", nested={"p": [PLAIN_PASSWORD]}
        )
        logging.getLogger("foreign").warning("password %s", PLAIN_PASSWORD)
    finally:
        logs.configure(level="INFO", fmt="json")
    err = capsys.readouterr().err
    assert "oops" in err
    assert "password" in err
    assert PLAIN_KEY not in err
    assert PLAIN_PASSWORD not in err


def test_tracebacks_show_no_locals_and_escaped_secrets_are_scrubbed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for fmt in FORMATS:
        logs.configure(fmt=fmt, secrets=(KEY, PASSWORD))
        try:
            hidden_value = {"key": KEY, "password": PASSWORD}
            message = f"{hidden_value!r} {json.dumps(PASSWORD)} {quote(PASSWORD)}"
            raise ValueError(message)
        except ValueError:
            structlog.get_logger("t").exception("failed", detail=repr(KEY))
        err = capsys.readouterr().err
        assert "ValueError" in err
        assert "hidden_value =" not in err
        assert "message =" not in err
        if fmt == "json":
            (event,) = json_events(err)
            frames = [f for e in event["exception"] for f in e["frames"]]
            assert frames
            assert not [f for f in frames if "locals" in f]
        assert_clean(err, f"{fmt} traceback")


def test_a_crashing_thread_is_logged_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(fmt="json", secrets=(KEY,))

    def crash() -> None:
        raise RuntimeError(f"thread saw {KEY!r}")

    thread = threading.Thread(target=crash, name="worker")
    thread.start()
    thread.join()
    (event,) = json_events(capsys.readouterr().err)
    assert event["event"] == "thread.crashed"
    assert event["thread"] == "worker"
    assert event["exception"][0]["exc_type"] == "RuntimeError"
    assert_clean(json.dumps(event, ensure_ascii=False), "a thread's traceback")


def test_a_thread_ending_with_system_exit_logs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(fmt="json")

    def leave() -> None:
        raise SystemExit(3)

    thread = threading.Thread(target=leave)
    thread.start()
    thread.join()
    assert capsys.readouterr().err == ""


# Bounded lines ---------------------------------------------------------------------------


def test_log_values_are_capped(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(level="INFO", fmt="json")
    huge = "x" * 10_000_000
    structlog.get_logger("t").info(
        "big",
        display_name=huge,
        many=list(range(1000)),
        deep=_nested(100),
        table={i: i for i in range(99)},
    )
    line = capsys.readouterr().err
    assert len(line) < 10_000
    event = json.loads(line)
    assert event["display_name"] == "x" * logs.MAX_VALUE_CHARS + f"…(+{10_000_000 - 1000} chars)"
    assert event["many"][: logs.MAX_ITEMS] == list(range(logs.MAX_ITEMS))
    assert event["many"][-1] == f"…(+{1000 - logs.MAX_ITEMS} items)"
    assert "…(nested too deep)" in json.dumps(event["deep"], ensure_ascii=False)
    assert len(event["table"]) == logs.MAX_ITEMS + 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_traceback_quoting_a_huge_value_is_cut(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure(fmt=fmt)
    left_out = 100_000 - logs.MAX_EXCEPTION_CHARS
    try:
        raise ValueError("y" * 100_000)
    except ValueError:
        structlog.get_logger("t").exception("failed")
    err = capsys.readouterr().err
    assert len(err) < logs.MAX_EXCEPTION_CHARS + 2_000
    if fmt == "json":
        (event,) = json_events(err)
        assert event["exception"][0]["exc_value"] == "y" * logs.MAX_EXCEPTION_CHARS + (
            f"…(+{left_out} chars)"
        )
    else:  # the whole rendered traceback is cut, its frames included
        assert "y" * (logs.MAX_EXCEPTION_CHARS - 1_000) in err
        assert err.rstrip().endswith(" chars)")


# One rendering for everything ------------------------------------------------------------


def test_warnings_and_other_libraries_go_through_the_same_rendering(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(level="INFO", fmt="json", secrets=(PLAIN_KEY,))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"careful with {PLAIN_KEY}", UserWarning, stacklevel=1)
    logging.getLogger("apscheduler.scheduler").info("Added job")  # noise for an operator
    logging.getLogger("apscheduler.scheduler").warning("Run time of job was missed")
    events = json_events(capsys.readouterr().err)
    assert [(e["logger"], e["level"]) for e in events] == [
        ("py.warnings", "warning"),
        ("apscheduler.scheduler", "warning"),
    ]
    assert "careful with" in events[0]["event"]
    assert PLAIN_KEY not in events[0]["event"]


def test_without_a_terminal_the_default_format_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure()  # pytest's captured stderr is not a terminal
    structlog.get_logger("t").info("hello", n=1)
    (event,) = json_events(capsys.readouterr().err)
    assert (event["event"], event["n"], event["level"]) == ("hello", 1, "info")
