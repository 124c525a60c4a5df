"""What the commands print: results as lines, tables, JSON or CSV, on stdout.

Every value a database or an API supplied goes through :mod:`regionsync.cli.terminal`,
which escapes control characters (and, for CSV, what a spreadsheet would run).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from regionsync.cli import terminal
from regionsync.durations import format_duration

if TYPE_CHECKING:
    from regionsync.status import AccountStatus, StatusReport
    from regionsync.store.accounts import AccountRow
    from regionsync.store.browse import Page
    from regionsync.sync import SyncResult

#: How ``regions`` and ``changes`` print a page: ``--json``, ``--csv``, ``--csv-raw`` or not.
PageFormat = Literal["table", "json", "csv", "csv-raw"]

#: The columns of ``status``'s table of runs: heading -> ``RunRow`` field.
RUN_COLUMNS = {
    "run": "id",
    "started (UTC)": "started_at",
    "status": "status",
    "trigger": "trigger",
    **{name: name for name in ("fetched", "added", "changed", "removed", "restored", "rejected")},
    "error": "error",
}
#: The columns of ``notifications``' table, named as in its JSON (``part`` shown as 1/2).
DELIVERY_COLUMNS = (
    "delivery_id",
    "status",
    "sync_run_id",
    "part",
    "created_at",
    "changes",
    "attempts",
    "last_error",
)
#: The columns of ``regions``' table; ``removed_at`` too when removed regions are listed.
REGION_TABLE = ("id", "display_name", "carrier_enabled", "hosting_region", "updated_at")
#: The columns of ``changes``' table (the field changes shown as ``before -> after``).
CHANGE_TABLE = (
    "changed_at",
    "change",
    "region_id",
    "display_name",
    "carrier_enabled",
    "hosting_region",
    "sync_run_id",
)


def counts(result: SyncResult) -> str:
    return ", ".join(f"{k} {v}" for k, v in result.counts.as_dict().items())


def print_run(result: SyncResult, *, prefix: str = "") -> None:
    """The run's result line; ``prefix`` names its account in ``run --all``'s list."""
    if result.status == "skipped":
        print(f"{prefix}run {result.run_id} skipped: {result.reason}")
    else:
        shown = f"run {result.run_id} {result.status} in {result.duration:.2f}s: {counts(result)}"
        print(prefix + shown)


def print_plan(result: SyncResult) -> None:
    print(f"dry run, nothing written: {counts(result)}")
    for change in result.changes:
        shown = "; ".join(
            f"{name}: {before!r} -> {after!r}" for name, (before, after) in change.fields.items()
        )
        if change.raw_changed:
            shown = f"{shown}; raw changed" if shown else "raw changed"
        print(f"  {change.kind:<8} {change.region_id}  {shown}  ({change.display_name})")


def print_status(
    report: StatusReport, max_age: timedelta, fresh: bool, *, brief: bool = False
) -> None:
    """One account (the one asked for, or the only one): its freshness, counts and recent
    runs; several: a line summing them up, then a row per account."""
    if report.account is None:
        _print_accounts_status(report, max_age, fresh, brief=brief)
        return
    age = report.freshness.age
    freshness = "never" if age is None else f"{format_duration(age)} ago"
    row = next((row for row in report.accounts if row.account == report.account), None)
    if row is not None and row.paused_at is not None:
        verdict = (
            f"account paused since {row.paused_at:%Y-%m-%d %H:%M} UTC "
            f"(`regionsync accounts resume {terminal.clean(row.account)}`)"
        )
    else:
        verdict = "fresh" if fresh else f"STALE (older than {format_duration(max_age)})"
    print(f"last success: {freshness} - {verdict}")
    if brief:
        return
    if row is not None and row.lateness is not None and row.overdue:
        late = row.lateness
        print(
            f"OVERDUE: due since {late.due_since:%Y-%m-%d %H:%M:%S} UTC "
            f"({format_duration(late.due_for)}), longer than its period "
            f"({format_duration(late.period)}): is a worker or the daemon running?"
        )
    print(f"account: {terminal.clean(report.account)}")
    failures = report.consecutive_failures
    print(
        f"regions: {report.active_regions} active, {report.removed_regions} removed"
        + (f"; {failures} failed run(s) since the last success" if failures else "")
    )
    print_backlog(report)
    if report.lock_warning:
        print(report.lock_warning)
    if not report.recent_runs:
        print("no runs yet")
        return
    cells = [
        [terminal.cell(getattr(run, name), limit=None) for name in RUN_COLUMNS.values()]
        for run in report.recent_runs
    ]
    for line in terminal.table(list(RUN_COLUMNS), cells):
        print(line)


#: The columns of ``status``' table of accounts.
ACCOUNT_STATUS_COLUMNS = (
    "account",
    "state",
    "last success (UTC)",
    "age",
    "due for",
    "failures",
    "active",
    "enabled",
    "last run",
    "error",
)


def _print_accounts_status(
    report: StatusReport, max_age: timedelta, fresh: bool, *, brief: bool
) -> None:
    rows = report.accounts
    states = [row.state(max_age) for row in rows]
    tally = ", ".join(
        f"{states.count(state)} {state}"
        for state in ("ok", "overdue", "stale", "failing", "never", "paused")
        if state in states
    )
    stale = sum(row.counts_for_health(max_age) for row in rows)
    verdict = (
        "all fresh" if fresh else f"STALE: {stale} not synced within {format_duration(max_age)}"
    )
    print(f"{len(rows)} accounts: {tally} - {verdict}")
    if brief:
        return
    cells = []
    for row, state in zip(rows, states, strict=True):
        age = row.freshness.age
        values = (
            row.account,
            state,
            row.last_success_at or "never",
            "-" if age is None else format_duration(age),
            _due_for(row),
            row.consecutive_failures,
            row.active_regions,
            row.enabled_regions,
            row.last_run_status or "-",
        )
        cells.append(
            [terminal.cell(value, limit=None) for value in values]
            + [terminal.cell(row.last_run_error or "", limit=60)]
        )
    for line in terminal.table(ACCOUNT_STATUS_COLUMNS, cells):
        print(line)
    print_backlog(report)
    overdue = report.overdue
    if overdue:
        late = overdue[0].lateness
        longest = "" if late is None else f" for {format_duration(late.due_for)}"
        print(
            f"overdue: {len(overdue)} account(s) due for longer than their period, "
            f"the longest {terminal.clean(overdue[0].account)}{longest}: "
            "are the workers (or the daemon) running, and enough of them?"
        )
    for warning in report.lock_warnings():
        print(terminal.clean(warning, limit=None))
    print("`regionsync status --account NAME` shows an account's recent runs")


def _due_for(row: AccountStatus) -> str:
    """How long the account has been due, ``!`` when overdue; ``-`` when not due."""
    late = row.lateness
    if late is None or not late.due:
        return "-"
    return format_duration(late.due_for) + ("!" if late.overdue else "")


def print_status_json(report: StatusReport, max_age: timedelta, fresh: bool) -> None:
    shown = {
        **report.as_json(max_age),
        "fresh": fresh,
        "max_age_seconds": max_age.total_seconds(),
    }
    print(json.dumps(shown, indent=2))


def print_backlog(report: StatusReport) -> None:
    backlog = report.deliveries
    if backlog is None:
        return
    oldest = backlog.oldest_pending_at
    age = "" if oldest is None else f", oldest {format_duration(report.checked_at - oldest)} old"
    print(f"notifications: {backlog.pending} pending{age}, {backlog.failed} failed")


def print_regions(page: Page, columns: Sequence[str], fmt: PageFormat, *, removed: bool) -> None:
    """``regions``' page; ``removed``: the listing includes removed regions."""
    shown = (*REGION_TABLE, "removed_at") if removed else REGION_TABLE
    print_page(page, columns, shown, fmt, noun="regions")


