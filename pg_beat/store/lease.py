"""The leadership lease: the row, the advisory lock, takeover, renewal, release.

In session mode the holder also holds a session advisory lock (key ``pg_beat:<group>``), which
PostgreSQL releases the moment the holder's session ends; the row adds the epoch (the fencing
token), the holder's identity and database-clock heartbeats. In transaction-pooling mode there
is no session to hold a lock: the row alone decides, and a standby takes over only a lease that
expired or was released.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import OperationalError

from pg_beat.store import appnames
from pg_beat.store.connections import sqlstate

LOCK_CLASS_ID = 0x70676274  # 'pgbt': the advisory lock namespace, visible as classid in pg_locks

# One advisory lock per group, found in pg_locks by (classid, objid, objsubid=2: the two-key
# form) in this database.
_LOCK_MATCH = """
    l.locktype = 'advisory' AND l.classid = :classid
    AND l.objid = CAST(hashtext(:key) AS oid) AND l.objsubid = 2
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

# Named columns, never *: see pg_beat.store.schedules.ROW_COLUMNS.
_LEASE = ", ".join(
    f"lease.{c}"
    for c in (
        "group_name",
        "epoch",
        "holder",
        "host",
        "pid",
        "backend_pid",
        "acquired_at",
        "heartbeat_at",
        "expires_at",
        "progress_at",
        "released_at",
    )
)

ENSURE_LEASE = text(
    "INSERT INTO pg_beat_leases (group_name) VALUES (:group) ON CONFLICT DO NOTHING"
)

# backend_alive: the session recorded as the holder's still holds the advisory lock. A pid
# alone proves nothing: after a server restart or failover it can be anybody's.
READ_LEASE = text(
    f"""
    SELECT {_LEASE}, clock_timestamp() AS db_now,
           EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = lease.backend_pid AND l.granted
                   AND {_LOCK_MATCH}) AS backend_alive,
           h.pid AS lock_holder_pid, h.application_name AS lock_holder_application,
           h.usename AS lock_holder_user,
           a.state AS backend_state, a.wait_event_type, a.wait_event,
           a.application_name AS backend_application
    FROM pg_beat_leases lease
    LEFT JOIN pg_stat_activity a ON a.pid = lease.backend_pid
    LEFT JOIN LATERAL (
        SELECT l.pid, s.application_name, s.usename FROM pg_locks l
        LEFT JOIN pg_stat_activity s ON s.pid = l.pid
        WHERE l.granted AND {_LOCK_MATCH} LIMIT 1
    ) h ON true
    WHERE lease.group_name = :group
    """
)

# Takes the lease if it may be taken: it was released or expired, or (session mode, :locked)
# its holder's session lost the advisory lock this session now holds. A lease taken in
# transaction mode records no backend and is only ever taken once it expired.
#
# The new epoch is above every epoch seen (invariant 17): the lease row's, this replica's
# (:seen_epoch), every term's, and every unsent claim's (on its partial index). A failover of
# PostgreSQL that lost the last commits, or a lease row restored by hand, may have taken the
# row back below them; the epoch never goes back with it, and no claim is ever made under an
# epoch used before. (A sent run's epoch is covered by its term: a takeover commits its term
# before any claim under it, and a lost suffix of the log loses the claims first.)
#
# The new term records until when its predecessor may still publish: the lease's expiry. When
# the row is below an epoch seen, its expiry belongs to an earlier term, not to the latest
# leader, who may still be publishing until its deadline (at most a TTL from its last
# renewal, which came before now): then a TTL from now at least (invariant 3). Every term not
# ended yet ends now (after such a roll-back, those above the row's epoch too).
TAKE_OVER = text(
    """
    WITH seen AS (
        SELECT greatest(
            CAST(:seen_epoch AS bigint),
            (SELECT max(epoch) FROM pg_beat_leader_terms WHERE group_name = :group),
            (SELECT max(epoch) FROM pg_beat_runs
             WHERE group_name = :group AND status = 'claimed')) AS epoch
    ), old AS (
        SELECT group_name, epoch, holder, expires_at FROM pg_beat_leases
        WHERE group_name = :group
          AND (expires_at IS NULL OR expires_at <= clock_timestamp() OR released_at IS NOT NULL
               OR (:locked AND backend_pid IS NOT NULL))
        FOR UPDATE
    ), new AS (
        UPDATE pg_beat_leases l SET
            epoch = greatest(old.epoch, seen.epoch) + 1, holder = :holder, host = :host,
            pid = :pid, backend_pid = CASE WHEN :locked THEN pg_backend_pid() END,
            acquired_at = clock_timestamp(), heartbeat_at = clock_timestamp(),
            progress_at = clock_timestamp(), released_at = NULL,
            expires_at = clock_timestamp() + make_interval(secs => :ttl)
        FROM old, seen WHERE l.group_name = old.group_name
        RETURNING l.epoch, old.holder AS previous_holder,
                  CASE WHEN old.epoch >= seen.epoch THEN old.expires_at
                       ELSE greatest(old.expires_at,
                                     clock_timestamp() + make_interval(secs => :ttl))
                  END AS previous_expires_at,
                  l.expires_at
    ), ended AS (
        UPDATE pg_beat_leader_terms t SET ended_at = clock_timestamp()
        FROM old WHERE t.group_name = old.group_name AND t.ended_at IS NULL
    )
    INSERT INTO pg_beat_leader_terms
        (group_name, epoch, holder, host, pid, reason, previous_holder, previous_expires_at)
    SELECT :group, new.epoch, :holder, :host, :pid, :reason, new.previous_holder,
           new.previous_expires_at
    FROM new
    RETURNING epoch, previous_holder, previous_expires_at
    """
)

