"""``regionsync check``: is this deployment ready? Every check reads, none writes.

The first thing to run in a new deployment and a container's startup probe: the settings
parse (or the CLI has already exited 2), the schedule parses, the database answers and is
at the schema this regionsync needs and (PostgreSQL) lets a run write, Kaleyra answers the
configured key, and the metrics port and webhook, when set, are usable. With rows in the
``accounts`` table, each account's key is found (never shown) and its API answers it
(docs/accounts.md); a paused account is asked only when named with ``--account``. The
embedded SQLite file is opened read only and never created; PostgreSQL is read in a
read-only transaction; Kaleyra is asked once per account, with a GET, within
:data:`KALEYRA_SECONDS`; the webhook's host is connected to and sent nothing.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from regionsync import logs
from regionsync.errors import ConfigError, RegionSyncError, StoreError
from regionsync.settings import KaleyraConfig, Settings
from regionsync.store.accounts import AccountRow, list_accounts
from regionsync.store.engine import database_place, translated_errors
from regionsync.store.grants import quote_identifier
from regionsync.store.schema import head_revision
from regionsync.store.tables import notification_deliveries, region_history, regions, sync_runs

#: One quick attempt: a probe should answer in seconds, not wait out the sync's retries.
KALEYRA_SECONDS = 20.0
#: How long the webhook probe may take to connect (and negotiate TLS).
WEBHOOK_PROBE_SECONDS = 5.0
#: How many accounts' APIs are asked at once: a fleet's check takes seconds, not minutes.
ACCOUNT_PROBES = 8


@dataclass(frozen=True)
class Outcome:
    """One check: its name, whether it passed, and one line saying what was found."""

    name: str
    ok: bool
    detail: str


@dataclass
class _Read:
    """What the database checks read for the checks after them: the accounts, or None when
    they could not be read (the database failed, or is not at the latest revision)."""

    accounts: list[AccountRow] | None = field(default=None)


def run_checks(settings: Settings, *, account: str | None = None) -> Iterator[Outcome]:
    """Each check in turn; the database checks stop at the first that fails. ``account``:
    only that account's key and API (a :class:`ConfigError` when there is no such account)."""
    source = "embedded SQLite" if settings.embedded_database else settings.database_display
    yield Outcome("settings", True, f"all valid (database: {source})")
    yield _schedule(settings)
    read = _Read()
    yield from _database(settings, read)
    yield from _accounts(settings, read.accounts, account)
    if settings.metrics_port is not None:
        yield _metrics(settings)
    if settings.notifications.enabled:
        yield _webhook(settings)


def _guarded(name: str, check: Callable[[], Outcome]) -> Outcome:
    try:
        return check()
    except RegionSyncError as error:
        return Outcome(name, False, str(error))


def _schedule(settings: Settings) -> Outcome:
    from regionsync.daemon.schedule import load_schedule

    return _guarded(
        "schedule", lambda: Outcome("schedule", True, load_schedule(settings).describe())
    )


def _database(settings: Settings, read: _Read) -> Iterator[Outcome]:
    shown = settings.database_display
    if settings.database_url.get_backend_name() == "sqlite":
        path = Path(settings.database_url.database or "").expanduser()
        if not path.is_file():
            yield Outcome("database", False, f"{path} does not exist yet: run `regionsync migrate`")
            return
    try:
        with translated_errors(shown), _read_only(settings) as connection:
            server = _server_version(connection)
            current = MigrationContext.configure(connection).get_current_revision()
            # Only a migrated schema has tables to have rights on (it may not exist yet).
            access = (
                None
                if current is None
                else _write_access(connection, settings.notifications.enabled)
            )
            if current == head_revision():
                read.accounts = list_accounts(connection)
    except StoreError as error:
        yield Outcome("database", False, str(error))
        return
    yield Outcome("database", True, f"{shown} answers ({server})")
    schema = _revision(current, database_place(settings.database_url, settings.db_schema))
    yield schema
    if schema.ok and access is not None:
        yield access


