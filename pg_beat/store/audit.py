"""The audit's reads (``pg-beat runs audit``): schedules by id in batches, their run rows in
ordered pages with what their executions add up to, the group's leader terms and lease.

Nothing here reads a whole table: schedules come ``limit`` at a time after the last id, run
rows ``limit`` at a time after the last (schedule id, due time), through the runs' unique
index on (schedule_id, due_at); executions are counted per run through their task id index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Row, RowMapping

#: The schedule columns the audit reads: the definition, and what bounds its expected ticks.
#: ``tracked``: workers record this schedule's outcomes (a health row, or a run in the window
#: that a worker started or has executions).
SCHEDULES = text(
    """
    SELECT s.id, s.name, s.kind, s.interval_seconds, s.cron_minute, s.cron_hour,
           s.cron_day_of_week, s.cron_day_of_month, s.cron_month_of_year, s.timezone,
           s.solar_event, s.latitude, s.longitude, s.clocked_at, s.start_time, s.end_time,
           s.enabled, s.created_at, s.updated_at, s.next_run_at, s.last_due_at, s.resume_at,
           s.last_error, s.max_runtime,
           EXISTS (SELECT 1 FROM pg_beat_schedule_health h WHERE h.schedule_id = s.id)
           OR EXISTS (SELECT 1 FROM pg_beat_runs r
                      WHERE r.schedule_id = s.id AND r.due_at > :since
                        AND (r.started_at IS NOT NULL OR r.worker IS NOT NULL
                             OR EXISTS (SELECT 1 FROM pg_beat_executions e
                                        WHERE e.task_id = r.task_id))) AS tracked
    FROM pg_beat_schedules s
    WHERE s.group_name = :group AND s.id > :after
      AND (CAST(:name AS text) IS NULL OR s.name = CAST(:name AS text))
    ORDER BY s.id
    LIMIT :limit
    """
)

#: One page of run rows of some schedules due in (since, until], ordered by schedule then due
#: time, after the key (after_id, after_due); with the count of their executions that ran the
#: body (first delivery or a redelivery) and of the duplicate deliveries acknowledged unrun.
#: The columns after schedule_id are in the order of :class:`pg_beat.audit.RunView`'s fields.
RUNS = text(
    """
    SELECT r.schedule_id, r.due_at, r.task_id, r.status, r.claimed_at, r.sent_at, r.reason,
           r.error, r.worker, r.started_at, r.outcome, r.outcome_error,
           coalesce(x.bodies, 0) AS bodies, coalesce(x.duplicates, 0) AS duplicates,
           r.finished_at
    FROM pg_beat_runs r
    LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE e.delivery IN ('first', 'redelivery')) AS bodies,
               count(*) FILTER (WHERE e.delivery = 'duplicate') AS duplicates
        FROM pg_beat_executions e WHERE e.task_id = r.task_id
    ) x ON true
    WHERE r.schedule_id = ANY(CAST(:ids AS bigint[]))
      AND r.due_at > :since AND r.due_at <= :until
      AND (r.schedule_id, r.due_at) > (:after_id, :after_due)
    ORDER BY r.schedule_id, r.due_at
    LIMIT :limit
    """
)

#: The terms from the one that held the lease at :since (the first one if none did) on.
TERMS = text(
    """
    SELECT epoch, acquired_at, previous_expires_at, ended_at FROM pg_beat_leader_terms
    WHERE group_name = :group
      AND epoch >= coalesce((SELECT max(epoch) FROM pg_beat_leader_terms
                             WHERE group_name = :group AND acquired_at <= :since), 0)
    ORDER BY epoch
    LIMIT :limit
    """
)

LEASE = text("SELECT expires_at, released_at FROM pg_beat_leases WHERE group_name = :group")

_BEFORE_ALL = datetime.fromisoformat("0001-01-01T00:00:00+00:00")


def schedules(
    conn: Connection,
    group: str,
    *,
    since: datetime,
    after: int = 0,
    name: str | None = None,
    limit: int = 500,
) -> Sequence[RowMapping]:
    """The next ``limit`` schedules of ``group`` after id ``after`` (or the one named)."""
    params = {"group": group, "since": since, "after": after, "name": name, "limit": limit}
    return conn.execute(SCHEDULES, params).mappings().all()


def runs(
    conn: Connection,
    schedule_ids: Sequence[int],
    since: datetime,
    until: datetime,
    *,
    page: int = 5000,
) -> Iterator[Row[Any]]:
    """The run rows of ``schedule_ids`` due in (``since``, ``until``], ordered by schedule id
    then due time, read ``page`` rows at a time (tuples: the audit reads millions)."""
    after: tuple[int, datetime] = (-1, _BEFORE_ALL)
    while True:
        params = {
            "ids": list(schedule_ids),
            "since": since,
            "until": until,
            "after_id": after[0],
            "after_due": after[1],
            "limit": page,
        }
        rows = conn.execute(RUNS, params).all()
        yield from rows
        if len(rows) < page:
            return
        after = (rows[-1][0], rows[-1][1])


def terms(
    conn: Connection, group: str, since: datetime, limit: int = 10_000
) -> Sequence[RowMapping]:
    """The group's leader terms from the one leading at ``since`` on, oldest first."""
    return conn.execute(TERMS, {"group": group, "since": since, "limit": limit}).mappings().all()


def lease(conn: Connection, group: str) -> RowMapping | None:
    return conn.execute(LEASE, {"group": group}).mappings().first()