# Never an expired lease: once it expired a standby may have taken it, and the old epoch's
# unsent claims may be going out again; the holder takes the lease anew, as a new epoch.
RENEW = text(
    """
    UPDATE pg_beat_leases SET
        heartbeat_at = clock_timestamp(),
        expires_at = clock_timestamp() + make_interval(secs => :ttl),
        progress_at = clock_timestamp() - make_interval(secs => :progress_age)
    WHERE group_name = :group AND epoch = :epoch AND holder = :holder
      AND expires_at > clock_timestamp() AND released_at IS NULL
      AND (backend_pid IS NULL OR backend_pid = pg_backend_pid())
    RETURNING expires_at
    """
)

RELEASE = text(
    """
    WITH released AS (
        UPDATE pg_beat_leases SET expires_at = clock_timestamp(), backend_pid = NULL,
                                  released_at = clock_timestamp()
        WHERE group_name = :group AND epoch = :epoch AND holder = :holder
        RETURNING group_name, epoch
    )
    UPDATE pg_beat_leader_terms t SET ended_at = clock_timestamp()
    FROM released r WHERE t.group_name = r.group_name AND t.epoch = r.epoch
    """
)

# The holder of ``epoch`` will never publish under it again. The backend pid stays: if that
# session still holds the advisory lock (its client is gone but the server has not noticed),
# standbys see it in pg_locks and terminate it.
EXPIRE_LEASE = text(
    """
    UPDATE pg_beat_leases SET expires_at = least(expires_at, clock_timestamp()),
                              released_at = clock_timestamp()
    WHERE group_name = :group AND epoch = :epoch AND holder = :holder
    """
)

# ...so its unsent claims may be re-published by the next term now rather than once the
# epoch's lease would have expired. The next term is the first one above ours, whatever its
# number: epochs skip (invariant 17).
DISOWN_TERM = text(
    """
    UPDATE pg_beat_leader_terms t SET previous_expires_at = clock_timestamp()
    WHERE t.group_name = :group
      AND t.epoch = (SELECT min(n.epoch) FROM pg_beat_leader_terms n
                     WHERE n.group_name = :group AND n.epoch > :epoch)
      AND t.previous_holder = :holder AND t.previous_expires_at > clock_timestamp()
    """
)

LOCK_HOLDERS = text(
    f"""
    SELECT l.pid, l.granted, a.application_name, a.usename AS user_name, a.state,
           a.client_addr::text AS client_addr, a.backend_start, a.query,
           clock_timestamp() - a.state_change AS state_age
    FROM pg_locks l
    LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE {_LOCK_MATCH}
    ORDER BY l.granted DESC, a.backend_start
    """
)

# Only a session that pg_locks shows holding the group's advisory lock is terminated (a pid
# read from the lease row is a hint, and after a restart it may be somebody else's), and with
# it the sessions of the same process (the token in its application name: see
# pg_beat.store.appnames; a cut replica name may be another replica's) that hold a lock on
# the lease table: an open dispatch transaction of the hung process (its fence) would stall
# the takeover until the server's idle_in_transaction_session_timeout. One statement: what
# pg_locks shows is what is terminated.
TERMINATE_LOCK_HOLDER = text(
    f"""
    WITH holder AS MATERIALIZED (
        SELECT l.pid, a.application_name FROM pg_locks l
        LEFT JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.pid = :pid AND l.granted AND {_LOCK_MATCH}
    ), targets AS MATERIALIZED (
        SELECT h.pid, true AS holder FROM holder h
        UNION ALL
        SELECT a.pid, false FROM holder h
        JOIN pg_stat_activity a
          ON a.pid <> h.pid AND a.pid <> pg_backend_pid()
         AND h.application_name ~ {appnames.SQL_HAS_TOKEN}
         AND starts_with(a.application_name, left(h.application_name, {appnames.HEAD_CHARS}))
        WHERE EXISTS (SELECT 1 FROM pg_locks l
                      WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation'
                        AND l.relation = to_regclass('pg_beat_leases'))
    )
    SELECT t.pid, t.holder FROM targets t WHERE pg_terminate_backend(t.pid)
    """
)

