"""A read-only PostgreSQL role for analysts and BI tools: read every table and view, or only
the rows of some accounts (docs/analysts.md, *A read-only role*).

Default privileges (what makes tables of later migrations readable too) belong to the role
that *creates* the objects, so the grants name the owner of the regionsync tables — the user
that runs ``regionsync migrate`` — rather than whoever runs the grant.

A role limited to accounts (``--account``) reads through row-level security: each table with
an ``account`` column (and ``accounts``, by ``name``) gets a permissive policy that keeps every
row visible to everyone else, and one restrictive policy per limited role that keeps only its
accounts' rows. The views read with the reader's rights (``security_invoker``), so the same
policies limit them. The owner bypasses row-level security (it is not forced), so the sync
writes as before. Such a role gets no default privileges: a table or view a later migration
adds is not readable to it until the grant is run again, rather than readable unlimited.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import Connection, Engine

from regionsync.errors import ConfigError, SchemaError
from regionsync.settings import check_account_name
from regionsync.store.engine import connection_schema, database_place, translated_errors

# SQLAlchemy leaves its dialect constructors untyped.
_preparer = PGDialect().identifier_preparer  # type: ignore[no-untyped-call]

#: The permissive policy that keeps every row visible to every role not limited to accounts.
EVERY_ROW_POLICY = "regionsync_every_row"
#: The restrictive policies of limited roles: this prefix and a digest of the role's name.
ACCOUNT_POLICY_PREFIX = "regionsync_accounts_"
#: The column that names a row's account, where it is not ``account``.
ACCOUNT_COLUMN = {"accounts": "name"}

# Where the regionsync tables are, found the way regionsync's own queries find them.
_TARGET = sa.text(
    "SELECT current_database(), n.nspname, pg_get_userbyid(c.relowner),"
    " pg_has_role(current_user, c.relowner, 'MEMBER')"
    " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE c.oid = to_regclass('regions')"
)


# Whether the role exists, is a superuser, or has the owner's rights (is it or inherits it).
_ROLE = sa.text(
    "SELECT rolsuper, pg_has_role(oid, :owner, 'USAGE') FROM pg_roles WHERE rolname = :role"
)


# The regionsync schema, which every connection has first on its search_path.
_WHERE = sa.text("SELECT current_database(), current_schema()")
# The tables and views of a schema that a role may read, as PostgreSQL decides it.
_READABLE = sa.text(
    "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE n.nspname = :schema AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    " AND has_table_privilege(:role, c.oid, 'SELECT') ORDER BY c.relname"
)
# Every table and view of a schema: its kind, whether row-level security is on, whether it has
# an account column, and (views) whether it reads with the reader's rights.
_RELATIONS = sa.text(
    "SELECT c.relname, c.relkind, c.relrowsecurity,"
    " EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = c.oid AND a.attnum > 0"
    "  AND NOT a.attisdropped AND a.attname = 'account'),"
    " coalesce((SELECT o.option_value FROM pg_options_to_table(c.reloptions) AS o"
    "  WHERE o.option_name = 'security_invoker'), 'false')::boolean"
    " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE n.nspname = :schema AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY c.relname"
)
# regionsync's policies in a schema, with the roles they apply to and their condition.
_POLICIES = sa.text(
    "SELECT tablename, policyname, permissive, roles, qual FROM pg_policies"
    " WHERE schemaname = :schema AND policyname LIKE 'regionsync\\_%'"
)
# An account-limiting condition as PostgreSQL prints it back: the accounts are its literals.
_LIMIT = re.compile(r"\(?(?:account|name) = ANY \(ARRAY\[(.*)\]\)\)?")
_LITERAL = re.compile(r"'([a-z0-9_-]{1,63})'::text")


@dataclass(frozen=True)
class Readable:
    """What a role may read in the regionsync schema, asked of PostgreSQL after a grant.

    ``accounts`` is None when the role reads every account's rows, else the accounts its
    row-level security policies let it read.
    """

    database: str
    schema: str
    relations: list[str]
    accounts: list[str] | None = None


@dataclass(frozen=True)
class Relation:
    """A table or view of the regionsync schema as pg_class has it (``kind``: relkind)."""

    name: str
    kind: str
    row_security: bool
    has_account: bool
    invoker: bool

    @property
    def account_column(self) -> str | None:
        """The column that names each row's account; None: the rows are no account's."""
        if self.kind not in ("r", "p"):
            return None
        return ACCOUNT_COLUMN.get(self.name, "account" if self.has_account else None)


@dataclass(frozen=True)
class Policy:
    """A regionsync policy on a table; ``accounts``: those its condition lets through, None
    when it names none (the permissive policy, or one changed by hand)."""

    table: str
    name: str
    permissive: bool
    roles: list[str]
    accounts: frozenset[str] | None


def quote_identifier(name: str) -> str:
    """A PostgreSQL identifier, always quoted (inner quotes doubled), so any name is safe."""
    return _preparer.quote_identifier(name)


def quote_literal(text: str) -> str:
    """A PostgreSQL string literal (inner quotes doubled; standard_conforming_strings)."""
    return "'" + text.replace("'", "''") + "'"


def account_policy_name(role: str) -> str:
    """The name of ``role``'s restrictive policy on every table: the same for every grant,
    within PostgreSQL's 63 bytes whatever the role's name."""
    return ACCOUNT_POLICY_PREFIX + hashlib.sha256(role.encode()).hexdigest()[:16]


def _check_role(role: str) -> None:
    if not role or "\x00" in role:
        raise ConfigError("ROLE", "a role name must be non-empty text")


def readonly_grants(
    role: str, schema: str = "public", *, owner: str | None = None, database: str | None = None
) -> list[str]:
    """The statements that let ``role`` read every table and view in ``schema``, and no more.

    ``owner`` is the role that creates the tables (``regionsync migrate``'s user); without it,
    the default privileges are those of whoever runs the statements. ``database`` adds
    ``GRANT CONNECT``, needed where CONNECT was revoked from PUBLIC.
    """
    _check_role(role)
    who, where = quote_identifier(role), quote_identifier(schema)
    creator = "" if owner is None else f" FOR ROLE {quote_identifier(owner)}"
    connect = (
        []
        if database is None
        else [f"GRANT CONNECT ON DATABASE {quote_identifier(database)} TO {who}"]
    )
    return [
        *connect,
        f"GRANT USAGE ON SCHEMA {where} TO {who}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {where} TO {who}",
        f"ALTER DEFAULT PRIVILEGES{creator} IN SCHEMA {where} GRANT SELECT ON TABLES TO {who}",
    ]


def account_grants(
    role: str,
    accounts: Iterable[str],
    schema: str,
    relations: Iterable[Relation],
    policies: Iterable[Policy] = (),
    *,
    database: str | None = None,
) -> list[str]:
    """The statements that let ``role`` read ``accounts``' rows of the tables with an account
    column and of the views that read with the reader's rights, and nothing else.

    Only what ``policies`` (the schema's regionsync policies now) lack is created or altered:
    a grant run again changes no policy, so it takes no table lock.
    """
    _check_role(role)
    names = sorted(set(accounts))
    for name in names:
        check_account_name(name, setting="--account")
    who, where = quote_identifier(role), quote_identifier(schema)
    limit = ", ".join(quote_literal(name) for name in names)
    mine = account_policy_name(role)
    present = {(p.table, p.name): p for p in policies}
    statements = (
        []
        if database is None
        else [f"GRANT CONNECT ON DATABASE {quote_identifier(database)} TO {who}"]
    )
    statements.append(f"GRANT USAGE ON SCHEMA {where} TO {who}")
    for relation in relations:
        table = f"{where}.{quote_identifier(relation.name)}"
        column = relation.account_column
        if column is None:
            if relation.kind == "v" and relation.invoker:
                statements.append(f"GRANT SELECT ON {table} TO {who}")
            continue
        if (relation.name, EVERY_ROW_POLICY) not in present:
            statements.append(
                f"CREATE POLICY {EVERY_ROW_POLICY} ON {table} AS PERMISSIVE FOR ALL TO PUBLIC"
                " USING (true) WITH CHECK (true)"
            )
        condition = f"{quote_identifier(column)} = ANY (ARRAY[{limit}]::text[])"
        found = present.get((relation.name, mine))
        if found is None:
            statements.append(
                f"CREATE POLICY {mine} ON {table} AS RESTRICTIVE FOR SELECT TO {who}"
                f" USING ({condition})"
            )
        elif found.accounts != frozenset(names) or found.roles != [role]:
            statements.append(f"ALTER POLICY {mine} ON {table} TO {who} USING ({condition})")
        if not relation.row_security:
            statements.append(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        statements.append(f"GRANT SELECT ON {table} TO {who}")
    return statements


def grant_readonly(
    engine: Engine, role: str, *, account: str | None = None, execute: bool = True
) -> list[str]:
    """Grant ``role`` read access to every table and view, present and future; with
    ``account``, to that account's rows only (added to those it was granted before).

    Returns the statements; with ``execute=False`` only works them out (``--print``), and the
    role need not exist yet.
    """
    _check_role(role)
    if account is not None:
        check_account_name(account, setting="--account")
    if engine.dialect.name != "postgresql":
        raise ConfigError(
            "REGIONSYNC_DATABASE_URL", "grant-readonly needs PostgreSQL; SQLite has no roles"
        )
    with translated_errors("granting read access"), engine.begin() as connection:
        found = connection.execute(_TARGET).first()
        if found is None:
            place = database_place(engine.url, connection_schema(connection))
            raise SchemaError(
                f"the database {place} has no regionsync schema: run `regionsync migrate`"
            )
        database, schema, owner, may_act_as_owner = found
        policies = _policies(connection, schema)
        limited_to = _accounts_of(role, policies)
        if account is None:
            statements = readonly_grants(role, schema, owner=owner, database=database)
        else:
            statements = account_grants(
                role,
                {account, *(limited_to or ())},
                schema,
                _relations(connection, schema),
                policies,
                database=database,
            )
        if not execute:
            return statements
        found_role = connection.execute(_ROLE, {"role": role, "owner": owner}).first()
        if found_role is None:
            raise ConfigError("ROLE", f"no PostgreSQL role named {role!r}; CREATE ROLE it first")
        is_superuser, acts_as_owner = found_role
        if is_superuser or acts_as_owner:
            what = "a superuser" if is_superuser else f"the owner of the tables ({owner!r})"
            raise ConfigError(
                "ROLE",
                f"{role!r} is {what}: it can already write every table, so a read-only grant "
                "would not make it read-only; create a role of its own for reading",
            )
        if not may_act_as_owner:
            raise ConfigError(
                "REGIONSYNC_DATABASE_URL",
                f"grant-readonly must connect as {owner!r} (the owner of the regionsync "
                "tables, who runs `regionsync migrate`), a member of it, or a superuser",
            )
        _refuse_a_change_of_kind(connection, role, account, limited_to)
        for statement in statements:
            connection.exec_driver_sql(statement)
    return statements


def _refuse_a_change_of_kind(
    connection: Connection, role: str, account: str | None, limited_to: frozenset[str] | None
) -> None:
    """A role reads every account or only some, and a grant does not turn one into the other:
    widening would show a limited role's users every account's rows, and narrowing would
    leave the default privileges that show it the tables later migrations add, unlimited."""
    if account is None and limited_to is not None:
        raise ConfigError(
            "ROLE",
            f"{role!r} reads only the rows of account(s) {', '.join(sorted(limited_to))} "
            "(granted with --account); grant-readonly without --account would not widen it: "
            "create a role of its own to read every account",
        )
    if account is not None and limited_to is None:
        reads_all = connection.execute(
            sa.text("SELECT has_table_privilege(:role, to_regclass('regions'), 'SELECT')"),
            {"role": role},
        ).scalar_one()
        if reads_all:
            raise ConfigError(
                "ROLE",
                f"{role!r} already reads every account's rows (granted without --account); "
                f"--account would not limit it: create a role of its own for account {account!r}",
            )


def _relations(connection: Connection, schema: str) -> list[Relation]:
    return [Relation(*row) for row in connection.execute(_RELATIONS, {"schema": schema})]


def _policies(connection: Connection, schema: str) -> list[Policy]:
    found = []
    for table, name, permissive, roles, qual in connection.execute(_POLICIES, {"schema": schema}):
        limit = _LIMIT.fullmatch(qual or "")
        accounts = None if limit is None else frozenset(_LITERAL.findall(limit.group(1)))
        found.append(Policy(table, name, permissive == "PERMISSIVE", list(roles), accounts))
    return found


def _accounts_of(role: str, policies: Iterable[Policy]) -> frozenset[str] | None:
    """The accounts ``role`` is limited to: those every one of its policies allows (a table
    may lag behind the others, never a reason to show more); None if it has no policy."""
    limits = [
        p.accounts or frozenset()
        for p in policies
        if not p.permissive and p.name.startswith(ACCOUNT_POLICY_PREFIX) and role in p.roles
    ]
    if not limits:
        return None
    return frozenset.intersection(*limits)


def readable_by(engine: Engine, role: str) -> Readable:
    """The tables and views ``role`` may read now, and the accounts it is limited to: what
    ``grant-readonly`` reports it did, read back rather than assumed from the statements."""
    with translated_errors("reading the grants"), engine.connect() as connection:
        database, schema = connection.execute(_WHERE).one()
        names = connection.execute(_READABLE, {"schema": schema, "role": role}).scalars()
        accounts = _accounts_of(role, _policies(connection, schema))
        return Readable(
            database, schema, list(names), None if accounts is None else sorted(accounts)
        )
