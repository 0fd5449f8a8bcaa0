"""What sessions do and who blocks whom; replicas; the figures status and metrics show.

Every statement here that ``pg-beat status`` runs first (:data:`LOCK_ACTIVITY`) reads only
``pg_locks``, ``pg_stat_activity`` and the catalogs, never a pg_beat table: it answers while a
migration holds ACCESS EXCLUSIVE on one of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, RowMapping

from pg_beat.store import appnames
from pg_beat.store.lease import LOCK_CLASS_ID
from pg_beat.store.schedules import ROW

# Bounds the statements of one transaction only (a status section): SET LOCAL, as values.
SET_LOCAL_TIMEOUTS = text(
    "SELECT set_config('lock_timeout', :lock, true), set_config('statement_timeout', :stmt, true)"
)


def set_local_timeouts(conn: Connection, lock_timeout: float, statement_timeout: float) -> None:
    """``lock_timeout`` and ``statement_timeout`` (s) for the rest of this transaction."""

    def ms(seconds: float) -> str:
        return str(max(1, int(seconds * 1000)))

    conn.execute(SET_LOCAL_TIMEOUTS, {"lock": ms(lock_timeout), "stmt": ms(statement_timeout)})


# Every lock on pg_beat's tables (relation, tuple, page) and on the group's advisory key, held
# or awaited, and every lock a pg_beat session awaits (a row: transactionid), with who holds
# it: user, application, state, since when, and whom each waiter waits for. ``age`` is how
# long a waiter has waited; for a table lock, how long its transaction has been open (the
# lock is no older); for the advisory key, a session lock, since the holder's last state
# change (it is at least that old). ``waitstart`` exists from PostgreSQL 14 on, hence jsonb.
LOCK_ACTIVITY = text(
    """
    WITH tables AS (
        SELECT c.oid, c.relname FROM pg_class c
        WHERE c.oid IN (to_regclass('pg_beat_schedules'), to_regclass('pg_beat_runs'),
                        to_regclass('pg_beat_leases'), to_regclass('pg_beat_leader_terms'),
                        to_regclass('pg_beat_replicas'))
    ), here AS (
        SELECT oid FROM pg_database WHERE datname = current_database()
    ), locks AS (
        SELECT l.*, t.relname,
               (l.locktype = 'advisory' AND l.classid = :classid
                AND l.objid = CAST(hashtext(:key) AS oid) AND l.objsubid = 2) AS is_key
        FROM pg_locks l LEFT JOIN tables t ON t.oid = l.relation
        WHERE l.pid IS DISTINCT FROM pg_backend_pid()
    )
    SELECT l.pid, l.locktype, l.mode, l.granted, l.relname, l.is_key,
           CASE WHEN l.is_key THEN CAST(:key AS text) END AS lock_key,
           CAST(l.transactionid AS text) AS xid,
           a.application_name, a.usename AS user_name, a.state, a.query,
           CAST(a.client_addr AS text) AS client_addr, a.backend_start,
           a.wait_event_type, a.wait_event,
           clock_timestamp() - CASE
               WHEN NOT l.granted
                   THEN coalesce(CAST(to_jsonb(l) ->> 'waitstart' AS timestamptz), a.query_start)
               WHEN l.is_key THEN least(a.xact_start, a.state_change)
               ELSE coalesce(a.xact_start, a.query_start)
           END AS age,
           clock_timestamp() - a.state_change AS state_age,
           clock_timestamp() - a.xact_start AS xact_age,
           pg_blocking_pids(l.pid) AS blocked_by
    FROM locks l
    LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE (l.relname IS NOT NULL AND l.database = (SELECT oid FROM here))
       OR (l.is_key AND l.database = (SELECT oid FROM here))
       OR (NOT l.granted AND a.datid = (SELECT oid FROM here)
           AND starts_with(a.application_name, 'pg_beat:'))
    ORDER BY l.is_key DESC, l.granted DESC, a.backend_start, l.pid
    """
)


def lock_activity(conn: Connection, group: str) -> Sequence[RowMapping]:
    """Locks on pg_beat's tables and the group's advisory key, and what pg_beat sessions wait
    for, with ``blocked_by`` pids; never waits on a table lock itself."""
    params = {"classid": LOCK_CLASS_ID, "key": f"pg_beat:{group}"}
    return conn.execute(LOCK_ACTIVITY, params).mappings().all()


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
           -- this database's pg_beat: another's on the same server is another cluster
           AND a.datname = current_database()
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


# The broker columns are ages on the replica's monotonic clock, turned into database times
# here (invariant 5: no replica's wall clock is compared with another's). NULL: unknown.
UPSERT_REPLICA = text(
    """
    INSERT INTO pg_beat_replicas
        (group_name, name, host, pid, role, version, backend_pid, started_at, last_seen_at,
         broker_failing_since, broker_error, broker_checked_at, ticks_waiting)
    VALUES (:group, :name, :host, :pid, :role, :version,
            CASE WHEN :session THEN pg_backend_pid() END, :started_at,
            clock_timestamp(),
            clock_timestamp() - make_interval(secs => CAST(:broker_failing_for AS float8)),
            :broker_error,
            clock_timestamp() - make_interval(secs => CAST(:broker_checked_ago AS float8)),
            :ticks_waiting)
    ON CONFLICT (group_name, name) DO UPDATE SET
        host = EXCLUDED.host, pid = EXCLUDED.pid, role = EXCLUDED.role,
        version = EXCLUDED.version, backend_pid = EXCLUDED.backend_pid,
        started_at = EXCLUDED.started_at, last_seen_at = EXCLUDED.last_seen_at,
        broker_failing_since = EXCLUDED.broker_failing_since,
        broker_error = EXCLUDED.broker_error, broker_checked_at = EXCLUDED.broker_checked_at,
        ticks_waiting = EXCLUDED.ticks_waiting
    """
)

# Another live replica of the group whose own broker connection works, as it said lately: one
# a leader cut off from the broker may hand over to (invariant 15).
WORKING_BROKER_PEER = text(
    """
    SELECT name FROM pg_beat_replicas
    WHERE group_name = :group AND name <> :me
      AND last_seen_at > clock_timestamp() - make_interval(secs => :seen_within)
      AND broker_checked_at > clock_timestamp() - make_interval(secs => :checked_within)
      AND broker_failing_since IS NULL
    ORDER BY broker_checked_at DESC
    LIMIT 1
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


