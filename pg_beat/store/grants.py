"""The least privileges a replica needs, granted to a role (``pg-beat db grant``).

A replica reads and writes pg_beat's tables (DML only: no DDL, no ownership), reads the
schema revision and its compatibility records, and takes advisory locks, LISTENs, NOTIFYs and
reads ``pg_locks`` and ``pg_stat_activity``, which every role may. Terminating a hung
leader's session needs the same role as that leader or ``pg_signal_backend``; reading other
roles' query text in ``pg-beat status`` needs ``pg_read_all_stats``.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

# Read at start when the database is at a revision the replica's release does not know.
from pg_beat.store.revisions import COMPAT_TABLE

TABLES = (
    "pg_beat_schedules",
    "pg_beat_runs",
    "pg_beat_leases",
    "pg_beat_leader_terms",
    "pg_beat_replicas",
    # 0004: the leader reads workers (a run whose worker is gone stops blocking), the worker
    # side writes all three.
    "pg_beat_executions",
    "pg_beat_schedule_health",
    "pg_beat_workers",
)
SEQUENCES = ("pg_beat_schedules_id_seq", "pg_beat_runs_id_seq")
VERSION_TABLE = "pg_beat_alembic_version"


def grant_replica(
    conn: Connection,
    role: str,
    schema: str | None = None,
    *,
    signal_backend: bool = False,
    read_all_stats: bool = False,
) -> list[str]:
    """Grant ``role`` what a replica, the API and the CLI need; the statements run."""
    quote = conn.dialect.identifier_preparer.quote
    who = quote(role)
    where = quote(schema) if schema else "current_schema()"
    prefix = f"{quote(schema)}." if schema else ""
    statements = [
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(prefix + t for t in TABLES)} TO {who}",
        f"GRANT SELECT ON {prefix}{VERSION_TABLE}, {prefix}{COMPAT_TABLE} TO {who}",
        f"GRANT USAGE, SELECT ON SEQUENCE {', '.join(prefix + s for s in SEQUENCES)} TO {who}",
    ]
    if schema:
        statements.insert(0, f"GRANT USAGE ON SCHEMA {where} TO {who}")
    else:
        # GRANT takes no expression: the schema of the tables, as this session resolves them.
        found = conn.execute(text("SELECT current_schema()")).scalar_one()
        statements.insert(0, f"GRANT USAGE ON SCHEMA {quote(str(found))} TO {who}")
    if signal_backend:
        statements.append(f"GRANT pg_signal_backend TO {who}")
    if read_all_stats:
        statements.append(f"GRANT pg_read_all_stats TO {who}")
    for statement in statements:
        conn.execute(text(statement))
    return statements
