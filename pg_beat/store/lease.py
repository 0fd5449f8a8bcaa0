"""The leadership lease: the row, the advisory lock, takeover, renewal, release."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection, RowMapping

LOCK_CLASS_ID = 0x70676274  # 'pgbt': the advisory lock namespace, visible as classid in pg_locks

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
