"""A read-only PostgreSQL role for analysts and BI tools: read every table and view.

Default privileges (what makes tables of later migrations readable too) belong to the role
that *creates* the objects, so the grants name the owner of the regionsync tables — the user
that runs ``regionsync migrate`` — rather than whoever runs the grant.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import Engine

from regionsync.errors import ConfigError, SchemaError
from regionsync.store.engine import connection_schema, database_place, translated_errors

# SQLAlchemy leaves its dialect constructors untyped.
_preparer = PGDialect().identifier_preparer  # type: ignore[no-untyped-call]

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


@dataclass(frozen=True)
class Readable:
    """What a role may read in the regionsync schema, asked of PostgreSQL after a grant."""

    database: str
    schema: str
    relations: list[str]


def quote_identifier(name: str) -> str:
    """A PostgreSQL identifier, always quoted (inner quotes doubled), so any name is safe."""
    return _preparer.quote_identifier(name)


def readonly_grants(
    role: str, schema: str = "public", *, owner: str | None = None, database: str | None = None
) -> list[str]:
    """The statements that let ``role`` read every table and view in ``schema``, and no more.

    ``owner`` is the role that creates the tables (``regionsync migrate``'s user); without it,
    the default privileges are those of whoever runs the statements. ``database`` adds
    ``GRANT CONNECT``, needed where CONNECT was revoked from PUBLIC.
    """
    if not role or "\x00" in role:
        raise ConfigError("ROLE", "a role name must be non-empty text")
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


def grant_readonly(engine: Engine, role: str, *, execute: bool = True) -> list[str]:
    """Grant ``role`` read access to every table and view, present and future.

    Returns the statements; with ``execute=False`` only works them out (``--print``), and the
    role need not exist yet.
    """
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
        statements = readonly_grants(role, schema, owner=owner, database=database)
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
        for statement in statements:
            connection.exec_driver_sql(statement)
    return statements


def readable_by(engine: Engine, role: str) -> Readable:
    """The tables and views ``role`` may read now: what ``grant-readonly`` reports it did,
    read back rather than assumed from the statements."""
    with translated_errors("reading the grants"), engine.connect() as connection:
        database, schema = connection.execute(_WHERE).one()
        names = connection.execute(_READABLE, {"schema": schema, "role": role}).scalars()
        return Readable(database, schema, list(names))
