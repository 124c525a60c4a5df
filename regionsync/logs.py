"""Logging, configured once at the entry point; modules only call ``structlog.get_logger()``.

JSON lines when stderr is not a terminal (or ``REGIONSYNC_LOG_FORMAT=json``), coloured
console lines on a terminal. Standard-library loggers (Alembic, APScheduler) go through the
same renderer. Secrets are scrubbed twice: from every value of an event, and from the final
rendered line in every escaped form they could take there (see docs/sync.md, *Secrets in
logs*). Tracebacks never show frame locals, and long values are cut, so one line stays bounded.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote, quote_plus

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "**********"
#: Longest string value a log line shows; the rest is replaced by ``…(+N chars)``.
MAX_VALUE_CHARS = 1_000
#: Most items of a list or dict a log line shows.
MAX_ITEMS = 50
#: Deepest nesting a log line shows.
MAX_DEPTH = 8
#: Longest traceback a log line shows.
MAX_EXCEPTION_CHARS = 20_000

Escape = Callable[[str], str]


def _python_escape(quote_char: str, *, ascii_only: bool) -> Escape:
    """How ``repr()``/``ascii()`` write a string inside ``quote_char`` quotes (or none)."""
    show = ascii if ascii_only else repr

    def escape(text: str) -> str:
        return "".join("\\" + ch if ch == quote_char else show(ch)[1:-1] for ch in text)

    return escape


_ESCAPES: tuple[Escape, ...] = (
    *(_python_escape(q, ascii_only=a) for q in ("'", '"', "") for a in (False, True)),
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: quote(s, safe=""),
    lambda s: quote(s, safe="/"),
    lambda s: quote_plus(s),
    lambda s: quote(s, safe=" !$&'()*+,;="),  # how SQLAlchemy writes a URL's password
)


def secret_forms(secret: str) -> set[str]:
    """Every way ``secret`` can appear in a line: raw, escaped once, or escaped twice
    (a ``repr()`` inside JSON, a URL-quoted password inside a ``repr()``...)."""
    once = {secret} | {escape(secret) for escape in _ESCAPES}
    return once | {escape(form) for form in once for escape in _ESCAPES}


@functools.lru_cache(maxsize=16)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    """One regex for every form of every secret, longest first; built once per set."""
    forms = {form for secret in secrets for form in secret_forms(secret)}
    ordered = sorted((f for f in forms if f), key=lambda f: (-len(f), f))
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


#: Secrets known only inside a block of work (an account's key, read for its sync): the
#: lines logged in that block are scrubbed of them too (:func:`secrets_in_scope`).
_scoped: ContextVar[frozenset[str]] = ContextVar("regionsync_scoped_secrets", default=frozenset())


@contextmanager
def secrets_in_scope(*secrets: str) -> Iterator[None]:
    """Inside the block, every log line of this context is scrubbed of ``secrets`` as well."""
    token = _scoped.set(_scoped.get() | {s for s in secrets if s})
    try:
        yield
    finally:
        _scoped.reset(token)


class Redactor:
    """Replaces every form of every secret in a text (and of the secrets in scope, see
    :func:`secrets_in_scope`), in one pass."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = frozenset(s for s in secrets if s)
        self.pattern = _pattern(self.secrets)

    def __bool__(self) -> bool:
        return self.pattern is not None or bool(_scoped.get())

    def __call__(self, text: str) -> str:
        scoped = _scoped.get()
        pattern = _pattern(self.secrets | scoped) if scoped else self.pattern
        return text if pattern is None else pattern.sub(REDACTED, text)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value, raw or escaped, replaced."""
    return Redactor(secrets)(text)


def _walk(value: Any, on_string: Callable[[str], str], depth: int = 0) -> Any:
    """``value`` with ``on_string`` applied to every string in it, nesting and size capped."""
    if isinstance(value, str):
        return on_string(value)
    if isinstance(value, BaseException):
        return on_string(f"{type(value).__name__}: {value}")
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        return "…(nested too deep)"
    if isinstance(value, dict):
        items = list(value.items())
        shown = {k: _walk(v, on_string, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            shown["…"] = f"(+{len(items) - MAX_ITEMS} items)"
        return shown
    if isinstance(value, list | tuple):
        walked = [_walk(v, on_string, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            walked.append(f"…(+{len(value) - MAX_ITEMS} items)")
        return walked
    return value


def truncate(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"


class RedactSecrets:
    """Replace every secret, raw or escaped, in any string of an event."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.redactor = Redactor(secrets)

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        if not self.redactor:
            return event_dict
        return {
            key: value if key == "exc_info" else _walk(value, self.redactor)
            for key, value in event_dict.items()
        }


def cap_values(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """Cut long strings, long lists and dicts, and deep nesting (a huge field stays short)."""
    return {
        key: value if key == "exc_info" else _walk(value, truncate)
        for key, value in event_dict.items()
    }


def cap_exception(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """Bound a rendered traceback (its message may quote a huge value)."""
    exception = event_dict.get("exception")
    if exception is not None:
        event_dict["exception"] = _walk(exception, lambda text: truncate(text, MAX_EXCEPTION_CHARS))
    return event_dict


class RedactedRenderer:
    """Render, then scrub the final line: what escaping added is caught here."""

    def __init__(self, renderer: Processor, secrets: Iterable[str]) -> None:
        self.renderer = renderer
        self.redactor = Redactor(secrets)

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        line = self.renderer(logger, name, event_dict)
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        return self.redactor(str(line))


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time, so tests and redirects see it."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught error, logged (scrubbed, no locals) instead of printed raw."""
    if args.exc_type is SystemExit:
        return
    structlog.get_logger("regionsync").error(
        "thread.crashed",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def configure(*, level: str = "INFO", fmt: str | None = None, secrets: Iterable[str] = ()) -> None:
    """Set up structlog and the standard library's logging to write to stderr.

    Safe to call before the settings are read (the CLI does, so a failure while reading
    them is logged safely too) and again once they are.
    """
    secrets = tuple(secrets)
    use_json = fmt == "json" or (fmt is None and not sys.stderr.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Never frame locals: they hold secrets in forms no redaction can foresee.
    exceptions: Processor
    renderer: Processor
    if use_json:
        exceptions = structlog.processors.ExceptionRenderer(
            ExceptionDictTransformer(show_locals=False, use_rich=False)
        )
        renderer = structlog.processors.JSONRenderer()
    else:
        exceptions = structlog.processors.format_exc_info
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            RedactSecrets(secrets),
            cap_values,
            exceptions,
            cap_exception,
            RedactedRenderer(renderer, secrets),
        ],
    )
    handler = StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Their INFO lines are noise for an operator; warnings still come through.
    for noisy in ("apscheduler", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))

    # What Python would print itself goes through the same safe rendering.
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_crash

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