# At shutdown, our own lease session (its pid, remembered): terminated only while pg_locks
# shows it holding the group's advisory lock under this very process's token. After a
# restart of the server that pid may be any client's, another replica's leader included.
TERMINATE_OWN_SESSION = text(
    f"""
    SELECT pg_terminate_backend(l.pid) FROM pg_locks l
    JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.pid = :pid AND l.granted AND {_LOCK_MATCH}
      AND starts_with(a.application_name, :head)
    """
)


def _lock_params(group: str) -> dict[str, Any]:
    return {"classid": LOCK_CLASS_ID, "key": f"pg_beat:{group}"}


def ensure_lease(conn: Connection, group: str) -> None:
    conn.execute(ENSURE_LEASE, {"group": group})


def read_lease(conn: Connection, group: str) -> RowMapping | None:
    """The lease row with ``db_now``, ``backend_alive`` (the recorded session holds the lock),
    ``lock_holder_pid`` (whoever holds the lock) and the holder backend's activity."""
    return conn.execute(READ_LEASE, {"group": group, **_lock_params(group)}).mappings().first()


def wait_lock(conn: Connection, group: str, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the group's advisory lock (shown as a waiter in pg_locks).

    Runs in a transaction of its own: ``SET LOCAL`` bounds this one wait and leaves the
    session's ``lock_timeout`` as it was; the session lock outlives the commit.
    """
    try:
        with conn.begin():
            conn.execute(
                text("SELECT set_config('lock_timeout', :t, true)"),
                {"t": str(max(1, int(timeout * 1000)))},
            )
            conn.execute(
                text("SELECT pg_advisory_lock(:classid, hashtext(:key))"), _lock_params(group)
            )
        return True
    except OperationalError as exc:
        if sqlstate(exc) == "55P03":  # lock_not_available
            return False
        raise


def unlock_all(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_unlock_all()"))


def lock_holders(conn: Connection, group: str) -> Sequence[RowMapping]:
    """The advisory lock's holder (granted) and waiters, with their pg_stat_activity rows."""
    return conn.execute(LOCK_HOLDERS, _lock_params(group)).mappings().all()


def take_over(
    conn: Connection,
    group: str,
    *,
    holder: str,
    host: str,
    pid: int,
    ttl: float,
    reason: str,
    locked: bool,
    seen_epoch: int,
) -> RowMapping | None:
    """Bump the epoch and make ``holder`` the leaseholder, recording the new term; None when
    the lease may not be taken now (held, and not by a session that lost our lock)."""
    params = {
        "group": group,
        "holder": holder,
        "host": host,
        "pid": pid,
        "ttl": ttl,
        "reason": reason,
        "locked": locked,
        "seen_epoch": seen_epoch,
    }
    return conn.execute(TAKE_OVER, params).mappings().first()


def renew(
    conn: Connection, group: str, epoch: int, holder: str, ttl: float, progress_age: float
) -> datetime | None:
    """Extend the lease; None when it is no longer ours (deposed, expired, released, or our
    session changed)."""
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


def terminate_lock_holder(conn: Connection, group: str, pid: int) -> int | None:
    """Terminate ``pid`` only if it holds the group's advisory lock, and with it the other
    sessions of its process that hold a lock on the lease table. The number of those others,
    or None when ``pid`` did not hold the lock (nothing was terminated)."""
    rows = conn.execute(TERMINATE_LOCK_HOLDER, {"pid": pid, **_lock_params(group)}).all()
    if not any(holder for _, holder in rows):
        return None
    return sum(1 for _, holder in rows if not holder)


def terminate_own_session(conn: Connection, group: str, pid: int, token: str) -> bool:
    """End our lease session (at shutdown), by its pid, only while it holds the group's lock
    under our ``token`` (:attr:`Connector.token`); True when it was terminated."""
    params = {"pid": pid, "head": appnames.head(token), **_lock_params(group)}
    row = conn.execute(TERMINATE_OWN_SESSION, params).first()
    return row is not None and bool(row[0])


def recent_terms(conn: Connection, group: str, limit: int = 10) -> Sequence[RowMapping]:
    return (
        conn.execute(
            text(
                "SELECT group_name, epoch, holder, host, pid, acquired_at, reason, "
                "previous_holder, previous_expires_at, ended_at "
                "FROM pg_beat_leader_terms WHERE group_name = :g "
                "ORDER BY epoch DESC LIMIT :limit"
            ),
            {"g": group, "limit": limit},
        )
        .mappings()
        .all()
    )
