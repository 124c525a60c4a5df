"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

from sqlalchemy.engine import URL

from regionsync.settings import Settings


def settings_for(url: URL | str, **env: str) -> Settings:
    """Settings for a test database, plus any other variables."""
    raw = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    return Settings.from_env({"REGIONSYNC_DATABASE_URL": raw, **env})
