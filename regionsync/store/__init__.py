"""The database: engines and their errors, tables and models, migrations, runs, the lock,
the changeset a sync applies, grants, and the reads behind ``status``, ``regions`` and
``changes``.

The package re-exports the engine API (``store.create_engine``, ``store.translated_errors``),
the calls most callers need; everything else is imported from its module.
"""

from regionsync.store.engine import (
    DatabaseUnreachable,
    connection_schema,
    connection_target,
    create_engine,
    database_place,
    describe_db_error,
    sqlite_path,
    translated_errors,
)

__all__ = [
    "DatabaseUnreachable",
    "connection_schema",
    "connection_target",
    "create_engine",
    "database_place",
    "describe_db_error",
    "sqlite_path",
    "translated_errors",
]
