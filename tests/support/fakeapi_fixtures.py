"""The ``fake`` fixture and helpers for tests that talk real HTTP to
:class:`regionsync.testing.fakeapi.FakeKaleyra`.

``fake`` is a started fake with :data:`API_KEY` and the bundled sample regions. A test module
that needs other regions, sid or key overrides ``fake_options`` (a fixture of its own, or
``@pytest.mark.parametrize("fake_options", [...])`` for a single test).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import URL

from regionsync.settings import Settings
from regionsync.source.kaleyra import KaleyraClient, RetryPolicy
from regionsync.testing.fakeapi import FakeKaleyra, sample_regions

#: Distinctive, so that a leak anywhere is easy to find.
API_KEY = "sk-LEAKCHECK-7f3a9c1e5b"

#: Retries in milliseconds, so failure tests stay fast.
FAST = RetryPolicy(
    attempts=4,
    total_seconds=10.0,
    backoff_initial=0.01,
    backoff_max=0.05,
    connect_timeout=2.0,
    read_timeout=5.0,
)


def start_fake(**options: Any) -> FakeKaleyra:
    options.setdefault("api_key", API_KEY)
    options.setdefault("regions", sample_regions())
    return FakeKaleyra(**options).start()


@pytest.fixture
def fake_options() -> dict[str, Any]:
    """Keyword arguments for :class:`FakeKaleyra` beyond the defaults of :func:`start_fake`."""
    return {}


@pytest.fixture
def fake(fake_options: dict[str, Any]) -> Iterator[FakeKaleyra]:
    """A started fake Kaleyra API, stopped after the test."""
    server = start_fake(**fake_options)
    try:
        yield server
    finally:
        server.stop()


def fake_variables(fake: FakeKaleyra) -> dict[str, str]:
    """The variables pointing regionsync at ``fake``, with :data:`API_KEY`."""
    return {"KALEYRA_BASE_URL": fake.url, "KALEYRA_SID": fake.sid, "KALEYRA_API_KEY": API_KEY}


def process_variables(url: URL, fake: FakeKaleyra, **extra: str) -> dict[str, str]:
    """A ``regionsync`` process's settings: the database ``url``, ``fake``, JSON logs."""
    return {
        "REGIONSYNC_DATABASE_URL": url.render_as_string(hide_password=False),
        **fake_variables(fake),
        "REGIONSYNC_LOG_FORMAT": "json",
        **extra,
    }


def settings_for_fake(fake: FakeKaleyra, **env: str) -> Settings:
    """Settings pointing regionsync at ``fake`` with :data:`API_KEY`, plus any variables."""
    return Settings.from_env({**fake_variables(fake), **env})


def client_for_fake(fake: FakeKaleyra, retry: RetryPolicy = FAST, **env: str) -> KaleyraClient:
    """A client of ``fake`` (as :func:`settings_for_fake` configures it) with a retry policy."""
    return KaleyraClient(settings_for_fake(fake, **env).require_kaleyra(), retry=retry)


def exception_texts(error: BaseException) -> list[str]:
    """str, repr and the formatted traceback of an error and every error chained to it."""
    texts: list[str] = []
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        texts += [str(current), repr(current), repr(vars(current))]
        texts += traceback.format_exception(current)
        pending += [current.__cause__, current.__context__]
    return texts
