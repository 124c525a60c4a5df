"""The one exception tree of regionsync.

Foreign errors are translated at one boundary each: requests' where Kaleyra (or the
webhook) is called, SQLAlchemy's (and psycopg's, which it wraps) at each public entry point
that uses the database (:func:`regionsync.store.engine.translated_errors`). The CLI turns this
tree into exit codes in one place, using ``exit_code``::

    RegionSyncError                 exit 1
    ├── ConfigError                 exit 2  a setting is missing or malformed
    ├── SchemaError                 exit 2  the database is not migrated to head
    ├── SourceError                 exit 1  fetching from Kaleyra (or a file) failed
    │   ├── TransientSourceError            worth retrying: timeouts, 429, 5xx, RCS502, RCS500
    │   └── PermanentSourceError            not worth retrying: 401/403, RCS601, bad body, ...
    ├── GuardError                  exit 1  the sync refused to apply (mass removal)
    └── StoreError                  exit 1  the database failed during a sync
"""

from __future__ import annotations


def one_line(text: str, *, limit: int = 200) -> str:
    """Collapse whitespace and cap the length, so a message stays one readable line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class RegionSyncError(Exception):
    """Base of every error regionsync raises on purpose; ``str()`` is one readable line."""

    exit_code = 1


class ConfigError(RegionSyncError):
    """A setting is missing or malformed; the message names it."""

    exit_code = 2

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class SchemaError(RegionSyncError):
    """The database schema is not at the revision this regionsync expects."""

    exit_code = 2


class SourceError(RegionSyncError):
    """The regions could not be fetched or the response is not usable.

    ``code`` is Kaleyra's code (``RCS601``...) when the body gave one, else ``HTTP <status>``
    or a short name of the failure (``timeout``, ``connection``, ``bad-body``...).
    """

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        self.code = code
        self.status = status
        super().__init__(message)


class TransientSourceError(SourceError):
    """A failure that may pass: worth retrying later."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, code=code, status=status)


class PermanentSourceError(SourceError):
    """A failure that retrying will not fix: credentials, disabled channel, bad body."""


class GuardError(RegionSyncError):
    """A safety guard stopped the sync before it changed anything."""


class StoreError(RegionSyncError):
    """The database failed while regionsync was using it."""
