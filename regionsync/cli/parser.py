"""``regionsync``'s options: one function per command adds it, its options and its handler.

Every command also takes the global options (``--env-file``, ``-q``, ``-v``), before or after
its name. The handlers are looked up in :mod:`regionsync.cli.commands` each time a parser is
built.
"""

from __future__ import annotations

import argparse
import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from regionsync import __version__
from regionsync.cli import commands
from regionsync.durations import MAX_DURATION, parse_duration
from regionsync.errors import ConfigError
from regionsync.settings import LOG_LEVELS, check_account_name

#: The most rows (or fire times) a command is asked for: far past any page a person reads,
#: well inside every integer type a database or SQLite binds.
MAX_COUNT = 1_000_000
#: The ISO times ``--since`` takes (docs/commands.md, *Options are bounded*): each stays a
#: valid date on PostgreSQL, SQLite and in Python once moved to UTC by any offset.
SINCE_RANGE = (datetime(1900, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))


def build_parser(*, fake_api: bool = True) -> argparse.ArgumentParser:
    """Every command and its options; ``fake_api=False`` leaves out ``fake-api``'s own
    options, which import the fake server for nothing."""
    parser = argparse.ArgumentParser(
        prog="regionsync",
        description="Keep a database of a Kaleyra RCS agent's regions and their history.",
        epilog="Settings come from the environment; see docs/settings.md. "
        f"REGIONSYNC_LOG_LEVEL is one of {', '.join(LOG_LEVELS)}. "
        "Exit codes: 0 ok or skipped, 1 sync failed, 2 bad configuration or usage.",
    )
    parser.add_argument("--version", action="version", version=f"regionsync {__version__}")
    add_global_options(parser, top=True)
    subcommands = Subcommands(
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    )
    add_run(subcommands)
    add_check(subcommands)
    add_regions(subcommands)
    add_changes(subcommands)
    add_migrate(subcommands)
    add_status(subcommands)
    add_daemon(subcommands)
    add_worker(subcommands)
    add_schedule(subcommands)
    add_grant_readonly(subcommands)
    add_fake_api(subcommands, options=fake_api)
    add_notifications(subcommands)
    add_accounts(subcommands)
    return parser