def _revision(current: str | None, place: str) -> Outcome:
    """The schema revision against this code's; ``place`` names the database and schema."""
    head = head_revision()
    if current == head:
        return Outcome("schema", True, f"revision {current}, the latest")
    if current is None:
        return Outcome(
            "schema",
            False,
            f"{place} has no regionsync schema: run `regionsync migrate` (to {head})",
        )
    return Outcome(
        "schema",
        False,
        f"{place} is at revision {current}, this regionsync needs {head}: run `regionsync migrate`",
    )


#: What a run does to each table: it reads, inserts and updates, and never deletes. It
#: writes the notification outbox only when a webhook is configured.
_RUN_NEEDS: dict[str, tuple[str, ...]] = {
    regions.name: ("SELECT", "INSERT", "UPDATE"),
    region_history.name: ("SELECT", "INSERT"),
    sync_runs.name: ("SELECT", "INSERT", "UPDATE"),
}
_OUTBOX_NEEDS = {notification_deliveries.name: ("SELECT", "INSERT", "UPDATE")}

#: Where a setting such as ``default_transaction_read_only`` came from (``pg_settings.source``).
_SET_BY = {
    "database": "ALTER DATABASE",
    "user": "ALTER ROLE",
    "database user": "ALTER ROLE … IN DATABASE",
    "configuration file": "the server's configuration",
    "client": "the connection's options",
}

_SESSION = sa.text(
    "SELECT pg_is_in_recovery(), s.setting, s.source, current_user, current_database(),"
    " current_schema(), has_schema_privilege(current_schema(), 'USAGE'),"
    " has_database_privilege(current_database(), 'TEMPORARY'),"
    " has_function_privilege('pg_try_advisory_lock(bigint)', 'EXECUTE')"
    " AND has_function_privilege('pg_advisory_unlock(bigint)', 'EXECUTE')"
    " AND has_function_privilege('pg_notify(text, text)', 'EXECUTE')"
    " FROM pg_settings AS s WHERE s.name = 'default_transaction_read_only'"
)

# Per table and right: granted, and whether row-level security applies to this role with no
# permissive policy for the command (PostgreSQL then allows no row at all).
_TABLE_RIGHTS = sa.text(
    "SELECT n.name, n.privilege, has_table_privilege(c.oid, n.privilege),"
    " row_security_active(c.oid) AND NOT EXISTS ("
    "  SELECT FROM pg_policy AS p WHERE p.polrelid = c.oid AND p.polpermissive"
    "  AND p.polcmd::text IN ('*', CASE n.privilege WHEN 'SELECT' THEN 'r'"
    "   WHEN 'INSERT' THEN 'a' ELSE 'w' END)"
    "  AND (0 = ANY (p.polroles) OR EXISTS (SELECT FROM unnest(p.polroles) AS r (oid)"
    "   WHERE pg_has_role(current_user, r.oid, 'MEMBER'))))"
    " FROM unnest(CAST(:names AS text[]), CAST(:privileges AS text[])) WITH ORDINALITY"
    "  AS n (name, privilege, position)"
    " JOIN pg_class AS c ON c.oid = to_regclass(quote_ident(n.name))"
    " ORDER BY n.position"
)

# The sequences behind the tables' serial ids that this role may not advance (``nextval``);
# the CASE keeps the planner from asking a table for a sequence's rights.
_SEQUENCES = sa.text(
    "SELECT s.relname FROM pg_depend AS d JOIN pg_class AS s ON s.oid = d.objid"
    " WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'a' AND s.relkind = 'S'"
    " AND d.refobjid IN (SELECT to_regclass(quote_ident(t))"
    "  FROM unnest(CAST(:names AS text[])) AS t)"
    " AND CASE WHEN s.relkind = 'S' THEN NOT has_sequence_privilege(s.oid, 'USAGE, UPDATE') END"
    " ORDER BY s.relname"
)


