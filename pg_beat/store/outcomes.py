"""What the workers record of the tasks pg_beat sent: executions started and finished, run
outcomes, per-schedule health, worker heartbeats, and the run-once claim.

These statements run on a plain psycopg connection of the worker process's own
(:mod:`pg_beat.worker`), with client-side parameters only: nothing is prepared on the server and
no session state is relied on, so they work behind a transaction-pooling proxy. A batch of
events is written with one statement per kind, in one transaction; the events go as one JSON
parameter (``json_to_recordset``): one ``json.dumps`` in C instead of adapting every value of
every array in Python, which was most of the writer's CPU.
Event times are the worker's clock at the event; a worker's liveness is the database's clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg

from pg_beat.store.connections import NOTIFY_CHANNEL
from pg_beat.store.runs import ERROR_CHARS

Outcome = Literal["success", "failure", "retry", "revoked", "lost"]
Delivery = Literal["first", "retry", "redelivery", "duplicate"]
#: Outcomes that end a run (``retry`` leaves it unfinished: a retry is pending).
#: Claims tried when a race made the first answer stale (see CLAIM).
STALE_TRIES = 3
FINAL_OUTCOMES: frozenset[str] = frozenset({"success", "failure", "revoked", "lost"})


@dataclass(frozen=True)
class Started:
    """An execution began on ``worker`` (its ``attempt`` is the request's ``retries``)."""

    task_id: str
    group: str | None
    attempt: int
    worker: str
    delivery: Delivery
    at: datetime


@dataclass(frozen=True)
class Finished:
    """An execution ended (or, ``revoked``, never ran or was terminated); ``runtime`` in
    seconds; ``worker`` None when not known (a revoke seen by the pool's parent process)."""

    task_id: str
    attempt: int
    worker: str | None
    outcome: Outcome
    at: datetime
    runtime: float | None
    error: str | None


def cut(error: str | None) -> str | None:
    """An error as the run log keeps it: at most ERROR_CHARS characters."""
    return None if error is None else error[:ERROR_CHARS]


# The run row, if any, gives the schedule; a task whose run was pruned is still recorded.
# A task id names one tick (group, schedule, due time): one run row, found by
# ix_pg_beat_runs_task_id ("LIMIT 1" without an order, which would tempt the planner into
# walking the primary key). Each UPDATE also names the task ids as ``= ANY(array)``: an index
# condition, so the planner never hashes the whole run log to join a batch of a hundred.
INSERT_STARTED = """
WITH u AS (
    SELECT * FROM json_to_recordset(%(events)s::json)
        AS u(task_id text, group_name text, attempt int, worker text, delivery text,
             started_at timestamptz)
), inserted AS (
    INSERT INTO pg_beat_executions (task_id, group_name, schedule_id, attempt, worker, delivery,
                                    started_at)
    SELECT u.task_id, coalesce(r.group_name, u.group_name), r.schedule_id, u.attempt, u.worker,
           u.delivery, u.started_at
    FROM u LEFT JOIN LATERAL (
        SELECT group_name, schedule_id FROM pg_beat_runs r
        WHERE r.task_id = u.task_id LIMIT 1
    ) r ON true
), per_task AS (
    SELECT DISTINCT ON (task_id) task_id, worker, count(*) OVER w AS n,
           min(started_at) OVER w AS first_at
    FROM u WINDOW w AS (PARTITION BY task_id)
    ORDER BY task_id, started_at DESC
)
UPDATE pg_beat_runs r
SET worker = p.worker, attempts = coalesce(r.attempts, 0) + p.n,
    started_at = coalesce(r.started_at, p.first_at)
FROM per_task p
WHERE r.task_id = p.task_id AND r.task_id = ANY(ARRAY(SELECT u.task_id FROM u))
"""

# The latest outcome per task goes on its run (a real outcome overwrites a 'lost' the leader
# recorded: the truth wins); each execution gets its own. Health: per schedule, the final
# outcomes of this batch in order; the failures after the batch's last success add to (or,
# after a success, replace) the consecutive failures.
WRITE_FINISHED = """
WITH u AS (
    SELECT * FROM json_to_recordset(%(events)s::json)
        AS u(task_id text, attempt int, worker text, outcome text, finished_at timestamptz,
             runtime float8, error text)
), executions AS (
    UPDATE pg_beat_executions e
    SET outcome = u.outcome, finished_at = u.finished_at, runtime = u.runtime, error = u.error
    FROM u
    WHERE e.task_id = u.task_id AND e.task_id = ANY(ARRAY(SELECT u.task_id FROM u))
      AND e.attempt = u.attempt AND e.delivery <> 'duplicate'
      AND e.finished_at IS NULL
), latest AS (
    SELECT DISTINCT ON (task_id) * FROM u ORDER BY task_id, finished_at DESC
), runs AS (
    UPDATE pg_beat_runs r
    SET outcome = l.outcome,
        finished_at = CASE WHEN l.outcome = 'retry' THEN NULL ELSE l.finished_at END,
        runtime = coalesce(l.runtime, r.runtime), outcome_error = l.error,
        worker = coalesce(l.worker, r.worker)
    FROM latest l WHERE r.task_id = l.task_id AND r.task_id = ANY(ARRAY(SELECT u.task_id FROM u))
    RETURNING r.schedule_id, r.group_name
), final AS (
    SELECT r.schedule_id, r.group_name, u.outcome, u.finished_at, u.error
    FROM u JOIN LATERAL (
        SELECT schedule_id, group_name FROM pg_beat_runs r
        WHERE r.task_id = u.task_id LIMIT 1
    ) r ON true
    WHERE u.outcome IN ('success', 'failure', 'revoked', 'lost') AND r.schedule_id IS NOT NULL
), per_schedule AS (
    SELECT schedule_id, min(group_name) AS group_name,
           (array_agg(outcome ORDER BY finished_at DESC))[1] AS last_outcome,
           max(finished_at) AS last_finished_at,
           max(finished_at) FILTER (WHERE outcome = 'success') AS last_success_at,
           max(finished_at) FILTER (WHERE outcome IN ('failure', 'lost')) AS last_failure_at,
           (array_agg(error ORDER BY finished_at DESC)
               FILTER (WHERE outcome IN ('failure', 'lost')))[1] AS last_error
    FROM final GROUP BY schedule_id
), health AS (
    INSERT INTO pg_beat_schedule_health AS h (
        schedule_id, group_name, last_outcome, last_finished_at, last_success_at,
        last_failure_at, consecutive_failures, last_error, updated_at)
    SELECT p.schedule_id, p.group_name, p.last_outcome, p.last_finished_at, p.last_success_at,
           p.last_failure_at,
           (SELECT count(*) FROM final f
            WHERE f.schedule_id = p.schedule_id AND f.outcome IN ('failure', 'lost')
              AND f.finished_at > coalesce(p.last_success_at, '-infinity')),
           p.last_error, now()
    FROM per_schedule p
    ON CONFLICT (schedule_id) DO UPDATE SET
        group_name = excluded.group_name,
        last_outcome = CASE WHEN excluded.last_finished_at >= coalesce(h.last_finished_at,
                                                                       '-infinity')
                            THEN excluded.last_outcome ELSE h.last_outcome END,
        last_finished_at = greatest(h.last_finished_at, excluded.last_finished_at),
        last_success_at = greatest(h.last_success_at, excluded.last_success_at),
        last_failure_at = greatest(h.last_failure_at, excluded.last_failure_at),
        consecutive_failures = CASE WHEN excluded.last_success_at IS NOT NULL
                                    THEN excluded.consecutive_failures
                                    ELSE h.consecutive_failures + excluded.consecutive_failures
                               END,
        last_error = coalesce(excluded.last_error, h.last_error),
        updated_at = now()
)
SELECT pg_notify(%(channel)s, s.group_name)
FROM pg_beat_schedules s
WHERE s.id IN (SELECT schedule_id FROM final) AND s.buffered_due_at IS NOT NULL
"""

HEARTBEAT = """
INSERT INTO pg_beat_workers AS w (name, hostname, pid, started_at, last_seen_at)
VALUES (%(name)s, %(hostname)s, %(pid)s, now(), now())
ON CONFLICT (name) DO UPDATE SET last_seen_at = now(), stopped_at = NULL
"""

STOPPED = (
    "UPDATE pg_beat_workers SET stopped_at = now(), last_seen_at = now() WHERE name = %(name)s"
)

# Run once: ONE statement decides, under the run row's lock, whether this delivery may run,
# and records it. Two deliveries racing wait on that lock; the second sees the first's claim.
# - first: no execution started yet; retry: a later attempt than any recorded (self.retry);
# - redelivery: the run was recorded lost (and finished), or its last execution is unfinished
#   and its worker is gone (stopped, or silent for worker_gone_after) or it started more than
#   max_runtime ago: that execution and (until this one ends) the run are recorded lost;
# - duplicate: anything else (the execution is running or finished): not run, counted;
# - stale: a claim that waited for the row's lock sees the row as the other claim left it,
#   but the executions as they were when it began (READ COMMITTED re-reads only the locked
#   row): their count no longer matches the row's, so nothing is written and the caller asks
#   again, with a new snapshot (a second round trip, only under such a race).
CLAIM = """
WITH r AS (
    SELECT r.id, r.schedule_id, r.group_name,
           CASE
             WHEN %(check)s AND coalesce(r.attempts, 0) <> x.started THEN 'stale'
             WHEN coalesce(r.attempts, 0) = 0 THEN 'first'
             WHEN %(attempt)s > coalesce(x.last_attempt, -1) THEN 'retry'
             WHEN r.outcome = 'lost' AND r.finished_at IS NOT NULL THEN 'redelivery'
             WHEN r.finished_at IS NULL AND (
                 w.stopped_at IS NOT NULL
                 OR w.last_seen_at < now() - make_interval(secs => %(gone_after)s)
                 OR coalesce(x.last_started_at, r.started_at, r.sent_at, r.claimed_at)
                    < now() - make_interval(secs => coalesce(s.max_runtime, %(max_runtime)s)))
               THEN 'redelivery'
             ELSE 'duplicate'
           END AS delivery
    FROM pg_beat_runs r
    LEFT JOIN pg_beat_schedules s ON s.id = r.schedule_id
    LEFT JOIN pg_beat_workers w ON w.name = r.worker
    LEFT JOIN LATERAL (
        SELECT count(*) AS started, max(e.attempt) AS last_attempt,
               max(e.started_at) AS last_started_at
        FROM pg_beat_executions e
        WHERE e.task_id = r.task_id AND e.delivery <> 'duplicate'
    ) x ON true
    WHERE r.task_id = %(task_id)s
    LIMIT 1
    FOR UPDATE OF r
), claimed AS (
    UPDATE pg_beat_runs u SET
        attempts = coalesce(u.attempts, 0) + (r.delivery <> 'duplicate')::int,
        duplicates = coalesce(u.duplicates, 0) + (r.delivery = 'duplicate')::int,
        worker = CASE WHEN r.delivery = 'duplicate' THEN u.worker ELSE %(worker)s END,
        started_at = CASE WHEN r.delivery = 'duplicate' THEN u.started_at
                          ELSE coalesce(u.started_at, %(at)s) END,
        outcome = CASE r.delivery WHEN 'redelivery' THEN 'lost' ELSE u.outcome END,
        finished_at = CASE WHEN r.delivery = 'duplicate' THEN u.finished_at END
    FROM r WHERE u.id = r.id AND r.delivery <> 'stale'
    RETURNING r.delivery, u.schedule_id, u.group_name
), lost AS (
    UPDATE pg_beat_executions e SET outcome = 'lost', finished_at = %(at)s
    FROM claimed c
    WHERE c.delivery = 'redelivery' AND e.task_id = %(task_id)s AND e.finished_at IS NULL
      AND e.delivery <> 'duplicate'
), execution AS (
    INSERT INTO pg_beat_executions (task_id, group_name, schedule_id, attempt, worker, delivery,
                                    started_at, finished_at, outcome)
    SELECT %(task_id)s, c.group_name, c.schedule_id, %(attempt)s, %(worker)s, c.delivery,
           %(at)s, CASE WHEN c.delivery = 'duplicate' THEN %(at)s END,
           CASE WHEN c.delivery = 'duplicate' THEN 'duplicate' END
    FROM claimed c
)
SELECT delivery FROM r
"""


# Whether a tick's run is still held by a live execution: started, unfinished, its worker not
# known gone and younger than its max_runtime (as CLAIM judges them). A redelivered message
# asks this, without writing anything, while it waits to learn whether the execution it was
# redelivered after died (see pg_beat.worker.runonce).
HELD = """
SELECT r.finished_at IS NULL AND coalesce(r.attempts, 0) > 0
       AND NOT coalesce(w.stopped_at IS NOT NULL
                        OR w.last_seen_at < now() - make_interval(secs => %(gone_after)s), false)
       AND coalesce(r.started_at, r.sent_at, r.claimed_at)
           >= now() - make_interval(secs => coalesce(s.max_runtime, %(max_runtime)s))
FROM pg_beat_runs r
LEFT JOIN pg_beat_schedules s ON s.id = r.schedule_id
LEFT JOIN pg_beat_workers w ON w.name = r.worker
WHERE r.task_id = %(task_id)s
LIMIT 1
"""


def held(
    conn: psycopg.Connection[Any], *, task_id: str, gone_after: float, max_runtime: float
) -> bool:
    """Whether a live execution holds the tick's run (see HELD); False without a run row."""
    row = conn.execute(
        HELD, {"task_id": task_id, "gone_after": gone_after, "max_runtime": max_runtime}
    ).fetchone()
    return bool(row and row[0])


def write_started(conn: psycopg.Connection[Any], started: Sequence[Started]) -> None:
    if not started:
        return
    events = [
        {
            "task_id": s.task_id,
            "group_name": s.group,
            "attempt": s.attempt,
            "worker": s.worker,
            "delivery": s.delivery,
            "started_at": s.at.isoformat(),
        }
        for s in started
    ]
    conn.execute(INSERT_STARTED, {"events": json.dumps(events)})


def write_finished(conn: psycopg.Connection[Any], finished: Sequence[Finished]) -> None:
    """The outcomes, health, and a NOTIFY per group whose schedule holds a buffered tick."""
    if not finished:
        return
    events = [
        {
            "task_id": f.task_id,
            "attempt": f.attempt,
            "worker": f.worker,
            "outcome": f.outcome,
            "finished_at": f.at.isoformat(),
            "runtime": f.runtime,
            "error": cut(f.error),
        }
        for f in finished
    ]
    conn.execute(WRITE_FINISHED, {"events": json.dumps(events), "channel": NOTIFY_CHANNEL})


def heartbeat(conn: psycopg.Connection[Any], name: str, hostname: str, pid: int) -> None:
    conn.execute(HEARTBEAT, {"name": name, "hostname": hostname, "pid": pid})


def stopped(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(STOPPED, {"name": name})


def claim(
    conn: psycopg.Connection[Any],
    *,
    task_id: str,
    attempt: int,
    worker: str,
    at: datetime,
    gone_after: float,
    max_runtime: float,
) -> Delivery | None:
    """Claim one execution of a tick's task (see CLAIM); None when the task has no run row."""
    params = {
        "task_id": task_id,
        "attempt": attempt,
        "worker": worker,
        "at": at,
        "gone_after": gone_after,
        "max_runtime": max_runtime,
    }
    for tries_left in range(STALE_TRIES, 0, -1):
        # The last try trusts the row alone: executions pruned apart from their run must not
        # make a tick unclaimable.
        row = conn.execute(CLAIM, {**params, "check": tries_left > 1}).fetchone()
        if row is None:
            return None
        if row[0] != "stale":
            return row[0]  # type: ignore[no-any-return]
    raise AssertionError("unreachable: the last try never answers 'stale'")