def working_broker_peer(
    conn: Connection, group: str, me: str, seen_within: float, checked_within: float
) -> str | None:
    """The name of another live replica reporting a working broker, or None."""
    params = {
        "group": group,
        "me": me,
        "seen_within": seen_within,
        "checked_within": checked_within,
    }
    name = conn.execute(WORKING_BROKER_PEER, params).scalar()
    return None if name is None else str(name)


def prune_replicas(conn: Connection, group: str, older_than: float) -> int:
    return int(conn.execute(PRUNE_REPLICAS, {"group": group, "age": older_than}).rowcount)


# backend_alive (session mode only, else NULL): the session the replica heartbeats on is still
# connected: its pid, under the replica's application_name (a bare pid may be anybody's after
# a restart of the server). Named as pg_beat.store.appnames makes names, or as replicas of
# versions before the token did (``pg_beat:<replica>:<role>``), while a deploy rolls.
LIST_REPLICAS = text(
    f"""
    SELECT r.group_name, r.name, r.host, r.pid, r.role, r.version, r.backend_pid,
           r.started_at, r.last_seen_at, clock_timestamp() - r.last_seen_at AS last_seen_age,
           r.broker_failing_since, clock_timestamp() - r.broker_failing_since
               AS broker_failing_age,
           r.broker_error, clock_timestamp() - r.broker_checked_at AS broker_checked_age,
           r.ticks_waiting,
           CASE WHEN r.backend_pid IS NOT NULL THEN EXISTS (
               SELECT 1 FROM pg_stat_activity a
               WHERE a.pid = r.backend_pid
                 AND ({appnames.sql_is_replica("a.application_name", "r.name")}
                      OR starts_with(a.application_name, left('pg_beat:' || r.name || ':', 63))))
           END AS backend_alive
    FROM pg_beat_replicas r
    WHERE r.group_name = :group
    ORDER BY r.name
    """
)


