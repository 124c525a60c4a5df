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
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.engine import Engine

from regionsync.cli import output, terminal
from regionsync.errors import ConfigError, RegionSyncError
from regionsync.settings import Settings

if TYPE_CHECKING:
    from regionsync.notify.outbox import OutboxPolicy
    from regionsync.sync import Guard

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
        before, after = migrate(engine, account=settings.account)
    where = settings.database_display
    if settings.database_url.get_backend_name() != "sqlite":
        where += f" schema {settings.db_schema}"  # one account per schema: say which
    if before == after:
        print(f"database {where} is up to date (revision {after})")
    else:
        print(f"database {where} migrated: {before or 'empty'} -> {after}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """One account's sync (``--account``, or the only one), or ``--all`` of them
    (docs/accounts.md)."""
    from regionsync.accounts import account_source, select_account
    from regionsync.notify.outbox import OutboxPolicy
    from regionsync.records import Source
    from regionsync.sync import Guard, preview, run_sync

    if args.all and (args.from_file or args.dry_run):
        option = "--from-file" if args.from_file else "--dry-run"
        raise ConfigError(option, "works on one account: use it with --account NAME, not --all")
    if args.from_file:
        _require_readable(args.from_file)
    guard = Guard.from_settings(settings, allow_mass_removal=args.allow_mass_removal)
    notify = OutboxPolicy.from_settings(settings.notifications)
    with _database(settings) as engine:
        if args.all:
            return _run_all(args, settings, engine, guard, notify)
        account = select_account(engine, settings, args.account)
        if account.paused_at is not None and not args.dry_run:
            raise ConfigError(
                "--account",
                f"account {account.name} is paused (since {account.paused_at:%Y-%m-%d %H:%M} "
                f"UTC): `regionsync accounts resume {account.name}` resumes it",
            )
        source: Source
        if args.from_file:
            from regionsync.source.saved import FileSource

            source = FileSource(args.from_file)
        else:
            source = account_source(account, settings)
        if args.dry_run:
            result = preview(engine, source, account=account.name, guard=guard)
            output.print_plan(result)
            return _rejects_verdict(args, result.counts.rejected)
        try:
            result = run_sync(
                engine, source, account=account.name, trigger="cli", guard=guard, notify=notify
            )
        except RegionSyncError as error:
            _deliver_notifications(engine, settings, quiet=args.quiet)  # earlier runs' go out
            if isinstance(error, ConfigError) and not account.implicit:
                # The account's key could not be read: a failed run, recorded (exit 1).
                raise RegionSyncError(str(error)) from error
            raise
        output.print_run(result)
        _deliver_notifications(engine, settings, quiet=args.quiet)
    return _rejects_verdict(args, result.counts.rejected)


def _run_all(
    args: argparse.Namespace,
    settings: Settings,
    engine: Engine,
    guard: Guard,
    notify: OutboxPolicy | None,
) -> int:
    """``run --all``: each unpaused account once, in name order, a line each; one account's
    failure is its line, and the others still run. Exit 1 when any failed."""
    from regionsync import logs
    from regionsync.accounts import account_source, configured_accounts
    from regionsync.sync import run_sync

    tally = dict.fromkeys(("succeeded", "skipped", "failed", "paused"), 0)
    failed: list[str] = []
    rejected = 0
    accounts = configured_accounts(engine, settings)
    for account in accounts:
        name = terminal.clean(account.name)
        if account.paused_at is not None:
            tally["paused"] += 1
            print(
                f"{name}: paused since {account.paused_at:%Y-%m-%d %H:%M} UTC, not synced "
                f"(`regionsync accounts resume {name}`)"
            )
            continue
        # The settings' one account is checked here: a missing KALEYRA_* setting is exit 2.
        source = account_source(account, settings)
        try:
            result = run_sync(
                engine, source, account=account.name, trigger="cli", guard=guard, notify=notify
            )
        except Exception as error:  # noqa: BLE001 - one account's failure never stops the rest
            if not isinstance(error, RegionSyncError):
                structlog.get_logger("regionsync").critical(
                    "internal_error", account=account.name, exc_info=True
                )
            tally["failed"] += 1
            failed.append(name)
            reason = logs.redact(str(error) or type(error).__name__, settings.secrets)
            print(f"{name}: failed: {terminal.clean(reason, limit=None)}")
            continue
        tally[result.status] += 1
        rejected += result.counts.rejected
        output.print_run(result, prefix=f"{name}: ")
    _deliver_notifications(engine, settings, quiet=args.quiet)
    counted = ", ".join(f"{count} {what}" for what, count in tally.items() if count)
    print(f"{len(accounts)} account(s): {counted or 'nothing to sync'}")
    if failed:
        print(
            f"regionsync: error: {len(failed)} of {len(accounts)} account(s) failed: "
            f"{', '.join(failed)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return _rejects_verdict(args, rejected)


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
    from regionsync.fleet.dispatch import timetables
    from regionsync.status import gather

    with _database(settings) as engine:
        report = gather(
            engine,
            limit=args.limit,
            account=args.account,
            default_account=settings.account,
            timetables=timetables(settings),
        )
    fresh = report.is_fresh(args.max_age)
    if args.json:
        output.print_status_json(report, args.max_age, fresh)
    else:
        output.print_status(report, args.max_age, fresh, brief=args.quiet)
    return EXIT_OK if fresh else EXIT_FAILED


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.cli.check import run_checks

    failed = total = 0
    for outcome in run_checks(settings, account=args.account):
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
            engine,
            state=args.state,
            hosting_region=args.hosting_region,
            account=_shown_account(engine, settings, args.account),
            limit=args.limit,
        )
    removed = args.state in ("removed", "all")
    output.print_regions(page, REGION_COLUMNS, _page_format(args), removed=removed)
    return EXIT_OK


def cmd_changes(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.store.browse import CHANGE_COLUMNS, change_page

    with _database(settings) as engine:
        page = change_page(
            engine,
            since=args.since,
            region_id=args.region,
            account=_shown_account(engine, settings, args.account),
            limit=args.limit,
        )
    output.print_changes(page, CHANGE_COLUMNS, _page_format(args))
    return EXIT_OK


def _shown_account(engine: Engine, settings: Settings, name: str | None) -> str | None:
    """``--account`` of ``regions`` and ``changes``: an account there is, or one whose data
    is still there (a removed account's stays until purged); else a usage error."""
    if name is None:
        return None
    from regionsync.accounts import select_account
    from regionsync.store.browse import account_has_data

    if not account_has_data(engine, name):
        select_account(engine, settings, name)
    return name


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


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from regionsync.fleet.worker import run_worker

    return run_worker(settings, concurrency=args.concurrency)


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
        statements = grant_readonly(engine, args.role, account=args.account, execute=not args.print)
        readable = None if args.print else readable_by(engine, args.role)
    if readable is None:
        print("-- NOT EXECUTED: the SQL `regionsync grant-readonly` would run")
        for statement in statements:
            print(terminal.clean(f"{statement};", limit=None))
        return EXIT_OK
    who, names = quote_identifier(args.role), readable.relations
    where = f"schema {quote_identifier(readable.schema)} of database "
    where += quote_identifier(readable.database)
    if readable.accounts is None:
        scope = "and to those later migrations add"
    else:
        scope = (
            f"limited to the rows of account(s) {', '.join(readable.accounts)} by row-level "
            "security; run it again after a migration to cover what the migration adds"
        )
    print(
        terminal.clean(
            f"granted role {who} read access to {len(names)} tables and views in {where}, {scope}",
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
    "cmd_worker",
]
