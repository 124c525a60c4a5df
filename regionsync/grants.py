"""A read-only PostgreSQL role for analysts and BI tools: read every table and view."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from regionsync.errors import ConfigError
from regionsync.store import translated_errors


def quote_identifier(name: str) -> str:
    """PostgreSQL's quoting of an identifier: always quoted, inner quotes doubled."""
    if not name or "\x00" in name:
        raise ConfigError("ROLE", "a role name must be non-empty text")
    return '"' + name.replace('"', '""') + '"'


def readonly_grants(role: str, schema: str = "public") -> list[str]:
    """The statements ``grant-readonly`` runs, with both names safely quoted.

    ``ALTER DEFAULT PRIVILEGES`` applies to tables and views created later by the user who
    runs it, which is the user that runs ``regionsync migrate``: run both as the same user.
    """
    who, where = quote_identifier(role), quote_identifier(schema)
    return [
        f"GRANT USAGE ON SCHEMA {where} TO {who}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {where} TO {who}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {where} GRANT SELECT ON TABLES TO {who}",
    ]


def grant_readonly(engine: Engine, role: str) -> list[str]:
    """Grant ``role`` read access to every table and view (and future ones); returns the SQL."""
    if engine.dialect.name != "postgresql":
        raise ConfigError(
            "REGIONSYNC_DATABASE_URL", "grant-readonly needs PostgreSQL; SQLite has no roles"
        )
    with translated_errors("granting read access"), engine.begin() as connection:
        exists = connection.execute(
            sa.text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
        ).first()
        if exists is None:
            raise ConfigError("ROLE", f"no PostgreSQL role named {role!r}; CREATE ROLE it first")
        schema = connection.execute(sa.text("SELECT current_schema()")).scalar_one()
        statements = readonly_grants(role, schema)
        for statement in statements:
            connection.exec_driver_sql(statement)
    return statements
