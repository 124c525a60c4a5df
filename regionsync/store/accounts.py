"""The ``accounts`` table: the Kaleyra accounts a deployment syncs, as rows.

An account says where its API key is (an environment variable, a file, or the file named
after it in ``REGIONSYNC_API_KEYS_DIR``), never what it is. Names are checked here, once,
for every way in (``accounts add``, ``accounts import``, ``REGIONSYNC_ACCOUNT``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from regionsync.errors import ConfigError
from regionsync.settings import (
    ACCOUNT_NAME,
    ENV_NAME,
    POD_BASE_URLS,
    check_account_name,
    check_url,
)
from regionsync.store.runs import now
from regionsync.store.tables import (
    accounts,
    applied_answers,
    notification_deliveries,
    region_history,
    regions,
    sync_runs,
)

#: The fields of an account, in the order of the ``accounts import`` CSV header.
FIELDS = ("name", "sid", "pod", "base_url", "api_key_env", "api_key_file", "schedule")
MAX_SID_CHARS = 64
MAX_PATH_CHARS = 1024
#: The longest any field may be (a URL, a schedule...): far past a real one.
MAX_FIELD_CHARS = 4096


@dataclass(frozen=True)
class AccountRow:
    """One account as stored; ``pod`` or ``base_url`` says where its API is.

    Neither ``api_key_env`` nor ``api_key_file``: the key is the file named after the account
    in ``REGIONSYNC_API_KEYS_DIR``.
    """

    name: str
    sid: str
    pod: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    schedule: str | None = None
    paused_at: datetime | None = None
    created_at: datetime | None = None

    @property
    def endpoint(self) -> str:
        """The API's base URL, from the pod or as given."""
        if self.base_url is not None:
            return self.base_url
        return POD_BASE_URLS[self.pod or ""]

    @property
    def key_source(self) -> str:
        """Where the key is read from, for ``accounts list`` (never the key)."""
        if self.api_key_env is not None:
            return f"env:{self.api_key_env}"
        if self.api_key_file is not None:
            return f"file:{self.api_key_file}"
        return "dir:REGIONSYNC_API_KEYS_DIR"

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("paused_at", "created_at"):
            moment = out[name]
            out[name] = moment.isoformat() if moment is not None else None
        return out


def account_row(
    fields: Mapping[str, str | None],
    *,
    where: str = "",
    labels: Mapping[str, str] | None = None,
) -> AccountRow:
    """An :class:`AccountRow` from text fields (options or a CSV line), every field checked;
    a :class:`ConfigError` names the field (and ``where``, e.g. ``line 7: ``) otherwise.
    Empty text is unset. ``labels`` shows a field by another name (``--base-url``)."""
    from regionsync.settings import check_schedule

    def label(name: str) -> str:
        return (labels or {}).get(name, name)

    def fail(name: str, message: str) -> ConfigError:
        return ConfigError(f"{where}{label(name)}", message)

    def field(name: str) -> str | None:
        value = fields.get(name)
        if value is None or not value.strip():
            return None
        if len(value) > MAX_FIELD_CHARS:
            raise fail(name, f"is over {MAX_FIELD_CHARS} characters")
        if not value.strip().isprintable():
            raise fail(name, "holds a control character or a line break")
        return value.strip()

    name = field("name")
    if name is None:
        raise fail("name", "is required")
    check_account_name(name, setting=f"{where}{label('name')}")
    sid = field("sid")
    if sid is None:
        raise fail("sid", "is required: the account's Kaleyra SID")
    if len(sid) > MAX_SID_CHARS or not all((c.isascii() and c.isalnum()) or c in "-_" for c in sid):
        raise fail("sid", f"must be letters, digits, - and _, at most {MAX_SID_CHARS}")
    pod, base_url = field("pod"), field("base_url")
    if (pod is None) == (base_url is None):
        raise fail("pod", f"give {label('pod')} (in or na) or {label('base_url')}, one of the two")
    if pod is not None:
        pod = pod.lower()
        if pod not in POD_BASE_URLS:
            raise fail("pod", f"must be one of: {', '.join(POD_BASE_URLS)}")
    if base_url is not None:
        base_url = check_url(base_url, setting=f"{where}{label('base_url')}", query=False)
        base_url = base_url.rstrip("/")
    key_env, key_file = field("api_key_env"), field("api_key_file")
    if key_env is not None and key_file is not None:
        raise fail(
            "api_key_env", f"give {label('api_key_env')} or {label('api_key_file')}, not both"
        )
    if key_env is not None and ENV_NAME.fullmatch(key_env) is None:
        raise fail("api_key_env", f"{key_env[:80]!r} is not an environment variable's name")
    if key_file is not None:
        if len(key_file) > MAX_PATH_CHARS or "\x00" in key_file:
            raise fail("api_key_file", "is not a usable path")
        if not PurePosixPath(key_file).is_absolute():
            raise fail(
                "api_key_file",
                f"{key_file[:80]!r} must be an absolute path (every replica reads it from "
                "its own working directory otherwise)",
            )
    schedule = field("schedule")
    if schedule is not None:
        try:
            check_schedule(schedule)
        except ConfigError as error:
            raise fail("schedule", error.problem) from None
    return AccountRow(
        name=name,
        sid=sid,
        pod=pod,
        base_url=base_url,
        api_key_env=key_env,
        api_key_file=key_file,
        schedule=schedule,
    )