class Subcommands:
    """``add_subparsers()``, giving every command the global options too."""

    def __init__(self, action: Any) -> None:
        self._action = action

    def add_parser(self, name: str, **options: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(name, **options)
        if options.get("add_help", True):
            add_global_options(parser, top=False)
        return parser


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, before or after its name.

    After the name they default to SUPPRESS, so that they do not undo what was given
    before it (argparse's subparser defaults would overwrite it).
    """
    default: Any = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="read settings from this .env-style file too (the environment wins)",
        **({"default": None} if top else default),
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the result line, or the error once; no log lines (the daemon "
        "still logs warnings and errors)",
        **({"default": False} if top else default),
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log DEBUG lines too",
        **({"default": False} if top else default),
    )


# One function per command, in the order ``--help`` lists them ----------------------------


def add_run(subcommands: Subcommands) -> None:
    run = subcommands.add_parser(
        "run",
        help="sync once (for cron)",
        description="Fetch the agent's regions and apply them to the database in one transaction. "
        "With accounts in the accounts table, name one with --account, or sync each unpaused "
        "one with --all (in name order, one line each; exit 1 when any failed).",
    )
    which = run.add_mutually_exclusive_group()
    which.add_argument(
        "--account",
        type=_account_name,
        metavar="NAME",
        help="sync this account (needed when the accounts table holds more than one)",
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="sync every unpaused account once, in name order; a failure does not stop the rest",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="fetch, validate and print what would change; write nothing",
    )
    run.add_argument(
        "--from-file",
        type=Path,
        metavar="PATH",
        help="a saved API response instead of the API (needs no Kaleyra settings); its "
        "records go to the account synced",
    )
    run.add_argument(
        "--allow-mass-removal",
        action="store_true",
        help="apply even if more than REGIONSYNC_MAX_REMOVAL_FRACTION of the active regions "
        "would be removed",
    )
    run.add_argument(
        "--fail-on-reject",
        action="store_true",
        help="exit 1 when any record was rejected (after applying the rest), for cron and "
        "monitoring built on exit codes",
    )
    run.set_defaults(handler=commands.cmd_run)


def add_check(subcommands: Subcommands) -> None:
    check = subcommands.add_parser(
        "check",
        help="check the settings, database, schema, Kaleyra and metrics port; writes nothing",
        description="Check that this deployment is ready: the settings and the schedule, the "
        "database (and whether `regionsync migrate` is needed), on PostgreSQL whether a run "
        "could write (naming any missing right), Kaleyra with the configured key (one GET), "
        "and the metrics port and the webhook's host (connected to, sent nothing) when set. "
        "With accounts in the accounts table, each one's key (found, never shown) and API "
        "(one GET). One line per check; exit 0 "
        "when all pass, 1 when any fails, 2 when a setting cannot be read. Writes nothing, "
        "and never creates the embedded SQLite file.",
    )
    check.add_argument(
        "--account",
        type=_account_name,
        metavar="NAME",
        help="check only this account's key and API (a paused one too)",
    )
    check.set_defaults(handler=commands.cmd_check)


def add_regions(subcommands: Subcommands) -> None:
    regions = subcommands.add_parser(
        "regions",
        help="the current regions as a table, JSON or CSV",
        description="List the regions in the database, by display name: the present ones "
        "unless a filter says otherwise. Control characters in names are shown escaped.",
    )
    states = regions.add_mutually_exclusive_group()
    for state, text in (
        ("enabled", "present regions with carrier_enabled"),
        ("disabled", "present regions without carrier_enabled"),
        ("removed", "regions absent from the API since their removed_at"),
        ("all", "every region ever seen, present or removed"),
    ):
        states.add_argument(
            f"--{state}", dest="state", action="store_const", const=state, help=text
        )
    regions.set_defaults(state="active")
    regions.add_argument(
        "--hosting-region", metavar="NAME", help="only regions hosted in NAME (exact match)"
    )
    _account_filter(regions, "regions")
    _output_options(regions, csv_too=True, limit=1000)
    regions.set_defaults(handler=commands.cmd_regions)


def add_changes(subcommands: Subcommands) -> None:
    changes = subcommands.add_parser(
        "changes",
        help="the history of changes, newest first",
        description="List region_history rows, newest first, with each region's current "
        "display name: added, changed (carrier_enabled or hosting_region), removed, restored.",
    )
    changes.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="only changes since then: a duration back from now (90m, 24h, 7d) or an ISO "
        "time (2026-11-27T06:00, UTC unless it gives an offset)",
    )
    changes.add_argument("--region", metavar="ID", help="only this region's changes")
    _account_filter(changes, "changes")
    _output_options(changes, csv_too=False, limit=100)
    changes.set_defaults(handler=commands.cmd_changes)


def add_migrate(subcommands: Subcommands) -> None:
    migrate = subcommands.add_parser(
        "migrate",
        help="create or upgrade the schema (alembic upgrade head)",
        description="Upgrade the database schema to the latest revision; safe to run again.",
    )
    migrate.set_defaults(handler=commands.cmd_migrate)


def add_status(subcommands: Subcommands) -> None:
    status = subcommands.add_parser(
        "status",
        help="recent runs and data freshness (a health check)",
        description="Show each account's state (ok, overdue, stale, failing, never, paused), "
        "last success, how long it has been due (! when overdue: due for longer than a period "
        "of its schedule), failures and regions; for one account (--account, or the only one) "
        "its recent runs too. Exit 0 when the last success of every unpaused account is "
        "younger than --max-age, else 1.",
    )
    status.add_argument(
        "--account",
        type=_account_name,
        metavar="NAME",
        help="only this account, with its recent runs",
    )
    status.add_argument(
        "--max-age",
        type=_duration,
        default=timedelta(hours=3),
        metavar="DURATION",
        help="the freshness limit, e.g. 90m, 3h, 1d (default 3h)",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--limit",
        type=_positive,
        default=10,
        metavar="N",
        help="how many recent runs to show (default 10)",
    )
    status.set_defaults(handler=commands.cmd_status)


def add_daemon(subcommands: Subcommands) -> None:
    daemon = subcommands.add_parser(
        "daemon",
        help="sync at start, then on REGIONSYNC_SCHEDULE, until SIGTERM or SIGINT",
        description="Run as a long-lived process: a sync at start, then on REGIONSYNC_SCHEDULE. "
        "With REGIONSYNC_METRICS_PORT set, serves /healthz and /metrics. The first SIGTERM or "
        "SIGINT lets a sync in progress finish and exits 0; a second one exits at once.",
    )
    daemon.set_defaults(handler=commands.cmd_daemon)


def add_worker(subcommands: Subcommands) -> None:
    worker = subcommands.add_parser(
        "worker",
        help="one replica of the fleet: sync the accounts through the task queue (PostgreSQL)",
        description="Run one replica of the fleet (docs/fleet.md): any number of workers "
        "share the accounts through a task queue in the database, each account synced once "
        "per period (its schedule, else REGIONSYNC_SCHEDULE), never twice at once. SIGTERM "
        "or SIGINT lets the running syncs finish and exits 0.",
    )
    worker.add_argument(
        "--concurrency",
        type=_positive,
        default=16,
        metavar="N",
        help="syncs run side by side in this process (default: 16)",
    )
    worker.set_defaults(handler=commands.cmd_worker)


def add_schedule(subcommands: Subcommands) -> None:
    schedule = subcommands.add_parser(
        "schedule",
        help="print the next fire times of REGIONSYNC_SCHEDULE",
        description="Print the next fire times of REGIONSYNC_SCHEDULE in REGIONSYNC_TIMEZONE, "
        "ISO 8601, one per line (for an interval: after a daemon started now, which also "
        "syncs at once).",
    )
    schedule.add_argument(
        "--count",
        type=_positive,
        default=5,
        metavar="N",
        help="how many fire times to print (default 5)",
    )
    schedule.set_defaults(handler=commands.cmd_schedule)


def add_grant_readonly(subcommands: Subcommands) -> None:
    grant = subcommands.add_parser(
        "grant-readonly",
        help="let a PostgreSQL role read every table and view, and nothing else",
        description="Grant ROLE read access to every regionsync table and view, including "
        "ones later migrations add. Connect as the user that runs `regionsync migrate` (it owns "
        "the tables) or as a superuser. With --account, only that account's rows of the "
        "tables and views there are now: run it again after a migration.",
    )
    grant.add_argument("role", metavar="ROLE", help="an existing PostgreSQL role")
    grant.add_argument(
        "--account",
        metavar="NAME",
        help="let ROLE read only this account's rows, through row-level security; run again "
        "with another account to add it",
    )
    grant.add_argument(
        "--print",
        action="store_true",
        help="print the SQL it would run, labelled as not executed, instead of running it "
        "(the role need not exist yet)",
    )
    grant.set_defaults(handler=commands.cmd_grant_readonly)


def add_fake_api(subcommands: Subcommands, *, options: bool) -> None:
    """``options=False`` leaves out the fake's own options, which import the fake server."""
    fake = subcommands.add_parser(
        "fake-api",
        help="serve a fake Kaleyra API on loopback, for trials and tests",
        description="Serve a fake Kaleyra API on loopback until SIGINT or SIGTERM; -q: do not "
        "log each request. It reads no setting (a bad one still exits 2, as for any command).",
    )
    if options:
        from regionsync.testing import fakeapi

        fakeapi.add_options(fake)
    fake.set_defaults(handler=functools.partial(commands.cmd_fake_api, parser=fake))


def add_notifications(subcommands: Subcommands) -> None:
    notifications = subcommands.add_parser(
        "notifications",
        help="list pending and failed webhook deliveries; --retry ID retries one",
        description="List the webhook deliveries not yet accepted by the receiver (pending, "
        "or failed: given up). --retry ID delivers a failed one again now (exit 0 when "
        "delivered, or skipped because another delivery pass is running; 1 when not).",
    )
    notifications.add_argument("--json", action="store_true", help="print JSON")
    notifications.add_argument(
        "--limit", type=_positive, default=100, metavar="N", help="show at most N (default 100)"
    )
    notifications.add_argument("--retry", metavar="ID", help="deliver this one again now")
    notifications.set_defaults(handler=commands.cmd_notifications)


def add_accounts(subcommands: Subcommands) -> None:
    """``accounts add|list|pause|resume|remove|import``, handled in
    :mod:`regionsync.cli.accounts`."""
    from regionsync.cli import accounts as handlers

    group = subcommands.add_parser(
        "accounts",
        help="add, list, pause, resume, remove or import the Kaleyra accounts synced",
        description="Manage the accounts table: the Kaleyra accounts this deployment syncs, "
        "one row each, saying where each one's API key is (never the key). While the table "
        "is empty, the KALEYRA_* settings are the one account, named by REGIONSYNC_ACCOUNT.",
    )
    actions = Subcommands(group.add_subparsers(dest="action", required=True, metavar="ACTION"))

    add = actions.add_parser(
        "add",
        help="add an account",
        usage="regionsync accounts add NAME --sid SID (--pod {in,na} | --base-url URL) "
        "[--api-key-env VAR | --api-key-file PATH] [--schedule SPEC] [options]",
        description="Add an account. Its API key is read when it syncs: from the variable "
        "--api-key-env names, the file --api-key-file names, or else the file NAME in "
        "REGIONSYNC_API_KEYS_DIR. Exit 2 when a field is malformed or NAME is taken.",
    )
    add.add_argument("name", metavar="NAME", help="lowercase letters, digits, - and _; at most 63")
    add.add_argument("--sid", metavar="SID", help="the account's Kaleyra SID (required)")
    add.add_argument("--pod", metavar="{in,na}", help="Kaleyra's pod (or --base-url)")
    add.add_argument(
        "--base-url",
        metavar="URL",
        help="the API's base URL instead of a pod: https://, or http:// to a loopback host",
    )
    add.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="the environment variable holding the key (KALEYRA_API_KEY_<NAME> is not warned "
        "about as an unknown setting)",
    )
    add.add_argument(
        "--api-key-file", metavar="PATH", help="the file holding the key: an absolute path"
    )
    add.add_argument(
        "--schedule",
        metavar="SPEC",
        help="the account's own schedule, as REGIONSYNC_SCHEDULE (15m, or a crontab "
        "expression); default: REGIONSYNC_SCHEDULE",
    )
    add.set_defaults(handler=handlers.cmd_add)

    listing = actions.add_parser(
        "list",
        help="list the accounts (never a key)",
        description="List the accounts: name, SID, endpoint, where the key is read from, "
        "schedule, since when paused, and when added.",
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=handlers.cmd_list)

    for name, handler, text in (
        ("pause", handlers.cmd_pause, "stop syncing an account until it is resumed"),
        ("resume", handlers.cmd_resume, "sync a paused account again"),
    ):
        action = actions.add_parser(
            name, help=text, description=f"{text[0].upper()}{text[1:]}; safe to repeat."
        )
        action.add_argument("name", metavar="NAME", help="the account")
        action.set_defaults(handler=handler)

    remove = actions.add_parser(
        "remove",
        help="remove an account; its data stays unless --purge",
        description="Remove an account's row. Its regions, history, runs and deliveries stay "
        "(adding the name again picks them up) unless --purge deletes them too, in the same "
        "transaction; --purge also deletes the data of a name removed earlier.",
    )
    remove.add_argument("name", metavar="NAME", help="the account")
    remove.add_argument(
        "--purge", action="store_true", help="delete its regions, history, runs and deliveries"
    )
    remove.set_defaults(handler=handlers.cmd_remove)

    imports = actions.add_parser(
        "import",
        help="add or update accounts from a CSV file, all or nothing",
        description="Add or update the accounts of a CSV file (UTF-8) whose header names "
        "some of name,sid,pod,base_url,api_key_env,api_key_file,schedule (name and sid at "
        "least; an empty cell is unset). All or nothing: the first bad line is named and "
        "nothing changes (exit 2). Importing the same file again changes nothing; accounts "
        "not in the file are left as they are, and a paused account stays paused.",
    )
    imports.add_argument("file", metavar="FILE", help="the CSV file; - reads stdin")
    imports.set_defaults(handler=handlers.cmd_import)


# Options shared by commands, and the types of option values ------------------------------


def _output_options(parser: argparse.ArgumentParser, *, csv_too: bool, limit: int) -> None:
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if csv_too:
        formats.add_argument(
            "--csv",
            action="store_true",
            help="print CSV instead of a table, safe to open in a spreadsheet: a cell "
            "starting with = + - @ tab or CR gets a leading ' and control characters are escaped",
        )
        formats.add_argument(
            "--csv-raw",
            action="store_true",
            help="print CSV with the values exactly as stored, for programs (not for a "
            "spreadsheet or a terminal)",
        )
    parser.add_argument(
        "--limit",
        type=_positive,
        default=limit,
        metavar="N",
        help=f"show at most N rows (default {limit}); stderr says when there were more",
    )


def _account_filter(parser: argparse.ArgumentParser, noun: str) -> None:
    parser.add_argument(
        "--account",
        type=_account_name,
        metavar="NAME",
        help=f"only this account's {noun} (default: every account's, with an account column "
        "when more than one has any)",
    )


def _account_name(text: str) -> str:
    """An account's name as the accounts table spells them (a usage error otherwise)."""
    try:
        return check_account_name(text, setting="--account")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(error.problem) from None


def _duration(text: str) -> timedelta:
    delta = parse_duration(text)
    if delta is None:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a duration from 1s to {MAX_DURATION.days}d, like 90m, 3h or 1d"
        )
    return delta


def _positive(text: str) -> int:
    """A count from 1 to :data:`MAX_COUNT`, in ASCII digits (as every setting)."""
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 7 else 0
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a whole number from 1 to {MAX_COUNT}"
        )
    return value


def _since(text: str) -> datetime:
    """``24h`` (that long ago) or an ISO 8601 time (UTC when it names no offset), in UTC."""
    delta = parse_duration(text)
    if delta is not None:
        return datetime.now(UTC) - delta
    earliest, latest = SINCE_RANGE
    try:
        moment = datetime.fromisoformat(text.strip()) if text.isascii() else None
    except ValueError:
        moment = None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment is None or not earliest <= moment <= latest:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is neither a duration from 1s to {MAX_DURATION.days}d (90m, 24h, 7d) "
            f"nor an ISO time from {earliest.year} to {latest.year - 1} (2026-11-27T06:00)"
        )
    return moment.astimezone(UTC)


__all__ = ["build_parser"]