def print_changes(page: Page, columns: Sequence[str], fmt: PageFormat) -> None:
    """``changes``' page, each field change in the table as ``before -> after``."""
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
    print_page(replace(page, rows=rows), columns, CHANGE_TABLE, fmt, noun="changes")


def _transition(before: Any, after: Any) -> str:
    text = [terminal.cell(before, limit=40) or "-", terminal.cell(after, limit=40) or "-"]
    return text[1] if before == after else " -> ".join(text)


def print_page(
    page: Page, columns: Sequence[str], shown: Sequence[str], fmt: PageFormat, *, noun: str
) -> None:
    """A page of rows as a table, JSON or CSV, the account first when the rows can come
    from more than one; a cut list is reported on stderr."""
    if page.several_accounts:
        columns, shown = ("account", *columns), ("account", *shown)
    if fmt == "json":
        records = [{name: json_value(row[name]) for name in columns} for row in page.rows]
        print(json.dumps(records, indent=2))
    elif fmt in ("csv", "csv-raw"):
        raw = fmt == "csv-raw"
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


def print_deliveries(rows: Sequence[dict[str, Any]], *, as_json: bool) -> None:
    """``notifications``' list of pending and failed deliveries."""
    if as_json:
        # "id": delivery_id's name before it took the log lines' name, kept for scripts.
        shown = [
            {**{k: json_value(v) for k, v in row.items()}, "id": row["delivery_id"]} for row in rows
        ]
        print(json.dumps(shown, indent=2))
        return
    if not rows:
        print("no pending or failed deliveries")
        return
    cells = []
    for row in rows:
        values = {**row, "part": f"{row['part']}/{row['parts']}"}
        cells.append([terminal.cell(values[name], limit=None) for name in DELIVERY_COLUMNS])
    for line in terminal.table(DELIVERY_COLUMNS, cells):
        print(line)


