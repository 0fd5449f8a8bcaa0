"""The run log: marking ticks sent, orphaned claims of dead epochs, pruning, listing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection, RowMapping

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
