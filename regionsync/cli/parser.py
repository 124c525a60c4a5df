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
from regionsync.settings import LOG_LEVELS

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
    add_schedule(subcommands)
    add_grant_readonly(subcommands)
    add_fake_api(subcommands, options=fake_api)
    add_notifications(subcommands)
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
        description="Fetch the agent's regions and apply them to the database in one transaction.",
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
        help="a saved API response instead of the API (needs no Kaleyra settings)",
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
        "One line per check; exit 0 "
        "when all pass, 1 when any fails, 2 when a setting cannot be read. Writes nothing, "
        "and never creates the embedded SQLite file.",
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
        description="Show recent runs, region counts and the age of the last successful sync. "
        "Exit 0 when that age is under --max-age, else 1.",
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
        "the tables) or as a superuser.",
    )
    grant.add_argument("role", metavar="ROLE", help="an existing PostgreSQL role")
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