def json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


#: The columns of ``accounts list``'s table (never a key: only where it is read from).
ACCOUNT_COLUMNS = ("name", "sid", "endpoint", "key source", "schedule", "paused since", "created")


def print_accounts(rows: Sequence[AccountRow], *, as_json: bool, implicit: str) -> None:
    """``accounts list``; with no row, the settings' one account (``implicit``) is said."""
    if as_json:
        shown = [{**row.as_json(), "key_source": row.key_source} for row in rows]
        print(json.dumps(shown, indent=2))
        return
    if not rows:
        print(
            "no accounts: the KALEYRA_* settings are the one account, named "
            f"{terminal.clean(implicit)} (REGIONSYNC_ACCOUNT); add others with "
            "`regionsync accounts add` or `regionsync accounts import`"
        )
        return
    cells = [
        [
            terminal.cell(value, limit=None)
            for value in (
                row.name,
                row.sid,
                f"pod {row.pod}" if row.pod is not None else row.base_url,
                row.key_source,
                row.schedule,
                row.paused_at,
                row.created_at,
            )
        ]
        for row in rows
    ]
    for line in terminal.table(ACCOUNT_COLUMNS, cells):
        print(line)


def removed_account(name: str, counts: dict[str, int], *, purged: bool) -> str:
    """``accounts remove``'s line: the rows deleted, or (``purged`` False) the rows kept."""
    data = (
        f"{counts.get('regions', 0)} regions, {counts.get('region_history', 0)} history rows, "
        f"{counts.get('sync_runs', 0)} runs, {counts.get('notification_deliveries', 0)} "
        "deliveries"
    )
    if purged:
        what = (
            f"account {name}" if counts.get("accounts") else f"the data of {name} (no account row)"
        )
        return f"removed {what} and deleted its data: {data}"
    return (
        f"removed account {name}; its data stays ({data}): "
        f"`regionsync accounts remove {name} --purge` deletes it"
    )


__all__ = [
    "ACCOUNT_COLUMNS",
    "PageFormat",
    "print_accounts",
    "print_backlog",
    "print_changes",
    "print_deliveries",
    "print_page",
    "print_plan",
    "print_regions",
    "print_run",
    "print_status",
    "print_status_json",
    "removed_account",
]
