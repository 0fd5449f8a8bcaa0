"""The dispatch statements: the fence, due rows, planning, claiming ticks, parking bad rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import text
from sqlalchemy.engine import Connection, RowMapping

from pg_beat.store.runs import ERROR_CHARS
from pg_beat.store.schedules import ROW

_EPOCH_ZERO = datetime(1, 1, 1, tzinfo=timezone.utc)  # before any due time

# FOR KEY SHARE: a takeover, which locks the row FOR UPDATE, waits for this transaction; the
# holder's own renewal, an UPDATE of non-key columns (FOR NO KEY UPDATE), does not. A leader
# must never lose its lease to its own work (invariant 10).
FENCE = text(
    """
    SELECT clock_timestamp() AS now FROM pg_beat_leases
    WHERE group_name = :group AND epoch = :epoch AND holder = :holder
      AND expires_at > clock_timestamp() AND released_at IS NULL
    FOR KEY SHARE
    """
)

# Due rows in two ranges of the due index, each oldest first: those due within the last
# :window seconds (on time), then the older ones (the backlog). A schedule that slipped a
# second behind (the loop was busy) is served before one a week behind, so a backlog drains
# after the schedules that are on time and never starves them; within each range the tick that
# waited longest goes first, as the publisher sends each lane in claim order. Ticks asked for
# by hand are taken between the two ranges (SELECT_RUN_ONCE below).
SELECT_ON_TIME = text(
    f"""
    SELECT {ROW} FROM pg_beat_schedules
    WHERE group_name = :group AND enabled AND next_run_at IS NOT NULL
      AND next_run_at <= :now AND next_run_at > :now - make_interval(secs => :window)
    ORDER BY next_run_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

