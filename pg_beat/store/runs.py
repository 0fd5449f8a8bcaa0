"""The run log: marking ticks sent, orphaned claims of dead epochs, pruning, listing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection, RowMapping

#: Of an error, as a run's ``error`` or a schedule's ``last_error`` records it.
ERROR_CHARS = 2000

# Named columns, never *: see pg_beat.store.schedules.ROW_COLUMNS.
RUN_COLUMNS = (
    "id, group_name, schedule_id, schedule_name, due_at, task_id, epoch, replica, claimed_at, "
    "sent_at, status, error"
)
#: What ``pg-beat runs`` shows besides: why skipped, and what the workers saw.
LOG_COLUMNS = (
    RUN_COLUMNS + ", reason, worker, started_at, finished_at, outcome, runtime, outcome_error, "
    "attempts, duplicates, sent_at - due_at AS lateness"
)
#: ``pg-beat runs --failed``: the task failed or was lost, or the tick could not be sent.
FAILED = "(outcome IN ('failure', 'lost') OR status = 'failed')"

MARK_SENT = text(
    """
    UPDATE pg_beat_runs SET status = 'sent', sent_at = clock_timestamp()
    WHERE id = ANY(CAST(:ids AS bigint[])) AND status = 'claimed'
    """
)

# A tick that can never be published: the run is failed with the error, and so is the
# schedule's last_error (it keeps running: the next tick may go out).
MARK_FAILED = text(
    """
    WITH u AS (
        SELECT * FROM unnest(CAST(:run_ids AS bigint[]), CAST(:schedule_ids AS bigint[]),
                             CAST(:errors AS text[])) AS u(run_id, schedule_id, error)
    ), failed AS (
        UPDATE pg_beat_runs r SET status = 'failed', error = u.error
        FROM u WHERE r.id = u.run_id AND r.status = 'claimed'
    )
    UPDATE pg_beat_schedules s SET last_error = u.error
    FROM u WHERE s.id = u.schedule_id AND s.next_run_at IS NOT NULL
    """
)

CLEAR_ERRORS = text(
    """
    UPDATE pg_beat_schedules SET last_error = NULL
    WHERE id = ANY(CAST(:ids AS bigint[])) AND last_error IS NOT NULL AND next_run_at IS NOT NULL
    """
)

# Orphans the misfire policy or their expiry drops: recorded, not sent.
SET_RUN_STATUSES = text(
    """
    UPDATE pg_beat_runs r SET status = u.status
    FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[])) AS u(id, status)
    WHERE r.id = u.id AND r.status = 'claimed'
    """
)

# Claims of a dead epoch that were never marked sent, once that epoch's lease has expired,
# with what the misfire policy and the expiry need. Each term records until when the term
# before it could publish (its lease's expiry, or now if it disowned its epoch); the claim may
# go out again once every term that could have sent it could no longer: its own, and each
# later one before ours, which may have been re-publishing it. Terms are found by order, not
# by arithmetic (invariant 17): epochs skip numbers. Our own term is always among them, so
# every claim PENDING_ORPHANS counts is one this query returns once its wait is over.
ORPHANED_CLAIMS = text(
    """
    SELECT r.id, r.schedule_id, r.schedule_name, r.due_at, r.task_id, r.epoch,
           s.task, s.args, s.kwargs, s.options, s.misfire_policy, s.catch_up_limit, s.run_once,
           s.overlap_policy
    FROM pg_beat_runs r
    JOIN pg_beat_schedules s ON s.id = r.schedule_id
    WHERE r.group_name = :group AND r.status = 'claimed' AND r.epoch < :epoch
      AND (SELECT max(coalesce(t.previous_expires_at, '-infinity'))
           FROM pg_beat_leader_terms t
           WHERE t.group_name = r.group_name AND t.epoch > r.epoch AND t.epoch <= :epoch)
          <= clock_timestamp()
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


def mark_failed(conn: Connection, failures: Sequence[tuple[int, int, str]]) -> None:
    """Record (run id, schedule id, error) of ticks that can never be published."""
    if failures:
        run_ids = [run_id for run_id, _, _ in failures]
        schedule_ids = [schedule_id for _, schedule_id, _ in failures]
        errors = [error[:ERROR_CHARS] for _, _, error in failures]
        conn.execute(
            MARK_FAILED, {"run_ids": run_ids, "schedule_ids": schedule_ids, "errors": errors}
        )


def clear_errors(conn: Connection, schedule_ids: Sequence[int]) -> None:
    """Clear ``last_error`` of running schedules whose tick went out again."""
    if schedule_ids:
        conn.execute(CLEAR_ERRORS, {"ids": list(schedule_ids)})


def set_run_statuses(conn: Connection, statuses: Sequence[tuple[int, str]]) -> None:
    """Record claimed runs as skipped or expired instead of sending them."""
    if statuses:
        ids, values = (list(c) for c in zip(*statuses, strict=True))
        conn.execute(SET_RUN_STATUSES, {"ids": ids, "statuses": values})


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
    outcome: str | None = None,
    failed: bool = False,
    limit: int = 50,
) -> Sequence[RowMapping]:
    """The newest ``limit`` runs, with :data:`LOG_COLUMNS`; only those with ``outcome``, and
    with ``failed`` only the failed ones (:data:`FAILED`)."""
    sql = (
        f"SELECT {LOG_COLUMNS} FROM pg_beat_runs WHERE group_name = :group"
        + (" AND schedule_name = :schedule" if schedule else "")
        + (" AND due_at >= :since" if since else "")
        + (" AND outcome = :outcome" if outcome else "")
        + (f" AND {FAILED}" if failed else "")
        + " ORDER BY due_at DESC, id DESC LIMIT :limit"
    )
    params = {
        "group": group,
        "schedule": schedule,
        "since": since,
        "outcome": outcome,
        "limit": limit,
    }
    return conn.execute(text(sql), params).mappings().all()


# --- the run log, followed (``pg-beat runs --follow``) ---------------------------------------

LAST_RUN_ID = text("SELECT coalesce(max(id), 0) FROM pg_beat_runs")

RUNS_AFTER = text(
    f"""
    SELECT {LOG_COLUMNS} FROM pg_beat_runs
    WHERE group_name = :group
      AND (id > :after OR id = ANY(CAST(:pending AS bigint[])))
      AND (CAST(:schedule AS text) IS NULL OR schedule_name = CAST(:schedule AS text))
    ORDER BY id
    LIMIT :limit
    """
)


def last_run_id(conn: Connection) -> int:
    """The highest run id so far (0 when there is none): where following starts."""
    return int(conn.execute(LAST_RUN_ID).scalar_one())


def runs_after(
    conn: Connection,
    group: str,
    after: int,
    *,
    pending: Sequence[int] = (),
    schedule: str | None = None,
    limit: int = 1000,
) -> Sequence[RowMapping]:
    """Runs recorded after run id ``after``, and the runs ``pending`` (ids seen unfinished)
    as they are now, oldest first, with :data:`LOG_COLUMNS` (``lateness``: an interval)."""
    params = {
        "group": group,
        "after": after,
        "pending": list(pending),
        "schedule": schedule,
        "limit": limit,
    }
    return conn.execute(RUNS_AFTER, params).mappings().all()