def _stored(row: AccountRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in FIELDS}


def list_accounts(connection: Connection, names: Iterable[str] | None = None) -> list[AccountRow]:
    """The accounts by name (only ``names`` when given)."""
    query = sa.select(accounts).order_by(accounts.c.name)
    if names is not None:
        query = query.where(accounts.c.name.in_(list(names)))
    return [AccountRow(**row) for row in connection.execute(query).mappings()]


def get_account(connection: Connection, name: str) -> AccountRow | None:
    found = connection.execute(sa.select(accounts).where(accounts.c.name == name)).mappings()
    row = found.first()
    return None if row is None else AccountRow(**row)


def has_accounts(connection: Connection) -> bool:
    return connection.execute(sa.select(accounts.c.name).limit(1)).first() is not None


def add_account(connection: Connection, row: AccountRow) -> None:
    """Insert a new account; a :class:`ConfigError` when the name is taken."""
    if get_account(connection, row.name) is not None:
        raise ConfigError("NAME", f"an account named {row.name!r} exists already")
    connection.execute(accounts.insert().values(**_stored(row), created_at=now()))


def set_paused(connection: Connection, name: str, *, paused: bool) -> AccountRow:
    """Pause (or resume) an account; returns it as it was before. Pausing a paused account
    keeps the moment it was first paused, even when two sessions pause it at once."""
    before = require_account(connection, name, setting="NAME")
    if paused:
        change = accounts.update().where(accounts.c.paused_at.is_(None)).values(paused_at=now())
    else:
        change = accounts.update().where(accounts.c.paused_at.is_not(None)).values(paused_at=None)
    connection.execute(change.where(accounts.c.name == name))
    return before


def require_account(connection: Connection, name: str, *, setting: str = "--account") -> AccountRow:
    """The account named ``name``; a :class:`ConfigError` naming ``setting`` when there is
    none."""
    found = get_account(connection, name)
    if found is None:
        raise ConfigError(setting, f"no account named {name!r}; see `regionsync accounts list`")
    return found


@dataclass(frozen=True)
class Imported:
    """What ``accounts import`` did: added, changed, and already the same."""

    added: list[str]
    updated: list[str]
    unchanged: list[str]


def import_accounts(connection: Connection, rows: Sequence[AccountRow]) -> Imported:
    """Add or update every row, in the caller's transaction (all or nothing). An existing
    account keeps its ``paused_at`` and ``created_at``; rows equal to the stored ones are
    not written, so importing the same file twice changes nothing."""
    stored = {row.name: row for row in list_accounts(connection, [r.name for r in rows])}
    added, updated, unchanged = [], [], []
    moment = now()
    for row in rows:
        old = stored.get(row.name)
        if old is None:
            connection.execute(accounts.insert().values(**_stored(row), created_at=moment))
            added.append(row.name)
        elif _stored(old) == _stored(row):
            unchanged.append(row.name)
        else:
            connection.execute(
                accounts.update().where(accounts.c.name == row.name).values(**_stored(row))
            )
            updated.append(row.name)
    return Imported(added, updated, unchanged)


#: The tables holding an account's data, children first (history and deliveries reference
#: runs and regions), so that deleting in this order breaks no reference.
DATA_TABLES = (notification_deliveries, region_history, applied_answers, regions, sync_runs)


def account_data(connection: Connection, name: str) -> dict[str, int]:
    """How many rows of each table of :data:`DATA_TABLES` belong to the account."""
    return {
        table.name: connection.execute(
            sa.select(sa.func.count()).select_from(table).where(table.c.account == name)
        ).scalar_one()
        for table in DATA_TABLES
    }


def remove_account(connection: Connection, name: str, *, purge: bool) -> dict[str, int]:
    """Delete an account's row; with ``purge``, its regions, history, runs and deliveries too.
    Returns the rows deleted per table (``accounts``: 0 or 1).

    ``purge`` also deletes the data of a name that has no row (any more, or never had: the
    settings' one account), so that data a removal kept can be deleted later.
    """
    found = get_account(connection, name)
    if found is None and not (purge and any(account_data(connection, name).values())):
        require_account(connection, name, setting="NAME")
    deleted: dict[str, int] = {}
    if purge:
        for table in DATA_TABLES:
            result = connection.execute(table.delete().where(table.c.account == name))
            deleted[table.name] = result.rowcount
    result = connection.execute(accounts.delete().where(accounts.c.name == name))
    deleted["accounts"] = result.rowcount
    return deleted


__all__ = [
    "ACCOUNT_NAME",
    "DATA_TABLES",
    "FIELDS",
    "AccountRow",
    "Imported",
    "account_data",
    "account_row",
    "add_account",
    "check_account_name",
    "get_account",
    "has_accounts",
    "import_accounts",
    "list_accounts",
    "remove_account",
    "require_account",
    "set_paused",
]