SELECT_BACKLOG = text(
    f"""
    SELECT {ROW} FROM pg_beat_schedules
    WHERE group_name = :group AND enabled AND next_run_at IS NOT NULL
      AND next_run_at <= :now - make_interval(secs => :window)
      AND id <> ALL(CAST(:taken AS bigint[]))
    ORDER BY next_run_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

# Rows with a tick asked for by hand (run now of a disabled row, pg_beat_schedules.run_once_at)
# due by :now, oldest first, through their own partial index: the due index covers enabled rows
# only. Between the two ranges above: such a tick is asked for now, and never waits behind a
# backlog. A row this transaction already took (:taken: it is due on its grid too, and locked
# by us, which SKIP LOCKED does not skip) is not taken twice.
SELECT_RUN_ONCE = text(
    f"""
    SELECT {ROW} FROM pg_beat_schedules
    WHERE group_name = :group AND run_once_at <= :now
      AND id <> ALL(CAST(:taken AS bigint[]))
    ORDER BY run_once_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

# A run blocks its schedule's next tick (overlap policies skip and buffer_one) while it is
# unfinished (claimed or sent, no finished_at), younger than its max_runtime (from when it
# started, or was sent, or claimed) and its worker is not GONE (stopped, or silent longer than
# :gone_after seconds). Only the newest run a tick was sent for is looked at, through the
# unique (schedule_id, due_at) index from its end: the skipped rows after it are few (ticks
# while it ran), the finished ones before it are never read.
_NEWEST_SENT = """
    SELECT r.id, r.task_id, r.worker, r.finished_at,
           coalesce(r.started_at, r.sent_at, r.claimed_at) AS since
    FROM pg_beat_runs r
    WHERE r.schedule_id = s.id AND r.status IN ('claimed', 'sent')
    ORDER BY r.due_at DESC
    LIMIT 1
"""
_GONE = (
    "coalesce(w.stopped_at IS NOT NULL "
    "OR w.last_seen_at < :now - make_interval(secs => :gone_after), false)"
)

# Rows holding a tick back (buffer_one: buffered_due_at) whose blocker no longer blocks: the
# held tick is sent now. After the on-time range (it waited for a run, not for us), before
# the ticks asked for by hand and the backlog; through the partial index on buffered rows.
SELECT_BUFFERED = text(
    f"""
    SELECT {ROW} FROM pg_beat_schedules s
    WHERE group_name = :group AND buffered_due_at IS NOT NULL AND enabled
      AND id <> ALL(CAST(:taken AS bigint[]))
      AND NOT EXISTS (
          SELECT 1 FROM ({_NEWEST_SENT}) b
          LEFT JOIN pg_beat_workers w ON w.name = b.worker
          WHERE b.finished_at IS NULL
            AND b.since > :now - make_interval(secs => coalesce(s.max_runtime, :max_runtime))
            AND NOT {_GONE})
    ORDER BY buffered_due_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

# For the due rows whose overlap policy is skip or buffer_one (only those: allow costs
# nothing), one statement for the batch: the newest run a tick was sent for, if unfinished,
# with when it began and whether its worker is GONE. The planner decides whether it blocks.
SELECT_BLOCKERS = text(
    f"""
    SELECT s.id AS schedule_id, b.id AS run_id, b.task_id, b.since, {_GONE} AS worker_gone
    FROM unnest(CAST(:ids AS bigint[])) AS s(id)
    CROSS JOIN LATERAL ({_NEWEST_SENT}) b
    LEFT JOIN pg_beat_workers w ON w.name = b.worker
    WHERE b.finished_at IS NULL
    """
)

# Blockers past their max_runtime, or whose worker is gone: lost (a worker that reports a real
# outcome later overwrites it). Never a run that finished meanwhile.
MARK_LOST = text(
    """
    UPDATE pg_beat_runs SET outcome = 'lost', finished_at = clock_timestamp()
    WHERE id = ANY(CAST(:ids AS bigint[])) AND finished_at IS NULL
    """
)

# When the fenced term began (its takeover transaction's start; the lease's takeover time if
# the term was never recorded) and what it took over: the lease's expiry at the takeover, and
# when the term before it (the first existing one below, invariant 17) was recorded as ended.
# Misfires count only the downtime between the two (invariant 19, pg_beat.downtime).
TERM_HISTORY = text(
    """
    SELECT coalesce(t.acquired_at, l.acquired_at) AS started, t.previous_expires_at,
           (SELECT p.ended_at FROM pg_beat_leader_terms p
             WHERE p.group_name = l.group_name AND p.epoch < l.epoch
             ORDER BY p.epoch DESC LIMIT 1) AS previous_ended_at
    FROM pg_beat_leases l
    LEFT JOIN pg_beat_leader_terms t ON t.group_name = l.group_name AND t.epoch = l.epoch
    WHERE l.group_name = :group AND l.epoch = :epoch
    """
)

SELECT_UNPLANNED = text(
    f"""
    SELECT {ROW} FROM pg_beat_schedules
    WHERE group_name = :group AND enabled AND next_run_at IS NULL AND last_error IS NULL
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

# The earliest due time after :after (on a grid, or a tick asked for by hand), and whether a
# row awaits planning: all an idle step reads, and what a claim reads to know how long to
# sleep. After a claim at time T, rows still due by T are locked by someone else (an admin's
# open transaction): they must not set the pace, so a claim passes T; they are tried again at
# the next wake-up. A tick held back by buffer_one is due when its blocker stops blocking:
# at once if it finished, else at its max_runtime or when its worker turns GONE, whichever
# comes first (a finish before then NOTIFYs the leader, which wakes it sooner).
WAKE = text(
    f"""
    SELECT clock_timestamp() AS now,
           least((SELECT min(next_run_at) FROM pg_beat_schedules
                   WHERE group_name = :group AND enabled AND next_run_at > :after),
                 (SELECT min(run_once_at) FROM pg_beat_schedules
                   WHERE group_name = :group AND run_once_at > :after),
                 (SELECT min(f.at) FROM pg_beat_schedules s
                   CROSS JOIN LATERAL (SELECT CASE
                       WHEN b.finished_at IS NOT NULL OR b.id IS NULL THEN s.buffered_due_at
                       ELSE least(
                           b.since + make_interval(secs => coalesce(s.max_runtime, :max_runtime)),
                           w.stopped_at,
                           w.last_seen_at + make_interval(secs => :gone_after))
                       END AS at
                     FROM (SELECT 1) AS one
                     LEFT JOIN LATERAL ({_NEWEST_SENT}) b ON true
                     LEFT JOIN pg_beat_workers w ON w.name = b.worker) f
                   WHERE s.group_name = :group AND s.enabled AND s.buffered_due_at IS NOT NULL
                     AND f.at > :after)) AS next_due,
           EXISTS (SELECT 1 FROM pg_beat_schedules
             WHERE group_name = :group AND enabled AND next_run_at IS NULL
               AND last_error IS NULL) AS unplanned
    """
)

# One statement claims a batch: the run rows (one per tick, unique per (schedule, due time):
# a tick claimed before is skipped) and, per schedule, its next due time, run count (of the
# runs this statement inserted) and last run, or its parking (an invalid row). A schedule whose
# grid did not move (a.grid false: only its run_once_at tick was due) keeps next_run_at,
# resume_at and enabled; a.once clears the run_once_at whose tick is among the runs; a.buffer
# sets buffered_due_at (buffer_one: the tick held back, or NULL once it is among the runs).
# Returns the new runs to publish.
CLAIM_TICKS = text(
    """
    WITH r AS (
        SELECT * FROM unnest(
            CAST(:r_ids AS bigint[]), CAST(:r_names AS text[]), CAST(:r_dues AS timestamptz[]),
            CAST(:r_task_ids AS text[]), CAST(:r_statuses AS text[]), CAST(:r_errors AS text[]),
            CAST(:r_reasons AS text[])
        ) AS r(schedule_id, name, due_at, task_id, status, error, reason)
    ), a AS (
        SELECT * FROM unnest(
            CAST(:a_ids AS bigint[]), CAST(:a_nexts AS timestamptz[]),
            CAST(:a_last_dues AS timestamptz[]), CAST(:a_errors AS text[]),
            CAST(:a_grids AS boolean[]), CAST(:a_onces AS boolean[]),
            CAST(:a_buffers AS boolean[]), CAST(:a_buffereds AS timestamptz[])
        ) AS a(id, next_run_at, last_due_at, error, grid, once, buffer, buffered_due_at)
    ), runs AS (
        INSERT INTO pg_beat_runs
            (group_name, schedule_id, schedule_name, due_at, task_id, epoch, replica, status,
             error, reason)
        SELECT :group, schedule_id, name, due_at, task_id, :epoch, :replica, status, error,
               reason
        FROM r
        ON CONFLICT (schedule_id, due_at) DO NOTHING
        RETURNING id, schedule_id, due_at, status
    ), fired AS (
        SELECT schedule_id, count(*) AS n FROM runs WHERE status = 'claimed' GROUP BY 1
    ), advanced AS (
        UPDATE pg_beat_schedules AS s SET
            next_run_at = CASE WHEN a.grid THEN a.next_run_at ELSE s.next_run_at END,
            last_due_at = coalesce(a.last_due_at, s.last_due_at),
            last_run_at = CASE WHEN f.n > 0 THEN clock_timestamp() ELSE s.last_run_at END,
            total_run_count = s.total_run_count + coalesce(f.n, 0),
            enabled = s.enabled AND NOT (s.one_off AND coalesce(f.n, 0) > 0)
                      AND (NOT a.grid OR a.next_run_at IS NOT NULL OR a.error IS NOT NULL),
            last_error = coalesce(a.error, s.last_error),
            resume_at = CASE WHEN a.grid THEN NULL ELSE s.resume_at END,
            run_once_at = CASE WHEN a.once THEN NULL ELSE s.run_once_at END,
            buffered_due_at = CASE WHEN a.buffer THEN a.buffered_due_at
                                   ELSE s.buffered_due_at END
        FROM a LEFT JOIN fired f ON f.schedule_id = a.id
        WHERE s.id = a.id
    )
    SELECT id, schedule_id, due_at FROM runs WHERE status = 'claimed'
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

PARK_SCHEDULES = text(
    """
    UPDATE pg_beat_schedules AS s SET next_run_at = NULL, last_error = u.error
    FROM unnest(CAST(:ids AS bigint[]), CAST(:errors AS text[])) AS u(id, error)
    WHERE s.id = u.id
    """
)

# Schedules still running whose last tick could not be published (not the parked ones).
FAILING_SCHEDULES = text(
    """
    SELECT id FROM pg_beat_schedules
    WHERE group_name = :group AND last_error IS NOT NULL AND next_run_at IS NOT NULL
    """
)


def fence(conn: Connection, group: str, epoch: int, holder: str) -> datetime | None:
    """The database time when (holder, epoch) is the current, unexpired lease, which stays
    key-share-locked until commit (a takeover waits for this transaction); else None."""
    row = conn.execute(FENCE, {"group": group, "epoch": epoch, "holder": holder}).first()
    return None if row is None else row[0]


@dataclass(frozen=True)
class Overlap:
    """The settings that say when a run stops blocking (see SELECT_BLOCKERS): seconds."""

    max_runtime: float = 3600.0  # pg_beat_max_runtime, for rows without their own
    gone_after: float = 60.0  # pg_beat_worker_gone_after


def select_due(
    conn: Connection,
    group: str,
    now: datetime,
    limit: int,
    window: float,
    overlap: Overlap = Overlap(),
) -> Sequence[RowMapping]:
    """Up to ``limit`` rows due at ``now``, each once, locked (rows someone else holds are
    skipped): those due within the last ``window`` seconds first, then those holding a tick
    back (``buffered_due_at``) whose blocker stopped blocking, then those with a tick asked for
    by hand (``run_once_at``, enabled or not), then the other due ones; each range oldest
    first."""
    params = {
        "group": group,
        "now": now,
        "limit": limit,
        "window": window,
        "max_runtime": overlap.max_runtime,
        "gone_after": overlap.gone_after,
    }
    rows = list(conn.execute(SELECT_ON_TIME, params).mappings().all())
    for statement in (SELECT_BUFFERED, SELECT_RUN_ONCE, SELECT_BACKLOG):
        if len(rows) >= limit:
            break
        taken = [row["id"] for row in rows]
        params.update(limit=limit - len(rows), taken=taken)
        rows.extend(conn.execute(statement, params).mappings().all())
    return rows


@dataclass(frozen=True)
class TermHistory:
    """See TERM_HISTORY; database times."""

    started: datetime
    previous_expires_at: datetime | None
    previous_ended_at: datetime | None


def term_history(conn: Connection, group: str, epoch: int) -> TermHistory | None:
    """When term ``epoch`` began and what it took over; None when the lease is at another
    epoch (it was taken over)."""
    row = conn.execute(TERM_HISTORY, {"group": group, "epoch": epoch}).first()
    if row is None or row.started is None:
        return None
    return TermHistory(row.started, row.previous_expires_at, row.previous_ended_at)


def select_unplanned(conn: Connection, group: str, limit: int) -> Sequence[RowMapping]:
    return conn.execute(SELECT_UNPLANNED, {"group": group, "limit": limit}).mappings().all()


@dataclass(frozen=True)
class Wake:
    now: datetime
    next_due: datetime | None
    unplanned: bool


def wake(
    conn: Connection,
    group: str,
    after: datetime | None = None,
    overlap: Overlap = Overlap(),
) -> Wake:
    """The database time, the earliest due time after ``after`` (any, when None; a held-back
    tick's is when its blocker stops blocking), and whether a row awaits planning."""
    params = {
        "group": group,
        "after": after or _EPOCH_ZERO,
        "max_runtime": overlap.max_runtime,
        "gone_after": overlap.gone_after,
    }
    row = conn.execute(WAKE, params).one()
    return Wake(row.now, row.next_due, bool(row.unplanned))


@dataclass(frozen=True)
class Blocker:
    """The newest run a schedule's tick was sent for, unfinished (see SELECT_BLOCKERS):
    ``since`` is when it started (or was sent, or claimed)."""

    run_id: int
    task_id: str
    since: datetime
    worker_gone: bool


def blockers(
    conn: Connection,
    schedule_ids: Sequence[int],
    now: datetime,
    overlap: Overlap,
) -> dict[int, Blocker]:
    """The unfinished newest run of each of these schedules that has one, by schedule id."""
    if not schedule_ids:
        return {}
    params = {"ids": list(schedule_ids), "now": now, "gone_after": overlap.gone_after}
    return {
        row.schedule_id: Blocker(row.run_id, row.task_id, row.since, bool(row.worker_gone))
        for row in conn.execute(SELECT_BLOCKERS, params)
    }


def mark_lost(conn: Connection, run_ids: Sequence[int]) -> None:
    """Record these unfinished runs lost (finished now): they no longer block their schedule."""
    if run_ids:
        conn.execute(MARK_LOST, {"ids": list(run_ids)})


@dataclass(frozen=True)
class RunRow:
    """One tick to record: ``status`` claimed (to publish), skipped, expired or failed;
    ``reason`` says why a tick was skipped or sent late by design (overlap)."""

    schedule_id: int
    schedule: str
    due_at: datetime
    task_id: str
    status: str
    error: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Advance:
    """What a claim does to one schedule: its next due time and last due time (None keeps the
    old one), or, with ``error``, parks it (next_run_at NULL) until it is edited.

    ``grid`` False: only the tick asked for by hand was claimed, and the schedule's grid stays
    as it was (``next_run_at``, ``resume_at`` and ``enabled``; ``next_run_at`` here is unused).
    ``once``: that tick is among the runs, so ``run_once_at`` is cleared.
    ``buffer``: ``buffered_due_at`` is set to ``buffered_due_at`` (buffer_one: a tick held
    back, or None once it is among the runs); otherwise it stays.
    """

    schedule_id: int
    next_run_at: datetime | None
    last_due_at: datetime | None
    error: str | None = None
    grid: bool = True
    once: bool = False
    buffer: bool = False
    buffered_due_at: datetime | None = None


def claim_ticks(
    conn: Connection,
    group: str,
    epoch: int,
    replica: str,
    runs: Sequence[RunRow],
    advances: Sequence[Advance],
) -> dict[tuple[int, datetime], int]:
    """Record the runs and advance their schedules; map each *new* claimed run to its id."""
    if not runs and not advances:
        return {}
    rows = conn.execute(
        CLAIM_TICKS,
        {
            "group": group,
            "epoch": epoch,
            "replica": replica,
            "r_ids": [r.schedule_id for r in runs],
            "r_names": [r.schedule for r in runs],
            "r_dues": [r.due_at for r in runs],
            "r_task_ids": [r.task_id for r in runs],
            "r_statuses": [r.status for r in runs],
            "r_errors": [_cut(r.error) for r in runs],
            "r_reasons": [_cut(r.reason) for r in runs],
            "a_ids": [a.schedule_id for a in advances],
            "a_nexts": [a.next_run_at for a in advances],
            "a_last_dues": [a.last_due_at for a in advances],
            "a_errors": [_cut(a.error) for a in advances],
            "a_grids": [a.grid for a in advances],
            "a_onces": [a.once for a in advances],
            "a_buffers": [a.buffer for a in advances],
            "a_buffereds": [a.buffered_due_at for a in advances],
        },
    )
    return {(row.schedule_id, row.due_at): row.id for row in rows}


def set_planned(conn: Connection, plans: Sequence[tuple[int, datetime | None]]) -> None:
    if not plans:
        return
    ids, nexts = (list(column) for column in zip(*plans, strict=True))
    conn.execute(SET_PLANNED, {"ids": ids, "nexts": nexts})


def park_schedules(conn: Connection, parked: Sequence[tuple[int, str]]) -> None:
    """Take schedules with bad data out of the due query until someone edits them."""
    if parked:
        conn.execute(
            PARK_SCHEDULES,
            {"ids": [i for i, _ in parked], "errors": [_cut(e) for _, e in parked]},
        )


def _cut(error: str | None) -> str | None:
    """An error as the store records it: its first ``ERROR_CHARS`` characters."""
    return None if error is None else error[:ERROR_CHARS]


def failing_schedules(conn: Connection, group: str) -> set[int]:
    """Ids of running schedules whose last tick could not be published (partial index)."""
    return {row[0] for row in conn.execute(FAILING_SCHEDULES, {"group": group})}