def list_replicas(conn: Connection, group: str) -> Sequence[RowMapping]:
    """Replica rows with ``last_seen_age`` (an interval) and ``backend_alive`` (None when the
    replica runs in transaction-pooling mode and records no session), and its own broker's
    state: ``broker_failing_since``/``broker_failing_age`` (NULL while it works or before it
    is known), ``broker_error``, ``broker_checked_age`` (NULL: never tried) and, on the leader,
    ``ticks_waiting``."""
    return conn.execute(LIST_REPLICAS, {"group": group}).mappings().all()


DUE_SCHEDULES = text(
    f"""
    SELECT {ROW}, next_run_at - clock_timestamp() AS due_in FROM pg_beat_schedules
    WHERE group_name = :group AND enabled AND next_run_at IS NOT NULL
    ORDER BY next_run_at, name
    LIMIT :limit
    """
)

# The sessions of the process whose session is :backend_pid (the lease holder's), by the token
# in their names; without that session (transaction pooling, or it is gone), of any process
# whose sessions are named for :replica, which a replica name cut to fit may confuse with
# another's: for showing, never for terminating.
REPLICA_BACKENDS = text(
    f"""
    WITH anchor AS (
        SELECT left(application_name, {appnames.HEAD_CHARS}) AS head FROM pg_stat_activity
        WHERE pid = :backend_pid AND application_name ~ {appnames.SQL_HAS_TOKEN}
    )
    SELECT a.pid FROM pg_stat_activity a
    WHERE a.pid <> pg_backend_pid()
      AND a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND CASE WHEN EXISTS (SELECT 1 FROM anchor)
               THEN starts_with(a.application_name, (SELECT head FROM anchor))
               ELSE {appnames.sql_is_replica("a.application_name", ":replica")} END
    ORDER BY a.backend_start
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


# Both on the partial index ix_pg_beat_schedules_failing.
SCHEDULE_FAILURES = text(
    """
    SELECT name, task, enabled, last_error, next_run_at, last_run_at,
           next_run_at IS NULL AS parked, next_run_at - clock_timestamp() AS due_in
    FROM pg_beat_schedules
    WHERE group_name = :group AND last_error IS NOT NULL
    ORDER BY name
    LIMIT :limit
    """
)

COUNT_SCHEDULE_FAILURES = text(
    "SELECT count(*) FROM pg_beat_schedules WHERE group_name = :group AND last_error IS NOT NULL"
)


def schedule_failures(
    conn: Connection, group: str, limit: int = 10
) -> tuple[int, Sequence[RowMapping]]:
    """How many schedules have a ``last_error``, and the first ``limit`` of them by name;
    ``parked`` when it has no ``next_run_at`` (it will not run until edited)."""
    count = int(conn.execute(COUNT_SCHEDULE_FAILURES, {"group": group}).scalar_one())
    if count == 0 or limit == 0:
        return count, []
    return count, conn.execute(SCHEDULE_FAILURES, {"group": group, "limit": limit}).mappings().all()


def due_schedules(conn: Connection, group: str, limit: int = 5) -> Sequence[RowMapping]:
    """The enabled schedules that fall due next, soonest first, with ``due_in`` (an interval)."""
    return conn.execute(DUE_SCHEDULES, {"group": group, "limit": limit}).mappings().all()


def replica_backend_pids(
    conn: Connection, replica: str, backend_pid: int | None = None
) -> list[int]:
    """Backends of the process whose session ``backend_pid`` is, else whose application_name
    says they belong to ``replica`` (any role)."""
    params = {"replica": replica, "backend_pid": backend_pid}
    return [int(row[0]) for row in conn.execute(REPLICA_BACKENDS, params)]


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
