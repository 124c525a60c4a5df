"""``regionsync accounts add|list|pause|resume|remove|import``: the accounts table, by hand or
from a CSV file (docs/accounts.md, *The accounts table*).

Every field is checked by :func:`regionsync.store.accounts.account_row` (the schedule also as
the daemon parses it), so an option and a CSV cell are refused with the same words. An account
says where its API key is, never what it is: nothing here reads a key.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from regionsync.cli import output, terminal
from regionsync.cli.commands import EXIT_OK, _database
from regionsync.errors import ConfigError, RegionSyncError
from regionsync.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from regionsync.store.accounts import AccountRow

#: How ``accounts add`` names each field in its messages: by its option.
OPTION_LABELS = {
    "name": "NAME",
    "sid": "--sid",
    "pod": "--pod",
    "base_url": "--base-url",
    "api_key_env": "--api-key-env",
    "api_key_file": "--api-key-file",
    "schedule": "--schedule",
}
#: Bounds of ``accounts import``'s file: far past any real fleet, small enough to hold.
MAX_IMPORT_BYTES = 64 * 1024 * 1024
MAX_IMPORT_LINES = 100_000


@contextmanager
def _migrated(settings: Settings, action: str) -> Iterator[Engine]:
    """The configured database, migrated to head (else exit 2), its errors translated."""
    from regionsync.store.engine import translated_errors
    from regionsync.store.schema import require_current

    with _database(settings) as engine, translated_errors(action):
        require_current(engine)
        yield engine


def _checked(
    fields: Mapping[str, str | None],
    settings: Settings,
    *,
    where: str = "",
    labels: Mapping[str, str] | None = None,
) -> AccountRow:
    """The row, every field checked, the schedule as the daemon will parse it."""
    from regionsync.daemon.schedule import parse_schedule
    from regionsync.store.accounts import account_row

    row = account_row(fields, where=where, labels=labels)
    if row.schedule is not None:
        try:
            parse_schedule(row.schedule, settings.timezone)
        except ConfigError as error:
            label = (labels or {}).get("schedule", "schedule")
            raise ConfigError(f"{where}{label}", error.problem) from None
    return row


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.store.accounts import add_account

    fields = {name: getattr(args, name) for name in OPTION_LABELS}
    row = _checked(fields, settings, labels=OPTION_LABELS)
    with _migrated(settings, "adding the account") as engine, engine.begin() as connection:
        add_account(connection, row)
    print(terminal.clean(f"added account {row.name} ({_describe(row)})", limit=None))
    if row.api_key_env is None and row.api_key_file is None and not args.quiet:
        print(terminal.clean(_keys_dir_note(row, settings), limit=None))
    return EXIT_OK


def _describe(row: AccountRow) -> str:
    endpoint = f"pod {row.pod}" if row.pod is not None else row.endpoint
    key = row.key_source
    if row.api_key_env is None and row.api_key_file is None:
        key = f"REGIONSYNC_API_KEYS_DIR/{row.name}"
    shown = f"SID {row.sid}, {endpoint}, key from {key}"
    return shown if row.schedule is None else f"{shown}, schedule {row.schedule}"


def _keys_dir_note(row: AccountRow, settings: Settings) -> str:
    """Where a key given by neither option is read from, and whether that is set here."""
    note = f"note: no --api-key-env or --api-key-file: the key is read from the file {row.name}"
    if settings.api_keys_dir is None:
        where = "set it where the account is synced"
        return f"{note} in REGIONSYNC_API_KEYS_DIR, which is not set here: {where}"
    return f"{note} in REGIONSYNC_API_KEYS_DIR (here {settings.api_keys_dir / row.name})"


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.store.accounts import list_accounts

    with _migrated(settings, "reading the accounts") as engine, engine.connect() as connection:
        rows = list_accounts(connection)
    output.print_accounts(rows, as_json=args.json, implicit=settings.account)
    return EXIT_OK


def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    return _set_paused(args.name, settings, paused=True)


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    return _set_paused(args.name, settings, paused=False)


def _set_paused(name: str, settings: Settings, *, paused: bool) -> int:
    from regionsync.store.accounts import set_paused

    action = "pausing the account" if paused else "resuming the account"
    with _migrated(settings, action) as engine, engine.begin() as connection:
        before = set_paused(connection, name, paused=paused)
    if before.paused_at is None:
        print(f"paused account {name}" if paused else f"account {name} was not paused")
        return EXIT_OK
    since = f"{terminal.cell(before.paused_at)} UTC"
    if paused:
        print(f"account {name} was already paused since {since}")
    else:
        print(f"resumed account {name} (paused since {since})")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.settings import check_account_name
    from regionsync.store.accounts import account_data, remove_account
    from regionsync.store.lock import sync_lock

    name = check_account_name(args.name)
    with _migrated(settings, "removing the account") as engine:
        if not args.purge:
            with engine.begin() as connection:
                remove_account(connection, name, purge=False)
                kept = account_data(connection, name)
            print(output.removed_account(name, kept, purged=False))
            return EXIT_OK
        # A run of the account in progress would write rows the purge just deleted.
        with sync_lock(engine, name) as locked:
            if locked is None:
                raise RegionSyncError(
                    f"a sync of account {name} is running (it holds the account's lock): "
                    "nothing was removed; try again when it has finished"
                )
            with locked.begin():
                deleted = remove_account(locked, name, purge=True)
    print(output.removed_account(name, deleted, purged=True))
    return EXIT_OK


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.store.accounts import import_accounts

    shown = "stdin" if args.file == "-" else args.file
    rows = read_accounts_csv(_read_bounded(args.file), settings, shown=shown)
    with _migrated(settings, "importing the accounts") as engine, engine.begin() as connection:
        done = import_accounts(connection, rows)
    print(
        terminal.clean(
            f"imported {shown}: {len(done.added)} added, {len(done.updated)} updated, "
            f"{len(done.unchanged)} unchanged",
            limit=None,
        )
    )
    return EXIT_OK


def _read_bounded(file: str) -> bytes:
    """The file's bytes (``-``: stdin's), refused past :data:`MAX_IMPORT_BYTES`."""
    shown = "stdin" if file == "-" else file
    try:
        if file == "-":
            data = sys.stdin.buffer.read(MAX_IMPORT_BYTES + 1)
        else:
            with Path(file).open("rb") as handle:
                data = handle.read(MAX_IMPORT_BYTES + 1)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError("FILE", f"cannot read {shown}: {reason}") from None
    if len(data) > MAX_IMPORT_BYTES:
        raise ConfigError(
            "FILE", f"{shown} is over {MAX_IMPORT_BYTES // (1024 * 1024)} MiB: not an accounts file"
        )
    return data


def read_accounts_csv(data: bytes, settings: Settings, *, shown: str) -> list[AccountRow]:
    """The accounts of a CSV file, every line checked; the first bad one is a
    :class:`ConfigError` naming the file, the line and the field.

    The header names some of :data:`~regionsync.store.accounts.FIELDS` (``name`` and ``sid``
    at least), in any order; an empty cell is unset; blank lines are skipped.
    """
    from regionsync.store.accounts import FIELDS

    def fail(line: int, problem: str) -> ConfigError:
        return ConfigError(f"{shown}: line {line}", problem)

    if data.count(b"\n") > MAX_IMPORT_LINES:
        raise ConfigError("FILE", f"{shown} has over {MAX_IMPORT_LINES:,} lines")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise fail(line, "is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    columns: list[str] | None = None
    rows: list[AccountRow] = []
    seen: dict[str, int] = {}
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise fail(reader.line_num or start, f"is not valid CSV ({error})") from None
        if not any(cell.strip() for cell in record):
            continue
        if columns is None:
            columns = _header(record, where=f"{shown}: line {start}")
            continue
        if len(record) != len(columns):
            raise fail(start, f"has {len(record)} fields, the header names {len(columns)}")
        where = f"{shown}: line {start}: "
        row = _checked(dict(zip(columns, record, strict=True)), settings, where=where)
        if row.name in seen:
            raise fail(start, f"name: {row.name!r} is on line {seen[row.name]} too")
        seen[row.name] = start
        rows.append(row)
    if columns is None:
        raise ConfigError(shown, f"is empty: expected a header line naming {', '.join(FIELDS)}")
    return rows


def _header(record: list[str], *, where: str) -> list[str]:
    from regionsync.store.accounts import FIELDS

    columns = [cell.strip().lower() for cell in record]
    for column in columns:
        if column not in FIELDS:
            raise ConfigError(
                where,
                f"unknown column {column[:40]!r} in the header; the columns are "
                f"{', '.join(FIELDS)}",
            )
        if columns.count(column) > 1:
            raise ConfigError(where, f"the header names column {column!r} twice")
    missing = [name for name in ("name", "sid") if name not in columns]
    if missing:
        raise ConfigError(where, f"the header lacks the column(s) {', '.join(missing)}")
    return columns


__all__ = [
    "cmd_add",
    "cmd_import",
    "cmd_list",
    "cmd_pause",
    "cmd_remove",
    "cmd_resume",
    "read_accounts_csv",
]
