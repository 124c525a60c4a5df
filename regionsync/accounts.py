"""Which accounts a command syncs, and each one's source: its SID, endpoint and API key.

With no row in ``accounts``, the ``KALEYRA_*`` settings are the one account, named by
``REGIONSYNC_ACCOUNT`` (docs/accounts.md). An account's key is read when its sync starts,
from the variable or file it names (or ``REGIONSYNC_API_KEYS_DIR/<name>``), so that a
rotated secret is picked up at the next run and no key ever sits in the database. A key
that cannot be read fails that account's run (recorded, named), never the others'.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from regionsync import logs
from regionsync.errors import ConfigError
from regionsync.records import Snapshot, Source
from regionsync.settings import ENV_NAME, KaleyraConfig, Secret, Settings
from regionsync.store import accounts as stored
from regionsync.store.accounts import AccountRow
from regionsync.store.engine import translated_errors
from regionsync.store.schema import require_current

#: A key file larger than this is not a key: refused unread.
MAX_KEY_FILE_BYTES = 4096


@dataclass(frozen=True)
class Account:
    """An account to sync: a row of ``accounts``, or the settings' one account
    (``row`` None)."""

    name: str
    row: AccountRow | None = None

    @property
    def implicit(self) -> bool:
        return self.row is None

    @property
    def paused_at(self) -> datetime | None:
        return None if self.row is None else self.row.paused_at

    @property
    def schedule(self) -> str | None:
        return None if self.row is None else self.row.schedule


def implicit_account(settings: Settings) -> Account:
    return Account(settings.account)


@translated_errors("reading the accounts")
def configured_accounts(engine: Engine, settings: Settings) -> list[Account]:
    """Every account, paused ones included, by name; the settings' one account when the
    table is empty."""
    require_current(engine)
    with engine.connect() as connection:
        rows = stored.list_accounts(connection)
    if not rows:
        return [implicit_account(settings)]
    return [Account(row.name, row) for row in rows]


@translated_errors("reading the accounts")
def select_account(engine: Engine, settings: Settings, name: str | None) -> Account:
    """The account a command without ``--all`` works on: ``name``, or the only one there is.

    With the table empty, only the settings' account exists (``--account`` may name it).
    """
    require_current(engine)
    with engine.connect() as connection:
        if name is not None:
            found = stored.get_account(connection, name)
            if found is not None:
                return Account(found.name, found)
        present = stored.list_accounts(connection) if name is None else []
        empty = not stored.has_accounts(connection)
    if empty:
        if name is None or name == settings.account:
            return implicit_account(settings)
        raise ConfigError(
            "--account",
            f"no account named {name!r}: the accounts table is empty, so the only account is "
            f"{settings.account!r} (REGIONSYNC_ACCOUNT); add others with `regionsync accounts add`",
        )
    if name is not None:
        raise ConfigError("--account", f"no account named {name!r}; see `regionsync accounts list`")
    if len(present) == 1:
        return Account(present[0].name, present[0])
    raise ConfigError(
        "--account",
        f"{len(present)} accounts are configured: name one with --account NAME, or use --all",
    )


def kaleyra_config(account: Account, settings: Settings) -> KaleyraConfig:
    """What fetching the account's regions needs, its key read now."""
    if account.row is None:
        return settings.require_kaleyra()
    row = account.row
    return KaleyraConfig(
        base_url=row.endpoint,
        sid=row.sid,
        api_key=read_key(row, settings),
        regions_path=settings.kaleyra_regions_path,
        ca_bundle=settings.ca_bundle,
        credentials=f"account {row.name}'s key ({row.key_source}) and SID ({row.sid})",
    )


def read_key(row: AccountRow, settings: Settings) -> Secret:
    """The account's API key, from where the row says; a :class:`ConfigError` that names
    where it looked (never what it found) when it cannot."""
    setting = f"account {row.name}"
    if row.api_key_env is not None:
        if ENV_NAME.fullmatch(row.api_key_env) is None:
            raise ConfigError(setting, "api_key_env is not a variable name")
        value = settings.environment.get(row.api_key_env, "").strip()
        if not value:
            raise ConfigError(
                setting, f"no API key: the environment variable {row.api_key_env} is not set"
            )
        return Secret(value)
    if row.api_key_file is not None:
        return _key_file(Path(row.api_key_file), setting, how="api_key_file")
    if settings.api_keys_dir is None:
        raise ConfigError(
            setting,
            "no API key: it names neither api_key_env nor api_key_file, and "
            "REGIONSYNC_API_KEYS_DIR is not set",
        )
    return _key_file(settings.api_keys_dir / row.name, setting, how="REGIONSYNC_API_KEYS_DIR")


def _key_file(path: Path, setting: str, *, how: str) -> Secret:
    """A key file's content, stripped: a regular file, small, one line of printable text."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(setting, f"the key file {path} ({how}) is not a regular file")
            data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(setting, f"cannot read the key file {path} ({how}): {reason}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(
            setting, f"the key file {path} ({how}) is over {MAX_KEY_FILE_BYTES} bytes: not a key"
        )
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(setting, f"the key file {path} ({how}) is not UTF-8 text") from None
    if not text:
        raise ConfigError(setting, f"the key file {path} ({how}) is empty")
    if not text.isprintable():
        raise ConfigError(setting, f"the key file {path} ({how}) holds more than one line")
    return Secret(text)


class AccountSource:
    """An account's Kaleyra API as a :class:`~regionsync.records.Source`: the key is read
    when the fetch starts (inside the run, so a missing key is a failed run of that account)
    and redacted from every log line of the fetch."""

    def __init__(self, account: Account, row: AccountRow, settings: Settings) -> None:
        self.account = account
        self._settings = settings
        self._description = row.endpoint + settings.kaleyra_regions_path.format(sid=row.sid)

    def __repr__(self) -> str:
        return f"AccountSource(account={self.account.name!r})"

    @property
    def description(self) -> str:
        return self._description

    def fetch(self) -> Snapshot:
        config = kaleyra_config(self.account, self._settings)
        from regionsync.source.kaleyra import KaleyraClient

        with logs.secrets_in_scope(config.api_key.reveal()):
            return KaleyraClient(config).fetch()


def account_source(account: Account, settings: Settings) -> Source:
    """The source of an account's sync. The settings' one account is checked at once (a
    missing KALEYRA_* setting is a usage error, before any run); a row's key is read when
    its fetch starts."""
    if account.row is None:
        from regionsync.source.kaleyra import KaleyraClient

        return KaleyraClient(settings.require_kaleyra())
    return AccountSource(account, account.row, settings)


__all__ = [
    "Account",
    "AccountSource",
    "account_source",
    "configured_accounts",
    "implicit_account",
    "kaleyra_config",
    "read_key",
    "select_account",
]
