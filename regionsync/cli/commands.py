"""What each command does: a handler per command, given the parsed options and the settings,
returning the exit code. A handler calls the library and prints through
:mod:`regionsync.cli.output`; it imports what it needs when it runs, so that one command
never pays for another's modules.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from sqlalchemy.engine import Engine

from regionsync.cli import output, terminal
from regionsync.errors import ConfigError, RegionSyncError
from regionsync.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace, Settings], int]


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
            output.print_plan(result)
            return _rejects_verdict(args, result.counts.rejected)
        try:
            result = run_sync(engine, source, trigger="cli", guard=guard, notify=notify)
        except RegionSyncError:
            _deliver_notifications(engine, settings, quiet=args.quiet)  # earlier runs' go out
            raise
        output.print_run(result)
        _deliver_notifications(engine, settings, quiet=args.quiet)
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


def _deliver_notifications(engine: Engine, settings: Settings, *, quiet: bool) -> None:
    """After a run: deliver what is pending, within its deadline, and say what happened
    (unless ``quiet``: ``status`` and ``notifications`` show the backlog); never fails the run."""
    if not settings.notifications.enabled:
        return  # and the HTTP client is not even imported
    from regionsync.notify.delivery import Notifier

    notifier = Notifier(engine, settings.notifications)
    counts = {k: v for k, v in notifier.deliver_pending().summary().items() if v}
    if counts and not quiet:
        print("notifications: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.status import gather

    with _database(settings) as engine:
        report = gather(engine, limit=args.limit)
    fresh = report.is_fresh(args.max_age)
    if args.json:
        output.print_status_json(report, args.max_age, fresh)
    else:
        output.print_status(report, args.max_age, fresh, brief=args.quiet)
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
    from regionsync.store.browse import REGION_COLUMNS, region_page

    with _database(settings) as engine:
        page = region_page(
            engine, state=args.state, hosting_region=args.hosting_region, limit=args.limit
        )
    removed = args.state in ("removed", "all")
    output.print_regions(page, REGION_COLUMNS, _page_format(args), removed=removed)
    return EXIT_OK


def cmd_changes(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.store.browse import CHANGE_COLUMNS, change_page

    with _database(settings) as engine:
        page = change_page(engine, since=args.since, region_id=args.region, limit=args.limit)
    output.print_changes(page, CHANGE_COLUMNS, _page_format(args))
    return EXIT_OK


def _page_format(args: argparse.Namespace) -> output.PageFormat:
    """``--json``, ``--csv`` or ``--csv-raw`` (``changes`` has no CSV), else a table."""
    if args.json:
        return "json"
    if getattr(args, "csv_raw", False):
        return "csv-raw"
    return "csv" if getattr(args, "csv", False) else "table"


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


def cmd_notifications(args: argparse.Namespace, settings: Settings) -> int:
    """The pending and failed deliveries (docs/notifications.md, *Operators*), or ``--retry``
    one."""
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
    output.print_deliveries(rows, as_json=args.json)
    return EXIT_OK


__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Handler",
    "cmd_changes",
    "cmd_check",
    "cmd_daemon",
    "cmd_fake_api",
    "cmd_grant_readonly",
    "cmd_migrate",
    "cmd_notifications",
    "cmd_regions",
    "cmd_run",
    "cmd_schedule",
    "cmd_status",
]
