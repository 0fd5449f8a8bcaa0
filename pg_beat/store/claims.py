"""The dispatch statements: the fence, due rows, planning, claiming ticks, parking bad rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection, RowMapping

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
