"""What sessions do and who blocks whom; replicas; the figures status and metrics show."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, RowMapping

BACKEND_DIAGNOSTICS = text(
    """
    SELECT a.pid, a.application_name, a.state, a.wait_event_type, a.wait_event,
           left(a.query, 500) AS query, clock_timestamp() - a.query_start AS query_age,
           clock_timestamp() - a.xact_start AS xact_age,
           (SELECT coalesce(json_agg(json_build_object(
                'pid', b.pid, 'application_name', b.application_name, 'state', b.state,
                'query', left(b.query, 500),
                'age', extract(epoch FROM clock_timestamp() - b.state_change))), '[]'::json)
            FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid))) AS blocked_by
    FROM pg_stat_activity a
    WHERE a.pid = ANY(CAST(:pids AS int[]))
       OR (:pg_beat_only AND a.application_name LIKE 'pg_beat:%'
           AND cardinality(pg_blocking_pids(a.pid)) > 0)
    """
)


def backend_diagnostics(
    conn: Connection, pids: Sequence[int] = (), *, blocked_pg_beat: bool = False
) -> Sequence[RowMapping]:
    """What the given backends (or every blocked pg_beat backend) are doing and who blocks them."""
    return (
        conn.execute(BACKEND_DIAGNOSTICS, {"pids": list(pids), "pg_beat_only": blocked_pg_beat})
        .mappings()
        .all()
    )


UPSERT_REPLICA = text(
    """
    INSERT INTO pg_beat_replicas
        (group_name, name, host, pid, role, version, backend_pid, started_at, last_seen_at)
    VALUES (:group, :name, :host, :pid, :role, :version, pg_backend_pid(), :started_at,
            clock_timestamp())
    ON CONFLICT (group_name, name) DO UPDATE SET
        host = EXCLUDED.host, pid = EXCLUDED.pid, role = EXCLUDED.role,
        version = EXCLUDED.version, backend_pid = EXCLUDED.backend_pid,
        started_at = EXCLUDED.started_at, last_seen_at = EXCLUDED.last_seen_at
    """
)

PRUNE_REPLICAS = text(
    """
    DELETE FROM pg_beat_replicas
    WHERE group_name = :group AND last_seen_at < clock_timestamp() - make_interval(secs => :age)
    """
)


def heartbeat_replica(conn: Connection, group: str, values: Mapping[str, Any]) -> None:
    conn.execute(UPSERT_REPLICA, {"group": group, **values})


def prune_replicas(conn: Connection, group: str, older_than: float) -> int:
    return int(conn.execute(PRUNE_REPLICAS, {"group": group, "age": older_than}).rowcount)


def list_replicas(conn: Connection, group: str) -> Sequence[RowMapping]:
    return (
        conn.execute(
            text(
                "SELECT *, clock_timestamp() - last_seen_at AS last_seen_age FROM pg_beat_replicas "
                "WHERE group_name = :g ORDER BY name"
            ),
            {"g": group},
        )
        .mappings()
        .all()
    )


DUE_SCHEDULES = text(
    """
    SELECT *, next_run_at - clock_timestamp() AS due_in FROM pg_beat_schedules
    WHERE group_name = :group AND enabled AND next_run_at IS NOT NULL
    ORDER BY next_run_at, name
    LIMIT :limit
    """
)

# A prefix match that treats '_' and '%' in replica names literally (LIKE would not).
REPLICA_BACKENDS = text(
    """
    SELECT pid FROM pg_stat_activity
    WHERE left(application_name, length(:prefix)) = :prefix AND pid <> pg_backend_pid()
    ORDER BY backend_start
    """
)

METRICS_SNAPSHOT = text(
    """
    SELECT clock_timestamp() AS db_now,
           (SELECT count(*) FROM pg_beat_schedules
             WHERE group_name = :group AND enabled AND next_run_at IS NOT NULL
               AND next_run_at <= clock_timestamp()) AS due_backlog,
           l.epoch, l.holder,
           CAST(extract(epoch FROM clock_timestamp() - l.heartbeat_at) AS double precision)
               AS heartbeat_age
    FROM (SELECT 1) AS one
    LEFT JOIN pg_beat_leases l ON l.group_name = :group
    """
)


def due_schedules(conn: Connection, group: str, limit: int = 5) -> Sequence[RowMapping]:
    """The enabled schedules that fall due next, soonest first, with ``due_in`` (an interval)."""
    return conn.execute(DUE_SCHEDULES, {"group": group, "limit": limit}).mappings().all()


def replica_backend_pids(conn: Connection, replica: str) -> list[int]:
    """Backends whose application_name says they belong to ``replica`` (any role)."""
    prefix = f"pg_beat:{replica}:"[:63]
    return [int(row[0]) for row in conn.execute(REPLICA_BACKENDS, {"prefix": prefix})]


def metrics_snapshot(conn: Connection, group: str) -> RowMapping:
    """Due backlog and the lease's epoch, holder and heartbeat age (s), on the database clock."""
    return conn.execute(METRICS_SNAPSHOT, {"group": group}).mappings().one()


# Sessions whose open transaction holds locks on pg_beat's tables (e.g. a forgotten
# SELECT ... FOR UPDATE in psql: the due query skips that row, so its schedule never fires).
LONG_TRANSACTIONS = text(
    """
    SELECT a.pid, a.application_name, a.state, left(a.query, 500) AS query,
           clock_timestamp() - a.xact_start AS xact_age,
           array_agg(DISTINCT c.relname ORDER BY c.relname) AS tables
    FROM pg_locks l
    JOIN pg_class c ON c.oid = l.relation
    JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation' AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.relation IN (to_regclass('pg_beat_schedules'), to_regclass('pg_beat_runs'),
                         to_regclass('pg_beat_leases'), to_regclass('pg_beat_leader_terms'),
                         to_regclass('pg_beat_replicas'))
      AND a.pid <> pg_backend_pid()
      AND a.xact_start < clock_timestamp() - make_interval(secs => :min_age)
    GROUP BY a.pid, a.application_name, a.state, a.query, a.xact_start
    ORDER BY a.xact_start
    """
)


def long_transactions(conn: Connection, min_age: float) -> Sequence[RowMapping]:
    """Sessions whose transaction, open for over ``min_age`` s, holds locks on pg_beat tables."""
    return conn.execute(LONG_TRANSACTIONS, {"min_age": min_age}).mappings().all()
