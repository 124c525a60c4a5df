"""The command line: parse options, call the library, turn its errors into exit codes.

Exit codes: 0 success (or skipped: another sync holds the lock), 1 the sync failed,
2 bad configuration or usage. Expected failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.engine import Engine

from regionsync import __version__, logs
from regionsync.durations import format_duration, parse_duration
from regionsync.errors import RegionSyncError
from regionsync.settings import Settings, read_env_file

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace, Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["fake-api"]:
        # The fake server parses its own options (argparse.REMAINDER would drop them).
        from regionsync import fakeapi

        return fakeapi.main(arguments[1:])
    args = build_parser().parse_args(arguments)
    secrets: tuple[str, ...] = ()
    try:
        settings = load_settings(args.env_file)
        secrets = settings.secrets
        logs.configure(level=settings.log_level, fmt=settings.log_format, secrets=secrets)
        handler: Handler = args.handler
        return handler(args, settings)
    except RegionSyncError as error:
        print(f"regionsync: error: {logs.redact(str(error), secrets)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("regionsync: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug still gets one line and exit 1
        structlog.get_logger("regionsync").exception("internal_error")
        message = logs.redact(f"{type(error).__name__}: {error}", secrets)
        print(f"regionsync: internal error: {message} (details in the log)", file=sys.stderr)
        return EXIT_FAILED


def load_settings(env_file: Path | None) -> Settings:
    """Settings from the environment, on top of an optional ``.env`` file."""
    env: dict[str, str] = {}
    if env_file is not None:
        env.update(read_env_file(env_file))
    env.update(os.environ)
    return Settings.from_env(env)


@contextmanager
def _database(settings: Settings) -> Iterator[Engine]:
    """An engine for the configured database, disposed of when the command ends."""
    from regionsync.store import create_engine

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
    from regionsync.schema import migrate

    with _database(settings) as engine:
        before, after = migrate(engine)
    if before == after:
        print(f"database {settings.database_display} is up to date (revision {after})")
    else:
        print(f"database {settings.database_display} migrated: {before or 'empty'} -> {after}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.outbox import OutboxPolicy
    from regionsync.sync import ApiSource, FileSource, Guard, Source, preview, run_sync

    source: Source = FileSource(args.from_file) if args.from_file else ApiSource(settings)
    guard = Guard(settings.max_removal_fraction, allow_mass_removal=args.allow_mass_removal)
    notify = OutboxPolicy.from_settings(settings.notifications)
    with _database(settings) as engine:
        if args.dry_run:
            result = preview(engine, source, guard=guard)
            _print_plan(result)
            return EXIT_OK
        try:
            result = run_sync(engine, source, trigger="cli", guard=guard, notify=notify)
        except RegionSyncError:
            _print_if(_deliver_notifications(engine, settings))  # earlier runs' still go out
            raise
        delivered = _deliver_notifications(engine, settings)
    if result.status == "skipped":
        print(f"run {result.run_id} skipped: {result.error}")
    else:
        print(f"run {result.run_id} {result.status} in {result.duration:.2f}s: {_counts(result)}")
    _print_if(delivered)
    return EXIT_OK


def _counts(result: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in result.counts.as_dict().items())


def _print_plan(result: Any) -> None:
    from regionsync.sync import describe

    print(f"dry run, nothing written: {_counts(result)}")
    for change in result.changes:
        fields = describe(change)["changes"]
        shown = "; ".join(
            f"{name}: {before!r} -> {after!r}" for name, (before, after) in fields.items()
        )
        print(f"  {change.kind:<8} {change.region_id}  {shown}")


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
        _print_status(report, args.max_age, fresh)
    return EXIT_OK if fresh else EXIT_FAILED


def cmd_daemon(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.scheduler import run_daemon

    return run_daemon(settings)


def cmd_schedule(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.schedule import next_fire_times

    for moment in next_fire_times(settings, args.count):
        print(moment.isoformat())
    return EXIT_OK


def cmd_grant_readonly(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.grants import grant_readonly

    with _database(settings) as engine:
        statements = grant_readonly(engine, args.role, execute=not args.print)
    for statement in statements:
        print(f"{statement};")
    return EXIT_OK


def _print_status(report: Any, max_age: timedelta, fresh: bool) -> None:
    age = report.last_success_age
    freshness = "never" if age is None else f"{format_duration(age)} ago"
    verdict = "fresh" if fresh else f"STALE (older than {format_duration(max_age)})"
    print(f"last success: {freshness} - {verdict}")
    print(f"regions: {report.active_regions} active, {report.removed_regions} removed")
    _print_backlog(report)
    if not report.recent_runs:
        print("no runs yet")
        return
    header = (
        "run",
        "started (UTC)",
        "status",
        "trigger",
        "fetched",
        "added",
        "changed",
        "removed",
        "restored",
        "rejected",
        "error",
    )
    rows = [header]
    for run in report.recent_runs:
        rows.append(
            (
                str(run["id"]),
                run["started_at"].strftime("%Y-%m-%d %H:%M:%S"),
                run["status"],
                run["trigger"],
                *(
                    str(run[k])
                    for k in ("fetched", "added", "changed", "removed", "restored", "rejected")
                ),
                run["error"] or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        )


def _duration(text: str) -> timedelta:
    delta = parse_duration(text)
    if delta is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90m, 3h or 1d")
    return delta


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regionsync",
        description="Keep a database of a Kaleyra RCS agent's regions and their history.",
        epilog="Settings come from the environment; see the README. "
        "Exit codes: 0 ok or skipped, 1 sync failed, 2 bad configuration or usage.",
    )
    parser.add_argument("--version", action="version", version=f"regionsync {__version__}")
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="read settings from this .env-style file too (the environment wins)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    run.set_defaults(handler=cmd_run)

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
        help="print the SQL it would run instead of running it (the role need not exist yet)",
    )
    grant.set_defaults(handler=cmd_grant_readonly)

    fake = commands.add_parser(
        "fake-api",
        help="serve a fake Kaleyra API on loopback, for trials and tests",
        add_help=False,
        description="Serve a fake Kaleyra API; `regionsync fake-api --help` lists its options.",
    )
    fake.add_argument("fake_args", nargs=argparse.REMAINDER)
    add_notifications_command(commands)
    return parser


# Notifications (see README, *Notifications*) ---------------------------------------------


def _deliver_notifications(engine: Engine, settings: Settings) -> str | None:
    """After a run: deliver what is pending, within its deadline; never fails the run."""
    from regionsync.delivery import Notifier

    notifier = Notifier.from_settings(engine, settings.notifications)
    if notifier is None:
        return None
    counts = {k: v for k, v in notifier.deliver_pending().summary().items() if v}
    return "notifications: " + ", ".join(f"{v} {k}" for k, v in counts.items()) if counts else None


def _print_if(line: str | None) -> None:
    if line is not None:
        print(line)


def _print_backlog(report: Any) -> None:
    backlog = getattr(report, "deliveries", None)
    if backlog is None:
        return
    oldest = backlog.oldest_pending_at
    age = "" if oldest is None else f", oldest {format_duration(report.checked_at - oldest)} old"
    print(f"notifications: {backlog.pending} pending{age}, {backlog.failed} failed")


def cmd_notifications(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.delivery import Notifier
    from regionsync.errors import ConfigError
    from regionsync.outbox import undelivered
    from regionsync.schema import require_current
    from regionsync.store import translated_errors

    with _database(settings) as engine:
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
            print(f"{args.retry} not delivered; see `regionsync notifications`", file=sys.stderr)
            return EXIT_FAILED
        with translated_errors("reading the notifications"), engine.connect() as connection:
            rows = undelivered(connection, limit=args.limit)
    if args.json:
        shown = [
            {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}
            for row in rows
        ]
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    if not rows:
        print("no pending or failed deliveries")
    for row in rows:
        when = row["created_at"].strftime("%Y-%m-%d %H:%M:%S")
        part = f" part {row['part']}/{row['parts']}" if row["parts"] > 1 else ""
        print(
            f"{row['id']}  {row['status']:<7}  run {row['sync_run_id']}{part}  {when}  "
            f"{row['changes']} changes  {row['attempts']} attempts  {row['last_error'] or ''}"
        )
    return EXIT_OK


def add_notifications_command(commands: Any) -> None:
    notifications = commands.add_parser(
        "notifications",
        help="list pending and failed webhook deliveries; --retry ID retries one",
        description="List the webhook deliveries not yet accepted by the receiver (pending, "
        "or failed: given up). --retry ID delivers a failed one again now (exit 0 when "
        "delivered, 1 when not).",
    )
    notifications.add_argument("--json", action="store_true", help="print JSON")
    notifications.add_argument(
        "--limit", type=_positive, default=100, metavar="N", help="show at most N (default 100)"
    )
    notifications.add_argument("--retry", metavar="ID", help="deliver this one again now")
    notifications.set_defaults(handler=cmd_notifications)


__all__ = ["main"]
