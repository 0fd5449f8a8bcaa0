"""Every SQL statement pg_beat runs, and the connections it runs them on.

The rest of the package never builds SQL: it calls these functions with a SQLAlchemy
``Connection`` (or, for LISTEN, a psycopg connection from :func:`listen_connection`).
Statements are plain text so that what runs is what a DBA reads in ``pg_stat_activity``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.pool import NullPool, QueuePool

from pg_beat.config import Settings
from pg_beat.urls import libpq_url, normalise_url

NOTIFY_CHANNEL = "pg_beat_schedules"
LOCK_CLASS_ID = 0x70676274  # 'pgbt': the advisory lock namespace, visible as classid in pg_locks
# Deadlock, lock timeout, statement timeout, serialization failure: retried, never fatal.
TRANSIENT_SQLSTATES = frozenset({"40P01", "55P03", "57014", "40001"})

SCHEDULE_COLUMNS = (
    "name",
    "task",
    "kind",
    "interval_seconds",
    "cron_minute",
    "cron_hour",
    "cron_day_of_week",
    "cron_day_of_month",
    "cron_month_of_year",
    "timezone",
    "solar_event",
    "latitude",
    "longitude",
    "clocked_at",
    "args",
    "kwargs",
    "options",
    "enabled",
    "one_off",
    "start_time",
    "end_time",
    "description",
    "misfire_policy",
    "catch_up_limit",
)


# --- connections ---------------------------------------------------------------------------


def _session_options(settings: Settings, *, dispatch: bool) -> str:
    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options = [
        f"-c statement_timeout={ms(settings.statement_timeout)}",
        f"-c lock_timeout={ms(settings.lock_timeout)}",
        f"-c idle_in_transaction_session_timeout={ms(settings.idle_in_transaction_timeout)}",
        # A peer that vanished without a FIN (partition) is noticed by the server too.
        "-c tcp_keepalives_idle=5",
        "-c tcp_keepalives_interval=2",
        "-c tcp_keepalives_count=3",
    ]
    if settings.schema:
        options.append(f'-c search_path="{settings.schema}",public')
    if dispatch:
        # Tells the triggers that this is the scheduler's own bookkeeping: no re-plan, no NOTIFY.
        options.append("-c pg_beat.dispatch=on")
    return " ".join(options)


def connect_args(settings: Settings, role: str, *, dispatch: bool = False) -> dict[str, Any]:
    """psycopg connection arguments: application name, timeouts, keepalives, search path."""
    return {
        "application_name": f"pg_beat:{settings.replica_name}:{role}"[:63],
        "options": _session_options(settings, dispatch=dispatch),
        "connect_timeout": max(1, int(settings.connect_timeout)),
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }


def make_engine(
    settings: Settings, role: str, *, dispatch: bool = False, pool_size: int = 0
) -> Engine:
    """An engine of pg_beat's own; ``pool_size=0`` means one fresh session per checkout."""
    pool: dict[str, Any] = (
        {"poolclass": NullPool}
        if pool_size == 0
        else {
            "poolclass": QueuePool,
            "pool_size": pool_size,
            "max_overflow": 1,
            "pool_pre_ping": True,
            "pool_timeout": settings.connect_timeout,
        }
    )
    return create_engine(
        normalise_url(settings.database_url),
        connect_args=connect_args(settings, role, dispatch=dispatch),
        **pool,
    )


