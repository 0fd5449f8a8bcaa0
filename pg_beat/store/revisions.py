"""The schema's own bookkeeping: what a revision declares about the code that may run against
it (``pg_beat_schema_compat``: written by the migrations through :mod:`pg_beat.ddl`, read at
start), and the indexes of pg_beat's tables that are not valid."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

COMPAT_TABLE = "pg_beat_schema_compat"

# Run in the migration's transaction, through the search path it set. Can run again.
RECORD_COMPAT = text(
    f"INSERT INTO {COMPAT_TABLE} (revision, oldest_code_revision) VALUES (:revision, :oldest) "
    "ON CONFLICT (revision) DO UPDATE "
    "SET oldest_code_revision = EXCLUDED.oldest_code_revision, applied_at = now()"
)
FORGET_COMPAT = text(f"DELETE FROM {COMPAT_TABLE} WHERE revision = :revision")

# False when the table does not exist (a schema before 0003): nothing is declared then.
COMPAT_EXISTS = text("SELECT to_regclass(:table) IS NOT NULL")

# An index left by a CREATE (or REINDEX) INDEX ... CONCURRENTLY that failed: not used by any
# query, yet maintained by every write.
INVALID_INDEXES = text(
    r"""
    SELECT c.relname FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_class t ON t.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    WHERE n.nspname = coalesce(CAST(:schema AS text), current_schema())
      AND t.relname LIKE 'pg\_beat\_%'
      AND NOT (i.indisvalid AND i.indisready AND i.indislive)
    ORDER BY c.relname
    """
)


def oldest_code_revision(conn: Connection, revision: str, schema: str | None) -> str | None:
    """The oldest code revision that the schema at ``revision`` declares may run against it;
    None when it declares none (no row, or no table)."""
    table = COMPAT_TABLE
    if schema:
        table = f"{conn.dialect.identifier_preparer.quote_schema(schema)}.{COMPAT_TABLE}"
    if not conn.execute(COMPAT_EXISTS, {"table": table}).scalar():
        return None
    found = conn.execute(
        text(f"SELECT oldest_code_revision FROM {table} WHERE revision = :revision"),
        {"revision": revision},
    ).scalar()
    return None if found is None else str(found)


def invalid_indexes(conn: Connection, schema: str | None) -> list[str]:
    """The indexes of pg_beat's tables in ``schema`` (else the current schema) that are not
    valid, by name."""
    return [str(name) for name in conn.execute(INVALID_INDEXES, {"schema": schema}).scalars()]