def _write_access(connection: sa.Connection, outbox: bool) -> Outcome | None:
    """Whether a run could write: a writable server, and this role's rights on what a run
    writes, its temporary tables and its lock; None on SQLite.

    Asked of the catalogs, not tried: a probe INSERT, even rolled back, takes sequence
    numbers and row locks and cannot run in this read-only transaction.
    """
    if connection.dialect.name != "postgresql":
        return None
    session = connection.execute(_SESSION).one()
    standby, read_only, source, role, database, schema, usage, temporary, functions = session
    if standby:
        return Outcome(
            "access",
            False,
            "the server is a standby (in recovery): no run can write; connect to the primary",
        )
    if read_only == "on":
        return Outcome(
            "access",
            False,
            "the database is read-only for new sessions (default_transaction_read_only = on, "
            f"set by {_SET_BY.get(source, source)}): every run would fail; connect to a "
            "writable database, or turn the setting off",
        )
    needs = {**_RUN_NEEDS, **(_OUTBOX_NEEDS if outbox else {})}
    pairs = [(name, right) for name, rights in needs.items() for right in rights]
    rows = connection.execute(
        _TABLE_RIGHTS, {"names": [n for n, _ in pairs], "privileges": [r for _, r in pairs]}
    ).all()
    denied: dict[str, list[str]] = {}
    unpoliced: dict[str, list[str]] = {}
    for name, right, granted, no_policy in rows:
        if not granted:
            denied.setdefault(name, []).append(right)
        elif no_policy:
            unpoliced.setdefault(name, []).append(right)
    missing = [] if usage else [f"USAGE on the schema {quote_identifier(schema)}"]
    missing += [f"{', '.join(rights)} on {name}" for name, rights in denied.items()]
    sequences = connection.execute(_SEQUENCES, {"names": list(needs)}).scalars()
    missing += [f"USAGE on the sequence {name}" for name in sequences]
    if not temporary:
        missing.append(f"TEMPORARY on the database {quote_identifier(database)}")
    if not functions:
        missing.append("EXECUTE on pg_try_advisory_lock, pg_advisory_unlock or pg_notify")
    missing += [
        f"row-level security on {name} allows it no {', '.join(rights)} (no policy applies)"
        for name, rights in unpoliced.items()
    ]
    who = f"role {quote_identifier(role)}"
    if missing:
        return Outcome(
            "access",
            False,
            f"{who} may not write what a run writes; missing: {'; '.join(missing)}: grant "
            "them, or connect as the owner of the tables (the user that runs `regionsync "
            "migrate`)",
        )
    return Outcome(
        "access",
        True,
        f"{who} may write {', '.join(needs)}, create temporary tables and take the sync lock",
    )


@contextmanager
def _read_only(settings: Settings) -> Iterator[sa.Connection]:
    """A connection that cannot write: SQLite opened with ``mode=ro``, PostgreSQL in a
    read-only transaction."""
    url = settings.database_url
    engine: Engine
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "").expanduser().resolve()
        engine = sa.create_engine(
            "sqlite://", creator=lambda: _sqlite_read_only(path), poolclass=sa.pool.NullPool
        )
    else:
        from regionsync.store.engine import create_engine

        engine = create_engine(settings).execution_options(postgresql_readonly=True)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            yield connection
            transaction.rollback()
    finally:
        engine.dispose()


def _sqlite_read_only(path: Path) -> Any:
    """Read only, creating no file: a reader of a WAL database makes ``-wal`` and ``-shm``
    files unless they exist. Without them every commit is in the main file, which is then
    safe to read as ``immutable``."""
    import sqlite3

    in_use = path.with_name(path.name + "-wal").exists()
    query = "mode=ro" if in_use else "mode=ro&immutable=1"
    return sqlite3.connect(f"{path.as_uri()}?{query}", uri=True, check_same_thread=False)


def _server_version(connection: sa.Connection) -> str:
    if connection.dialect.name == "sqlite":
        version = connection.exec_driver_sql("SELECT sqlite_version()").scalar_one()
        return f"SQLite {version}"
    version = connection.exec_driver_sql("SHOW server_version").scalar_one()
    return f"PostgreSQL {version}"