def listen_connection(settings: Settings, role: str) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection LISTENing on the schedule-change channel."""
    conn = psycopg.connect(
        libpq_url(settings.database_url), autocommit=True, **connect_args(settings, role)
    )
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    return conn


def set_application_name(conn: Connection, name: str) -> None:
    conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": name[:63]})


def backend_pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def db_now(conn: Connection) -> datetime:
    """The database clock (``clock_timestamp()``), which every lease computation uses."""
    value: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return value


def notify_schedules(conn: Connection, payload: str = "wake") -> None:
    conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": NOTIFY_CHANNEL, "p": payload})


# --- schedules: management -----------------------------------------------------------------

_SELECT_SCHEDULE = "SELECT * FROM pg_beat_schedules WHERE group_name = :group"


def get_schedule(conn: Connection, group: str, name: str) -> RowMapping | None:
    return (
        conn.execute(text(_SELECT_SCHEDULE + " AND name = :name"), {"group": group, "name": name})
        .mappings()
        .first()
    )


def lock_schedule(conn: Connection, group: str, name: str) -> RowMapping | None:
    """The row, locked for an edit (waits at most ``lock_timeout`` for an admin's lock)."""
    return (
        conn.execute(
            text(_SELECT_SCHEDULE + " AND name = :name FOR UPDATE"), {"group": group, "name": name}
        )
        .mappings()
        .first()
    )


def list_schedules(
    conn: Connection, group: str, *, source: str | None = None, limit: int | None = None
) -> Sequence[RowMapping]:
    sql = _SELECT_SCHEDULE + (" AND source = :source" if source else "")
    sql += " ORDER BY next_run_at NULLS LAST, name"
    if limit is not None:
        sql += " LIMIT :limit"
    return (
        conn.execute(text(sql), {"group": group, "source": source, "limit": limit}).mappings().all()
    )


def api_names_among(conn: Connection, group: str, names: Iterable[str]) -> set[str]:
    """Which of ``names`` belong to schedules made through the API or SQL."""
    rows = conn.execute(
        text(
            "SELECT name FROM pg_beat_schedules "
            "WHERE group_name = :g AND source = 'api' AND name = ANY(:names)"
        ),
        {"g": group, "names": list(names)},
    )
    return {row[0] for row in rows}


def delete_config_schedules_except(conn: Connection, group: str, keep: Iterable[str]) -> int:
    """Remove ``source='config'`` rows whose entry left ``beat_schedule`` (partial index)."""
    result = conn.execute(
        text(
            "DELETE FROM pg_beat_schedules WHERE group_name = :g AND source = 'config' "
            "AND NOT (name = ANY(:keep))"
        ),
        {"g": group, "keep": list(keep)},
    )
    return int(result.rowcount)


def insert_schedule(conn: Connection, group: str, values: Mapping[str, Any]) -> RowMapping:
    columns = ["group_name", *values.keys()]
    sql = (
        f"INSERT INTO pg_beat_schedules ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) RETURNING *"
    )
    return (
        conn.execute(text(sql).bindparams(*_json_params(values)), {"group_name": group, **values})
        .mappings()
        .one()
    )


def update_schedule(
    conn: Connection, group: str, name: str, values: Mapping[str, Any]
) -> RowMapping | None:
    assigns = ", ".join(f"{c} = :{c}" for c in values)
    sql = (
        f"UPDATE pg_beat_schedules SET {assigns} "
        "WHERE group_name = :_group AND name = :_name RETURNING *"
    )
    return (
        conn.execute(
            text(sql).bindparams(*_json_params(values)), {"_group": group, "_name": name, **values}
        )
        .mappings()
        .first()
    )


def upsert_config_schedule(conn: Connection, group: str, values: Mapping[str, Any]) -> None:
    """Insert or refresh a ``beat_schedule`` entry, keeping its run state (source 'config').

    A row of the same name made through the API or SQL is left alone: config never takes it.
    """
    columns = ["group_name", "source", *values.keys()]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in values if c != "name")
    # Only write when something differs, so an unchanged config re-plans nothing.
    differs = " OR ".join(
        f"pg_beat_schedules.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in values if c != "name"
    )
    sql = (
        f"INSERT INTO pg_beat_schedules ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT (group_name, name) DO UPDATE SET {updates} "
        f"WHERE pg_beat_schedules.source = 'config' AND ({differs})"
    )
    conn.execute(
        text(sql).bindparams(*_json_params(values)),
        {"group_name": group, "source": "config", **values},
    )


