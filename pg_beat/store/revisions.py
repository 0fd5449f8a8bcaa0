"""The schema's own bookkeeping, read at run time: the indexes of pg_beat's tables that are not
valid."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

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


def invalid_indexes(conn: Connection, schema: str | None) -> list[str]:
    """The indexes of pg_beat's tables in ``schema`` (else the current schema) that are not
    valid, by name."""
    return [str(name) for name in conn.execute(INVALID_INDEXES, {"schema": schema}).scalars()]