def _accounts(
    settings: Settings, rows: list[AccountRow] | None, name: str | None
) -> Iterator[Outcome]:
    """The settings' one account as ``kaleyra`` (the accounts table empty or unread), or a
    ``key NAME`` and a ``kaleyra NAME`` line per account of the table."""
    if not rows:
        if name is None or name == settings.account:
            yield _kaleyra(settings)
        elif rows is None:
            yield Outcome(
                f"kaleyra {name}", False, "not asked: the accounts could not be read (see above)"
            )
        else:
            raise ConfigError(
                "--account",
                f"no account named {name!r}: the accounts table is empty, so the only account "
                f"is {settings.account!r} (REGIONSYNC_ACCOUNT)",
            )
        return
    if name is not None:
        rows = [row for row in rows if row.name == name]
        if not rows:
            raise ConfigError(
                "--account", f"no account named {name!r}; see `regionsync accounts list`"
            )
    with ThreadPoolExecutor(max_workers=min(ACCOUNT_PROBES, len(rows))) as pool:
        named = name is not None
        for outcomes in pool.map(lambda row: _account(settings, row, named=named), rows):
            yield from outcomes


def _account(settings: Settings, row: AccountRow, *, named: bool) -> list[Outcome]:
    """An account of the table: is its key where the row says, and does its API answer it?"""
    from regionsync.accounts import Account, kaleyra_config

    if row.paused_at is not None and not named:
        return [
            Outcome(
                f"kaleyra {row.name}",
                True,
                f"paused since {row.paused_at:%Y-%m-%d %H:%M} UTC: not asked "
                f"(`regionsync check --account {row.name}` asks)",
            )
        ]
    try:
        config = kaleyra_config(Account(row.name, row), settings)
    except ConfigError as error:
        return [Outcome(f"key {row.name}", False, error.problem)]
    key = config.api_key.reveal()
    with logs.secrets_in_scope(key):
        answer = _guarded(f"kaleyra {row.name}", lambda: _ask(f"kaleyra {row.name}", config))
    shown = Outcome(answer.name, answer.ok, logs.redact(answer.detail, [key]))
    return [Outcome(f"key {row.name}", True, f"found ({row.key_source})"), shown]


def _kaleyra(settings: Settings) -> Outcome:
    return _guarded("kaleyra", lambda: _ask("kaleyra", settings.require_kaleyra()))


def _ask(name: str, config: KaleyraConfig) -> Outcome:
    """One GET of the regions, no retries, within :data:`KALEYRA_SECONDS`."""
    from regionsync.source.kaleyra import KaleyraClient, RetryPolicy

    policy = RetryPolicy(
        attempts=1, total_seconds=KALEYRA_SECONDS, connect_timeout=5.0, read_timeout=15.0
    )
    snapshot = KaleyraClient(config, retry=policy).fetch()
    rejected = f", {snapshot.rejected_count} rejected" if snapshot.rejected_count else ""
    return Outcome(
        name,
        True,
        f"{config.regions_url} answers the key: {len(snapshot.records)} regions{rejected}",
    )


def _metrics(settings: Settings) -> Outcome:
    host, port = settings.metrics_host, settings.metrics_port
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon binds
            probe.bind((host, port))
    except OSError as error:
        reason = error.strerror or str(error)
        hint = " (is a daemon already running?)" if error.errno == 98 else ""
        return Outcome("metrics", False, f"cannot listen on {host}:{port}: {reason}{hint}")
    return Outcome("metrics", True, f"{host}:{port} is free for /healthz and /metrics")


def _webhook(settings: Settings) -> Outcome:
    """The webhook settings were validated when read: say what will be sent, and where
    (scheme and host only, a Slack URL's path being its token), and whether the receiver
    accepts a connection. Nothing is posted."""
    from regionsync.notify.webhooks import WebhookClient

    notifications = settings.notifications
    assert notifications.webhook_url is not None  # only called when notifications are enabled
    signed = "signed" if notifications.webhook_secret is not None else "unsigned"
    on = ", ".join(sorted(notifications.notify_on))
    said = f"{notifications.webhook_format} to {notifications.webhook_display}, {signed}, on {on}"
    client = WebhookClient(
        notifications.webhook_url, notifications.webhook_secret, ca_bundle=notifications.ca_bundle
    )
    reach = client.reach(WEBHOOK_PROBE_SECONDS)
    return Outcome("webhook", reach.ok, f"{said}; {reach.detail}")


__all__ = ["Outcome", "run_checks"]