def delete_schedules(conn: Connection, group: str, names: Iterable[str]) -> int:
    result = conn.execute(
        text("DELETE FROM pg_beat_schedules WHERE group_name = :g AND name = ANY(:names)"),
        {"g": group, "names": list(names)},
    )
    return int(result.rowcount)


def _json_params(values: Mapping[str, Any]) -> list[Any]:
    from sqlalchemy import bindparam
    from sqlalchemy.dialects.postgresql import JSONB

    return [bindparam(c, type_=JSONB) for c in ("args", "kwargs", "options") if c in values]


# --- schedules: dispatch -------------------------------------------------------------------

FENCE = text(
    """
    SELECT clock_timestamp() AS now FROM pg_beat_leases
    WHERE group_name = :group AND epoch = :epoch AND holder = :holder
      AND expires_at > clock_timestamp()
    FOR SHARE
    """
)

SELECT_DUE = text(
    """
    SELECT * FROM pg_beat_schedules
    WHERE group_name = :group AND enabled AND next_run_at IS NOT NULL
      AND next_run_at <= :now
    ORDER BY next_run_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

SELECT_UNPLANNED = text(
    """
    SELECT * FROM pg_beat_schedules
    WHERE group_name = :group AND enabled AND next_run_at IS NULL AND last_error IS NULL
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

# After a claim at :claimed_at, rows still due by then are locked by someone else (an admin's
# open transaction): they must not set the pace for the others, so only later ones count.
# Such a row is tried again at the next wake-up (at most a heartbeat interval away).
NEXT_WAKE = text(
    """
    SELECT clock_timestamp() AS now,
           (SELECT min(next_run_at) FROM pg_beat_schedules
             WHERE group_name = :group AND enabled AND next_run_at > :claimed_at) AS next_due,
           EXISTS (SELECT 1 FROM pg_beat_schedules
             WHERE group_name = :group AND enabled AND next_run_at IS NULL
               AND last_error IS NULL) AS unplanned
    """
)

# One statement claims a batch: the run rows (unique per tick: a tick claimed before is
# skipped) and the schedules' next due time, run count and last run, together.
CLAIM_TICKS = text(
    """
    WITH u AS (
        SELECT * FROM unnest(
            CAST(:ids AS bigint[]), CAST(:names AS text[]), CAST(:dues AS timestamptz[]),
            CAST(:task_ids AS text[]), CAST(:fired AS boolean[]),
            CAST(:nexts AS timestamptz[])) AS u(id, name, due_at, task_id, fired, next_run_at)
    ), runs AS (
        INSERT INTO pg_beat_runs
            (group_name, schedule_id, schedule_name, due_at, task_id, epoch, replica, status)
        SELECT :group, id, name, due_at, task_id, :epoch, :replica,
               CASE WHEN fired THEN 'claimed' ELSE 'skipped' END
        FROM u
        ON CONFLICT (schedule_id, due_at) DO NOTHING
        RETURNING id, schedule_id, due_at
    ), advanced AS (
        UPDATE pg_beat_schedules AS s SET
            next_run_at = u.next_run_at,
            last_due_at = u.due_at,
            last_run_at = CASE WHEN u.fired THEN clock_timestamp() ELSE s.last_run_at END,
            total_run_count = s.total_run_count + CASE WHEN u.fired THEN 1 ELSE 0 END,
            enabled = s.enabled AND NOT (s.one_off AND u.fired) AND u.next_run_at IS NOT NULL,
            last_error = NULL
        FROM u WHERE s.id = u.id
    )
    SELECT id, schedule_id, due_at FROM runs
    """
)

SET_PLANNED = text(
    """
    UPDATE pg_beat_schedules AS s SET
        next_run_at = u.next_run_at,
        enabled = s.enabled AND u.next_run_at IS NOT NULL
    FROM unnest(CAST(:ids AS bigint[]), CAST(:nexts AS timestamptz[])) AS u(id, next_run_at)
    WHERE s.id = u.id
    """
)

PARK_SCHEDULE = text(
    """
    UPDATE pg_beat_schedules SET next_run_at = NULL, last_error = :error
    WHERE id = :id
    """
)


def fence(conn: Connection, group: str, epoch: int, holder: str) -> datetime | None:
    """The database time when (holder, epoch) is the current, unexpired lease, which stays
    share-locked until commit (a takeover waits for this transaction); else None."""
    row = conn.execute(FENCE, {"group": group, "epoch": epoch, "holder": holder}).first()
    return None if row is None else row[0]


def select_due(conn: Connection, group: str, now: datetime, limit: int) -> Sequence[RowMapping]:
    """Up to ``limit`` rows due at ``now``, locked; rows someone else holds are skipped."""
    return conn.execute(SELECT_DUE, {"group": group, "now": now, "limit": limit}).mappings().all()


def select_unplanned(conn: Connection, group: str, limit: int) -> Sequence[RowMapping]:
    return conn.execute(SELECT_UNPLANNED, {"group": group, "limit": limit}).mappings().all()


@dataclass(frozen=True)
class Wake:
    now: datetime
    next_due: datetime | None
    unplanned: bool


IDLE_CHECK = text(
    """
    SELECT clock_timestamp() AS now,
           (SELECT min(next_run_at) FROM pg_beat_schedules
             WHERE group_name = :group AND enabled AND next_run_at IS NOT NULL) AS next_due,
           EXISTS (SELECT 1 FROM pg_beat_schedules
             WHERE group_name = :group AND enabled AND next_run_at IS NULL
               AND last_error IS NULL) AS unplanned
    """
)


@dataclass(frozen=True)
class Idle:
    now: datetime
    next_due: datetime | None
    unplanned: bool


def idle_check(conn: Connection, group: str) -> Idle:
    """The earliest due time and whether a row awaits planning: all an idle tick reads."""
    row = conn.execute(IDLE_CHECK, {"group": group}).one()
    return Idle(row.now, row.next_due, bool(row.unplanned))


def next_wake(conn: Connection, group: str, claimed_at: datetime) -> Wake:
    row = conn.execute(NEXT_WAKE, {"group": group, "claimed_at": claimed_at}).one()
    return Wake(row.now, row.next_due, bool(row.unplanned))


@dataclass(frozen=True)
class Tick:
    """One due tick of a schedule, decided: send it or not, and the schedule's next due time."""

    schedule_id: int
    schedule: str
    due_at: datetime
    task_id: str
    fire: bool
    next_run_at: datetime | None


def claim_ticks(
    conn: Connection, group: str, epoch: int, replica: str, ticks: Sequence[Tick]
) -> dict[tuple[int, datetime], int]:
    """Record the ticks as runs and advance their schedules; map each *new* run to its id."""
    if not ticks:
        return {}
    rows = conn.execute(
        CLAIM_TICKS,
        {
            "group": group,
            "epoch": epoch,
            "replica": replica,
            "ids": [t.schedule_id for t in ticks],
            "names": [t.schedule for t in ticks],
            "dues": [t.due_at for t in ticks],
            "task_ids": [t.task_id for t in ticks],
            "fired": [t.fire for t in ticks],
            "nexts": [t.next_run_at for t in ticks],
        },
    )
    return {(row.schedule_id, row.due_at): row.id for row in rows}


def set_planned(conn: Connection, plans: Sequence[tuple[int, datetime | None]]) -> None:
    if not plans:
        return
    ids, nexts = (list(column) for column in zip(*plans, strict=True))
    conn.execute(SET_PLANNED, {"ids": ids, "nexts": nexts})


def park_schedule(conn: Connection, schedule_id: int, error: str) -> None:
    """Take a schedule with bad data out of the due query until someone edits it."""
    conn.execute(PARK_SCHEDULE, {"id": schedule_id, "error": error[:2000]})


def run_now(conn: Connection, group: str, name: str) -> bool:
    result = conn.execute(
        text(
            "UPDATE pg_beat_schedules SET next_run_at = clock_timestamp(), enabled = true "
            "WHERE group_name = :g AND name = :n"
        ),
        {"g": group, "n": name},
    )
    return bool(result.rowcount)


# --- runs ----------------------------------------------------------------------------------

MARK_SENT = text(
    """
    UPDATE pg_beat_runs SET status = 'sent', sent_at = clock_timestamp()
    WHERE id = ANY(CAST(:ids AS bigint[])) AND status = 'claimed'
    """
)

# Claims of a dead epoch that were never marked sent, once that epoch's lease has expired
# (the next term records when its predecessor's lease was due to expire).
ORPHANED_CLAIMS = text(
    """
    SELECT r.id, r.schedule_id, r.schedule_name, r.due_at, r.task_id, r.epoch,
           s.task, s.args, s.kwargs, s.options
    FROM pg_beat_runs r
    JOIN pg_beat_schedules s ON s.id = r.schedule_id
    JOIN pg_beat_leader_terms t ON t.group_name = r.group_name AND t.epoch = r.epoch + 1
    WHERE r.group_name = :group AND r.status = 'claimed' AND r.epoch < :epoch
      AND coalesce(t.previous_expires_at, '-infinity') <= clock_timestamp()
    ORDER BY r.due_at
    LIMIT :limit
    FOR UPDATE OF r SKIP LOCKED
    """
)

PENDING_ORPHANS = text(
    """
    SELECT count(*) FROM pg_beat_runs
    WHERE group_name = :group AND status = 'claimed' AND epoch < :epoch
    """
)

PRUNE_RUNS = text(
    """
    DELETE FROM pg_beat_runs WHERE id IN (
        SELECT id FROM pg_beat_runs
        WHERE claimed_at < clock_timestamp() - make_interval(secs => :age)
          AND status <> 'claimed'
        LIMIT :limit)
    """
)


def mark_sent(conn: Connection, run_ids: Sequence[int]) -> None:
    if run_ids:
        conn.execute(MARK_SENT, {"ids": list(run_ids)})


def orphaned_claims(conn: Connection, group: str, epoch: int, limit: int) -> Sequence[RowMapping]:
    return (
        conn.execute(ORPHANED_CLAIMS, {"group": group, "epoch": epoch, "limit": limit})
        .mappings()
        .all()
    )


def pending_orphans(conn: Connection, group: str, epoch: int) -> int:
    return int(conn.execute(PENDING_ORPHANS, {"group": group, "epoch": epoch}).scalar_one())


def prune_runs(conn: Connection, older_than: float, limit: int = 5000) -> int:
    return int(conn.execute(PRUNE_RUNS, {"age": older_than, "limit": limit}).rowcount)


def list_runs(
    conn: Connection,
    group: str,
    *,
    schedule: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> Sequence[RowMapping]:
    sql = (
        "SELECT *, sent_at - due_at AS lateness FROM pg_beat_runs WHERE group_name = :group"
        + (" AND schedule_name = :schedule" if schedule else "")
        + (" AND due_at >= :since" if since else "")
        + " ORDER BY due_at DESC, id DESC LIMIT :limit"
    )
    return (
        conn.execute(
            text(sql), {"group": group, "schedule": schedule, "since": since, "limit": limit}
        )
        .mappings()
        .all()
    )


# --- lease ---------------------------------------------------------------------------------

ENSURE_LEASE = text(
    "INSERT INTO pg_beat_leases (group_name) VALUES (:group) ON CONFLICT DO NOTHING"
)

READ_LEASE = text(
    """
    SELECT l.*, clock_timestamp() AS db_now,
           a.pid IS NOT NULL AS backend_alive, a.state AS backend_state,
           a.wait_event_type, a.wait_event, a.application_name AS backend_application
    FROM pg_beat_leases l
    LEFT JOIN pg_stat_activity a ON a.pid = l.backend_pid
    WHERE l.group_name = :group
    """
)

TAKE_OVER = text(
    """
    WITH old AS (
        SELECT group_name, epoch, holder, expires_at FROM pg_beat_leases
        WHERE group_name = :group FOR UPDATE
    ), new AS (
        UPDATE pg_beat_leases l SET
            epoch = old.epoch + 1, holder = :holder, host = :host, pid = :pid,
            backend_pid = pg_backend_pid(), acquired_at = clock_timestamp(),
            heartbeat_at = clock_timestamp(), progress_at = clock_timestamp(),
            expires_at = clock_timestamp() + make_interval(secs => :ttl)
        FROM old WHERE l.group_name = old.group_name
        RETURNING l.epoch, old.holder AS previous_holder,
                  old.expires_at AS previous_expires_at, l.expires_at
    ), ended AS (
        UPDATE pg_beat_leader_terms t SET ended_at = coalesce(t.ended_at, clock_timestamp())
        FROM old WHERE t.group_name = old.group_name AND t.epoch = old.epoch
    )
    INSERT INTO pg_beat_leader_terms
        (group_name, epoch, holder, host, pid, reason, previous_holder, previous_expires_at)
    SELECT :group, new.epoch, :holder, :host, :pid, :reason, new.previous_holder,
           new.previous_expires_at
    FROM new
    RETURNING epoch, previous_holder, previous_expires_at
    """
)

RENEW = text(
    """
    UPDATE pg_beat_leases SET
        heartbeat_at = clock_timestamp(),
        expires_at = clock_timestamp() + make_interval(secs => :ttl),
        progress_at = clock_timestamp() - make_interval(secs => :progress_age)
    WHERE group_name = :group AND epoch = :epoch AND holder = :holder
      AND backend_pid = pg_backend_pid()
    RETURNING expires_at
    """
)

RELEASE = text(
    """
    WITH released AS (
        UPDATE pg_beat_leases SET expires_at = clock_timestamp(), backend_pid = NULL
        WHERE group_name = :group AND epoch = :epoch AND holder = :holder
        RETURNING group_name, epoch
    )
    UPDATE pg_beat_leader_terms t SET ended_at = clock_timestamp()
    FROM released r WHERE t.group_name = r.group_name AND t.epoch = r.epoch
    """
)

# The holder of ``epoch`` will never publish under it again. The backend pid stays: if that
# session still holds the advisory lock (its client is gone but the server has not noticed),
# standbys see a stale holder and terminate it, as they would at the lease's expiry.
EXPIRE_LEASE = text(
    """
    UPDATE pg_beat_leases SET expires_at = least(expires_at, clock_timestamp())
    WHERE group_name = :group AND epoch = :epoch AND holder = :holder
    """
)

# ...so its unsent claims may be re-published by the next term now rather than once the
# epoch's lease would have expired.
DISOWN_TERM = text(
    """
    UPDATE pg_beat_leader_terms SET previous_expires_at = clock_timestamp()
    WHERE group_name = :group AND epoch = :epoch + 1 AND previous_holder = :holder
      AND previous_expires_at > clock_timestamp()
    """
)

LOCK_HOLDERS = text(
    """
    SELECT l.pid, l.granted, a.application_name, a.state, a.client_addr::text AS client_addr,
           a.backend_start, a.query, clock_timestamp() - a.state_change AS state_age
    FROM pg_locks l
    LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.classid = :classid
      AND l.objid = CAST(hashtext(:key) AS oid) AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    ORDER BY l.granted DESC, a.backend_start
    """
)


def _lock_key(group: str) -> str:
    return f"pg_beat:{group}"


def ensure_lease(conn: Connection, group: str) -> None:
    conn.execute(ENSURE_LEASE, {"group": group})


def read_lease(conn: Connection, group: str) -> RowMapping | None:
    return conn.execute(READ_LEASE, {"group": group}).mappings().first()


def wait_lock(conn: Connection, group: str, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the group's advisory lock (shown as a waiter in pg_locks)."""
    from sqlalchemy.exc import OperationalError

    conn.execute(
        text("SELECT set_config('lock_timeout', :t, false)"), {"t": f"{int(timeout * 1000)}"}
    )
    try:
        conn.execute(
            text("SELECT pg_advisory_lock(:c, hashtext(:k))"),
            {"c": LOCK_CLASS_ID, "k": _lock_key(group)},
        )
        return True
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
            conn.rollback()
            return False
        raise


def unlock_all(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_unlock_all()"))


def lock_holders(conn: Connection, group: str) -> Sequence[RowMapping]:
    """The advisory lock's holder (granted) and waiters, with their pg_stat_activity rows."""
    return (
        conn.execute(LOCK_HOLDERS, {"classid": LOCK_CLASS_ID, "key": _lock_key(group)})
        .mappings()
        .all()
    )


def take_over(
    conn: Connection, group: str, holder: str, host: str, pid: int, ttl: float, reason: str
) -> RowMapping:
    """Bump the epoch and make ``holder`` the leaseholder; record the new term."""
    return (
        conn.execute(
            TAKE_OVER,
            {
                "group": group,
                "holder": holder,
                "host": host,
                "pid": pid,
                "ttl": ttl,
                "reason": reason,
            },
        )
        .mappings()
        .one()
    )


def renew(
    conn: Connection, group: str, epoch: int, holder: str, ttl: float, progress_age: float
) -> datetime | None:
    """Extend the lease; None when it is no longer ours (deposed, or our backend changed)."""
    row = conn.execute(
        RENEW,
        {
            "group": group,
            "epoch": epoch,
            "holder": holder,
            "ttl": ttl,
            "progress_age": max(progress_age, 0.0),
        },
    ).first()
    return None if row is None else row[0]


def release(conn: Connection, group: str, epoch: int, holder: str) -> None:
    conn.execute(RELEASE, {"group": group, "epoch": epoch, "holder": holder})


def disown(conn: Connection, group: str, epoch: int, holder: str) -> None:
    """Expire our lease of ``epoch`` if no one took it over yet, else shorten the wait of the
    term that did. Two statements: the second must see a takeover the first waited for."""
    params = {"group": group, "epoch": epoch, "holder": holder}
    conn.execute(EXPIRE_LEASE, params)
    conn.execute(DISOWN_TERM, params)


def terminate_backend(conn: Connection, pid: int) -> bool:
    return bool(conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one())


TERMINATE_REPLICA = text(
    """
    SELECT pid FROM pg_stat_activity
    WHERE pid <> pg_backend_pid()
      AND starts_with(application_name, left(:prefix, 63))
      AND pg_terminate_backend(pid)
    """
)


def terminate_replica_backends(conn: Connection, replica: str) -> list[int]:
    """Terminate every session of ``replica`` (by its ``pg_beat:<replica>:`` application name)."""
    rows = conn.execute(TERMINATE_REPLICA, {"prefix": f"pg_beat:{replica}:"})
    return [row[0] for row in rows]


def recent_terms(conn: Connection, group: str, limit: int = 10) -> Sequence[RowMapping]:
    return (
        conn.execute(
            text(
                "SELECT * FROM pg_beat_leader_terms WHERE group_name = :g "
                "ORDER BY epoch DESC LIMIT :limit"
            ),
            {"g": group, "limit": limit},
        )
        .mappings()
        .all()
    )


# --- diagnostics ---------------------------------------------------------------------------

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


# --- replicas ------------------------------------------------------------------------------

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


# --- status and CLI ------------------------------------------------------------------------

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
