"""The command line: parse options, call the library, turn its errors into exit codes.

Exit codes: 0 success (or skipped: another sync holds the lock), 1 the sync failed,
2 bad configuration or usage. Expected failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gc
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.engine import Engine

from regionsync import __version__, logs
from regionsync.cli import terminal
from regionsync.durations import MAX_DURATION, format_duration, parse_duration
from regionsync.errors import ConfigError, RegionSyncError
from regionsync.settings import (
    LOG_LEVELS,
    Settings,
    environment_warnings,
    logging_hints,
    read_env_file,
)

if TYPE_CHECKING:
    from regionsync.status import StatusReport
    from regionsync.store.browse import Page
    from regionsync.sync import SyncResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace, Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    # Safe logging first, before anything can fail: no locals, secrets scrubbed.
    fmt, secrets = logging_hints(os.environ)
    logs.configure(fmt=fmt, secrets=secrets)
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        # Inside the boundary: an option's parser that fails unexpectedly is one line too.
        args = build_parser(fake_api="fake-api" in arguments).parse_args(arguments)
        if args.quiet and args.verbose:
            print("regionsync: error: -q and -v cannot be used together", file=sys.stderr)
            return EXIT_USAGE
        env = load_environment(args.env_file)
        fmt, secrets = logging_hints(env)
        logs.configure(fmt=fmt, secrets=secrets)
        settings = Settings.from_env(env)
        secrets = (*secrets, *settings.secrets)
        logs.configure(level=_log_level(args, settings), fmt=settings.log_format, secrets=secrets)
        for warning in environment_warnings(env):
            structlog.get_logger("regionsync").warning(**warning)
        handler: Handler = args.handler
        return handler(args, settings)
    except RegionSyncError as error:
        message = terminal.clean(logs.redact(str(error), secrets), limit=None)
        print(f"regionsync: error: {message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("regionsync: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug still gets one line and exit 1
        # CRITICAL: the traceback the line below points to is logged even under -q.
        structlog.get_logger("regionsync").critical("internal_error", exc_info=True)
        message = logs.redact(f"{type(error).__name__}: {error}", secrets)
        print(f"regionsync: internal error: {message} (details in the log)", file=sys.stderr)
        return EXIT_FAILED


def _log_level(args: argparse.Namespace, settings: Settings) -> str:
    """``-v`` adds DEBUG; else the setting. ``-q`` leaves a command its result line, or its
    error line, alone (cron mails the output): no log lines but a bug's. The daemon has no
    result line, so under ``-q`` it logs its warnings and errors."""
    if args.quiet:
        return "WARNING" if args.command == "daemon" else "CRITICAL"
    if args.verbose:
        return "DEBUG"
    return settings.log_level


def load_environment(env_file: Path | None) -> dict[str, str]:
    """The environment, on top of an optional ``.env`` file."""
    env: dict[str, str] = {}
    if env_file is not None:
        env.update(read_env_file(env_file))
    env.update(os.environ)
    return env


@contextmanager
def _database(settings: Settings) -> Iterator[Engine]:
    """An engine for the configured database, disposed of when the command ends."""
    from regionsync.store.engine import create_engine

    if settings.embedded_database:
        structlog.get_logger("regionsync").info(
            "database.embedded", path=settings.database_url.database
        )
    engine = create_engine(settings)
    try:
        yield engine
    finally:
        engine.dispose()


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.store.schema import migrate

    with _database(settings) as engine:
        before, after = migrate(engine)
    where = settings.database_display
    if settings.database_url.get_backend_name() != "sqlite":
        where += f" schema {settings.db_schema}"  # one account per schema: say which
    if before == after:
        print(f"database {where} is up to date (revision {after})")
    else:
        print(f"database {where} migrated: {before or 'empty'} -> {after}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.notify.outbox import OutboxPolicy
    from regionsync.records import Source
    from regionsync.sync import Guard, preview, run_sync

    source: Source
    if args.from_file:
        from regionsync.source.saved import FileSource

        _require_readable(args.from_file)
        source = FileSource(args.from_file)
    else:
        config = settings.require_kaleyra()
        from regionsync.source.kaleyra import KaleyraClient  # requests is imported only when used

        source = KaleyraClient(config)
    guard = Guard.from_settings(settings, allow_mass_removal=args.allow_mass_removal)
    notify = OutboxPolicy.from_settings(settings.notifications)
    with _database(settings) as engine:
        if args.dry_run:
            result = preview(engine, source, guard=guard)
            _print_plan(result)
            return _rejects_verdict(args, result.counts.rejected)
        try:
            result = run_sync(engine, source, trigger="cli", guard=guard, notify=notify)
        except RegionSyncError:
            _print_notifications(engine, settings, quiet=args.quiet)  # earlier runs' go out
            raise
        if result.status == "skipped":
            print(f"run {result.run_id} skipped: {result.reason}")
        else:
            print(
                f"run {result.run_id} {result.status} in {result.duration:.2f}s: {_counts(result)}"
            )
        _print_notifications(engine, settings, quiet=args.quiet)
    return _rejects_verdict(args, result.counts.rejected)


def _require_readable(path: Path) -> None:
    """A usage error, found before a run starts (so no run row): exit 2."""
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError("--from-file", f"cannot read {path}: {reason}") from None


def _rejects_verdict(args: argparse.Namespace, rejected: int) -> int:
    """``--fail-on-reject``: the rest was applied, but monitoring should see bad data."""
    if args.fail_on_reject and rejected:
        noun = "record was" if rejected == 1 else "records were"
        print(f"regionsync: error: {rejected} {noun} rejected (--fail-on-reject)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _counts(result: SyncResult) -> str:
    return ", ".join(f"{k} {v}" for k, v in result.counts.as_dict().items())


def _print_plan(result: SyncResult) -> None:
    print(f"dry run, nothing written: {_counts(result)}")
    for change in result.changes:
        shown = "; ".join(
            f"{name}: {before!r} -> {after!r}" for name, (before, after) in change.fields.items()
        )
        if change.raw_changed:
            shown = f"{shown}; raw changed" if shown else "raw changed"
        print(f"  {change.kind:<8} {change.region_id}  {shown}  ({change.display_name})")


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.status import gather

    with _database(settings) as engine:
        report = gather(engine, limit=args.limit)
    fresh = report.is_fresh(args.max_age)
    if args.json:
        print(
            json.dumps(
                {
                    **report.as_json(),
                    "fresh": fresh,
                    "max_age_seconds": args.max_age.total_seconds(),
                },
                indent=2,
            )
        )
    else:
        _print_status(report, args.max_age, fresh, brief=args.quiet)
    return EXIT_OK if fresh else EXIT_FAILED


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.cli.check import run_checks

    failed = total = 0
    for outcome in run_checks(settings):
        total += 1
        failed += not outcome.ok
        if not (args.quiet and outcome.ok):
            mark = "✓" if outcome.ok else "✗"
            print(f"{mark} {outcome.name}: {terminal.clean(outcome.detail, limit=None)}")
    if failed:
        print(f"{failed} of {total} checks failed")
        return EXIT_FAILED
    print(f"all {total} checks passed")
    return EXIT_OK


def cmd_regions(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.store.browse import REGION_COLUMNS, regions

    with _database(settings) as engine:
        page = regions(
            engine, state=args.state, hosting_region=args.hosting_region, limit=args.limit
        )
    shown: tuple[str, ...] = (
        "id",
        "display_name",
        "carrier_enabled",
        "hosting_region",
        "updated_at",
    )
    if args.state in ("removed", "all"):
        shown += ("removed_at",)
    _print_page(args, page, REGION_COLUMNS, shown, noun="regions")
    return EXIT_OK


def cmd_changes(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.store.browse import CHANGE_COLUMNS, Page, changes

    with _database(settings) as engine:
        page = changes(engine, since=args.since, region_id=args.region, limit=args.limit)
    rows = [
        {
            **row,
            "carrier_enabled": _transition(
                row["carrier_enabled_before"], row["carrier_enabled_after"]
            ),
            "hosting_region": _transition(
                row["hosting_region_before"], row["hosting_region_after"]
            ),
        }
        for row in page.rows
    ]
    shown = (
        "changed_at",
        "change",
        "region_id",
        "display_name",
        "carrier_enabled",
        "hosting_region",
        "sync_run_id",
    )
    _print_page(args, Page(rows, page.total), CHANGE_COLUMNS, shown, noun="changes")
    return EXIT_OK


def _transition(before: Any, after: Any) -> str:
    text = [terminal.cell(before, limit=40) or "-", terminal.cell(after, limit=40) or "-"]
    return text[1] if before == after else " -> ".join(text)


def _print_page(
    args: argparse.Namespace,
    page: Page,
    columns: Sequence[str],
    shown: Sequence[str],
    *,
    noun: str,
) -> None:
    """A page of rows as a table, JSON or CSV; a cut list is reported on stderr."""
    if args.json:
        records = [{name: _json_value(row[name]) for name in columns} for row in page.rows]
        print(json.dumps(records, indent=2))
    elif getattr(args, "csv", False) or getattr(args, "csv_raw", False):
        raw = getattr(args, "csv_raw", False)
        # Raw text may hold a CR, which csv quotes only when told to quote every field.
        writer = csv.writer(
            sys.stdout, lineterminator="\n", quoting=csv.QUOTE_ALL if raw else csv.QUOTE_MINIMAL
        )
        writer.writerow(columns)
        for row in page.rows:
            writer.writerow([terminal.csv_cell(row[name], raw=raw) for name in columns])
    elif not page.rows:
        print(f"no {noun}")
    else:
        cells = [[terminal.cell(row[name]) for name in shown] for row in page.rows]
        for line in terminal.table(shown, cells):
            print(line)
    if page.truncated:
        print(
            f"regionsync: showing {len(page.rows)} of {page.total} {noun}; use --limit for more",
            file=sys.stderr,
        )


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def cmd_daemon(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.daemon.loop import run_daemon

    return run_daemon(settings)


def cmd_fake_api(
    args: argparse.Namespace, settings: Settings, *, parser: argparse.ArgumentParser
) -> int:
    """The fake server, whose option errors ``parser`` reports (exit 2, as argparse's)."""
    from regionsync.testing import fakeapi

    return fakeapi.serve(args, parser)


def cmd_schedule(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.daemon.schedule import SEARCH_YEARS, next_fire_times

    moments = next_fire_times(settings, args.count)
    for moment in moments:
        print(moment.isoformat())
    if len(moments) < args.count:
        print(
            f"regionsync: only {len(moments)} fire time(s) of {settings.schedule!r} in the next "
            f"{SEARCH_YEARS} years (a whole calendar cycle): it never fires after that",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_grant_readonly(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.store.grants import grant_readonly, quote_identifier, readable_by

    with _database(settings) as engine:
        statements = grant_readonly(engine, args.role, execute=not args.print)
        readable = None if args.print else readable_by(engine, args.role)
    if readable is None:
        print("-- NOT EXECUTED: the SQL `regionsync grant-readonly` would run")
        for statement in statements:
            print(terminal.clean(f"{statement};", limit=None))
        return EXIT_OK
    who, names = quote_identifier(args.role), readable.relations
    where = f"schema {quote_identifier(readable.schema)} of database "
    where += quote_identifier(readable.database)
    print(
        terminal.clean(
            f"granted role {who} read access to {len(names)} tables and views in {where}, "
            "and to those later migrations add",
            limit=None,
        )
    )
    print(terminal.clean(f"{who} can now read: {', '.join(names)}", limit=None))
    return EXIT_OK


def _print_status(
    report: StatusReport, max_age: timedelta, fresh: bool, *, brief: bool = False
) -> None:
    age = report.freshness.age
    freshness = "never" if age is None else f"{format_duration(age)} ago"
    verdict = "fresh" if fresh else f"STALE (older than {format_duration(max_age)})"
    print(f"last success: {freshness} - {verdict}")
    if brief:
        return
    failures = report.consecutive_failures
    print(
        f"regions: {report.active_regions} active, {report.removed_regions} removed"
        + (f"; {failures} failed run(s) since the last success" if failures else "")
    )
    _print_backlog(report)
    if report.lock_warning:
        print(report.lock_warning)
    if not report.recent_runs:
        print("no runs yet")
        return
    cells = [
        [terminal.cell(getattr(run, name), limit=None) for name in _RUN_COLUMNS.values()]
        for run in report.recent_runs
    ]
    for line in terminal.table(list(_RUN_COLUMNS), cells):
        print(line)


#: The columns of ``status``'s table of runs: heading -> ``RunRow`` field.
_RUN_COLUMNS = {
    "run": "id",
    "started (UTC)": "started_at",
    "status": "status",
    "trigger": "trigger",
    **{name: name for name in ("fetched", "added", "changed", "removed", "restored", "rejected")},
    "error": "error",
}


#: The most rows (or fire times) a command is asked for: far past any page a person reads,
#: well inside every integer type a database or SQLite binds.
MAX_COUNT = 1_000_000
#: The ISO times ``--since`` takes (README, *Commands*): each stays a valid date on
#: PostgreSQL, SQLite and in Python once moved to UTC by any offset.
SINCE_RANGE = (datetime(1900, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))


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


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
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


def build_parser(*, fake_api: bool = True) -> argparse.ArgumentParser:
    """Every command and its options; ``fake_api=False`` leaves out ``fake-api``'s own
    options, which import the fake server (a fifth of a second) for nothing."""
    parser = argparse.ArgumentParser(
        prog="regionsync",
        description="Keep a database of a Kaleyra RCS agent's regions and their history.",
        epilog="Settings come from the environment; see the README. "
        f"REGIONSYNC_LOG_LEVEL is one of {', '.join(LOG_LEVELS)}. "
        "Exit codes: 0 ok or skipped, 1 sync failed, 2 bad configuration or usage.",
    )
    parser.add_argument("--version", action="version", version=f"regionsync {__version__}")
    _global_options(parser, top=True)
    commands = _Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))

    run = commands.add_parser(
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
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser(
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
    check.set_defaults(handler=cmd_check)

    regions = commands.add_parser(
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
    regions.set_defaults(handler=cmd_regions)

    changes = commands.add_parser(
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
    changes.set_defaults(handler=cmd_changes)

    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade the schema (alembic upgrade head)",
        description="Upgrade the database schema to the latest revision; safe to run again.",
    )
    migrate.set_defaults(handler=cmd_migrate)

    status = commands.add_parser(
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
    status.set_defaults(handler=cmd_status)

    daemon = commands.add_parser(
        "daemon",
        help="sync at start, then on REGIONSYNC_SCHEDULE, until SIGTERM or SIGINT",
        description="Run as a long-lived process: a sync at start, then on REGIONSYNC_SCHEDULE. "
        "With REGIONSYNC_METRICS_PORT set, serves /healthz and /metrics. The first SIGTERM or "
        "SIGINT lets a sync in progress finish and exits 0; a second one exits at once.",
    )
    daemon.set_defaults(handler=cmd_daemon)

    schedule = commands.add_parser(
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
    schedule.set_defaults(handler=cmd_schedule)

    grant = commands.add_parser(
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
    grant.set_defaults(handler=cmd_grant_readonly)

    fake = commands.add_parser(
        "fake-api",
        help="serve a fake Kaleyra API on loopback, for trials and tests",
        description="Serve a fake Kaleyra API on loopback until SIGINT or SIGTERM; -q: do not "
        "log each request. It reads no setting (a bad one still exits 2, as for any command).",
    )
    if fake_api:
        from regionsync.testing import fakeapi

        fakeapi.add_options(fake)
    fake.set_defaults(handler=functools.partial(cmd_fake_api, parser=fake))
    add_notifications_command(commands)
    return parser


# Notifications (see README, *Notifications*) ---------------------------------------------


def _print_notifications(engine: Engine, settings: Settings, *, quiet: bool) -> None:
    """After a run: deliver what is pending, within its deadline, and say what happened
    (unless ``quiet``: ``status`` and ``notifications`` show the backlog); never fails the run."""
    if not settings.notifications.enabled:
        return  # and the HTTP client is not even imported
    from regionsync.notify.delivery import Notifier

    notifier = Notifier(engine, settings.notifications)
    counts = {k: v for k, v in notifier.deliver_pending().summary().items() if v}
    if counts and not quiet:
        print("notifications: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


def _print_backlog(report: StatusReport) -> None:
    backlog = report.deliveries
    if backlog is None:
        return
    oldest = backlog.oldest_pending_at
    age = "" if oldest is None else f", oldest {format_duration(report.checked_at - oldest)} old"
    print(f"notifications: {backlog.pending} pending{age}, {backlog.failed} failed")


def cmd_notifications(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.errors import ConfigError
    from regionsync.notify.delivery import Notifier
    from regionsync.notify.outbox import undelivered
    from regionsync.store.engine import translated_errors
    from regionsync.store.schema import require_current

    action = "reading the notifications" if args.retry is None else "retrying the delivery"
    with _database(settings) as engine, translated_errors(action):
        require_current(engine)
        if args.retry is not None:
            notifier = Notifier.from_settings(engine, settings.notifications)
            if notifier is None:
                raise ConfigError("REGIONSYNC_WEBHOOK_URL", "is required to retry a delivery")
            before, report = notifier.retry(args.retry)
            if before is None:
                raise ConfigError("--retry", f"no delivery with id {args.retry!r}")
            if before == "delivered":
                raise ConfigError("--retry", f"{args.retry} was delivered already")
            if args.retry in report.delivered:
                print(f"{args.retry} delivered")
                return EXIT_OK
            if report.skipped:  # like a run skipped for the sync lock: exit 0
                print(
                    f"{args.retry} skipped: another delivery pass is running (it holds the "
                    "delivery lock); the delivery is pending and due, so that pass or the next "
                    "one sends it; see `regionsync notifications`"
                )
                return EXIT_OK
            print(f"{args.retry} not delivered; see `regionsync notifications`", file=sys.stderr)
            return EXIT_FAILED
        with engine.connect() as connection:
            rows = undelivered(connection, limit=args.limit)
    if args.json:
        # "id": delivery_id's name before it took the log lines' name, kept for scripts.
        shown = [
            {**{k: _json_value(v) for k, v in row.items()}, "id": row["delivery_id"]}
            for row in rows
        ]
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    if not rows:
        print("no pending or failed deliveries")
        return EXIT_OK
    cells = []
    for row in rows:
        values = {**row, "part": f"{row['part']}/{row['parts']}"}
        cells.append([terminal.cell(values[name], limit=None) for name in _DELIVERY_COLUMNS])
    for line in terminal.table(_DELIVERY_COLUMNS, cells):
        print(line)
    return EXIT_OK


#: The columns of ``notifications``' table, named as in its JSON (``part`` shown as 1/2).
_DELIVERY_COLUMNS = (
    "delivery_id",
    "status",
    "sync_run_id",
    "part",
    "created_at",
    "changes",
    "attempts",
    "last_error",
)


def add_notifications_command(commands: Any) -> None:
    notifications = commands.add_parser(
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
    notifications.set_defaults(handler=cmd_notifications)


class _Commands:
    """``add_subparsers()``, giving every command the global options too."""

    def __init__(self, action: Any) -> None:
        self._action = action

    def add_parser(self, name: str, **options: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(name, **options)
        if options.get("add_help", True):
            _global_options(parser, top=False)
        return parser


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


def entry() -> int:
    """The ``regionsync`` program (started by :func:`regionsync.__main__.program`): :func:`main`,
    then every object still alive moved out of the garbage collector's reach.

    The process is about to exit; the interpreter's last collections would otherwise walk
    every module, class and function it loaded (SQLAlchemy's, psycopg's...): 60-80 ms of a
    one-shot ``run``, measured. ``gc.freeze`` is the standard library's way to say that
    these objects live until the end (the collector being off does not stop those last
    collections). :func:`main` itself leaves the collector alone, so it can be called
    in-process (the tests do).
    """
    status = main()
    gc.freeze()
    return status


__all__ = ["entry", "main"]
