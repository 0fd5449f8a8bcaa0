"""Reading outcomes: each schedule's health, its recent runtimes, the failing and overdue
schedules of a group, and finished runs counted by outcome (the workers write them).

The overdue rule (:mod:`pg_beat.health`) needs a reference time and a period per schedule;
both are computed here, once, in ``_JUDGED``, which the per-row reads return and the counts
filter on, so the CLI's per-row judgement and the counts of status and metrics agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection, RowMapping

from pg_beat.health import RUNTIME_WINDOW

# One row per schedule of the group: its health row (none: outcomes not tracked), the time
# "overdue" counts from, and the period in seconds (NULL: unknown). A LEFT JOIN on the health
# table's primary key: no per-schedule query, whatever the number of schedules.
_JUDGED = """
    SELECT s.id, s.name, s.task, s.enabled, s.next_run_at, s.last_run_at, s.created_at,
           h.schedule_id IS NOT NULL AS tracked,
           h.last_outcome, h.last_finished_at, h.last_success_at, h.last_failure_at,
           coalesce(h.consecutive_failures, 0) AS consecutive_failures,
           h.last_error,
           CASE WHEN h.schedule_id IS NOT NULL THEN coalesce(h.last_success_at, s.created_at)
                ELSE coalesce(s.last_run_at, s.created_at) END AS reference_at,
           CASE WHEN s.kind = 'interval' THEN s.interval_seconds
                WHEN s.last_due_at IS NOT NULL AND s.next_run_at > s.last_due_at
                    THEN extract(epoch FROM s.next_run_at - s.last_due_at)::double precision
                WHEN s.last_due_at IS NULL AND s.next_run_at > s.created_at
                    THEN extract(epoch FROM s.next_run_at - s.created_at)::double precision
           END AS period
    FROM pg_beat_schedules s
    LEFT JOIN pg_beat_schedule_health h ON h.schedule_id = s.id
    WHERE s.group_name = :group
"""

#: The columns :func:`pg_beat.health.judge` reads, per schedule.
HEALTH_OF = text(_JUDGED + " AND s.name = ANY(CAST(:names AS text[]))")
HEALTH_OF_GROUP = text(_JUDGED)

# The same rule as pg_beat.health.overdue_for, on the database clock (now(): status and the
# metrics read it in a transaction of its own; a volatile clock_timestamp() would keep the
# planner from inlining this into ``bad`` below, the one CTE materialised, which keeps only
# the failing and overdue rows).
_FLAGGED = f"""
    WITH j AS ({_JUDGED}),
    f AS (
        SELECT j.*,
               CASE WHEN j.enabled AND j.next_run_at IS NOT NULL AND j.period > 0
                         AND now() - j.reference_at > make_interval(secs => :factor * j.period)
                    THEN extract(epoch FROM now() - j.reference_at)::double precision
               END AS overdue_for
        FROM j
    )
"""

# Counts of failing (consecutive failures, enabled) and overdue schedules, with the worst
# :limit of them: the most overdue (relative to their period) first, then the most failures.
# One row per listed schedule, the counts on each; one row of counts when none is listed.
UNHEALTHY = text(
    _FLAGGED
    + """,
    bad AS MATERIALIZED (
        SELECT * FROM f
        WHERE overdue_for IS NOT NULL OR (enabled AND consecutive_failures > 0)
    ),
    c AS (
        SELECT count(*) FILTER (WHERE enabled AND consecutive_failures > 0) AS failing_count,
               count(*) FILTER (WHERE overdue_for IS NOT NULL) AS overdue_count,
               count(*) AS unhealthy_count
        FROM bad
    ),
    worst AS (
        SELECT * FROM bad
        WHERE CAST(:overdue_only AS boolean) IS FALSE OR overdue_for IS NOT NULL
        ORDER BY overdue_for / period DESC NULLS LAST, consecutive_failures DESC, name
        LIMIT :limit
    )
    SELECT c.failing_count, c.overdue_count, c.unhealthy_count, worst.*
    FROM c LEFT JOIN worst ON true
    ORDER BY worst.overdue_for / worst.period DESC NULLS LAST,
             worst.consecutive_failures DESC, worst.name
    """
)

# The most recent finished runs of one schedule (the unique (schedule_id, due_at) index,
# read backwards, stops after :limit).
RECENT_RUNTIMES = text(
    """
    SELECT runtime FROM pg_beat_runs
    WHERE schedule_id = :schedule_id AND finished_at IS NOT NULL AND runtime IS NOT NULL
    ORDER BY due_at DESC
    LIMIT :limit
    """
)

# Runs claimed in the last :window seconds (ix_pg_beat_runs_claimed_at bounds the read to
# the window, whatever the size of the run log) that finished, by outcome. now(), not
# clock_timestamp(): a volatile bound would not be an index condition.
OUTCOME_COUNTS = text(
    """
    SELECT outcome, count(*) AS runs FROM pg_beat_runs
    WHERE claimed_at >= now() - make_interval(secs => :window)
      AND group_name = :group AND finished_at IS NOT NULL AND outcome IS NOT NULL
    GROUP BY outcome
    """
)


def health_of(conn: Connection, group: str, names: Sequence[str]) -> dict[str, RowMapping]:
    """The health columns of the schedules ``names`` of ``group``, by name."""
    rows = conn.execute(HEALTH_OF, {"group": group, "names": list(names)}).mappings().all()
    return {str(r["name"]): r for r in rows}


def health_of_group(conn: Connection, group: str) -> dict[str, RowMapping]:
    """The health columns of every schedule of ``group``, by name."""
    rows = conn.execute(HEALTH_OF_GROUP, {"group": group}).mappings().all()
    return {str(r["name"]): r for r in rows}


def recent_runtimes(conn: Connection, schedule_id: int, limit: int = RUNTIME_WINDOW) -> list[float]:
    """Runtimes (seconds) of the schedule's last ``limit`` finished runs, by due time."""
    params = {"schedule_id": schedule_id, "limit": limit}
    return [float(r[0]) for r in conn.execute(RECENT_RUNTIMES, params)]


@dataclass(frozen=True)
class Unhealthy:
    """Failing (enabled, with consecutive failures) and overdue schedules of a group."""

    failing: int
    overdue: int
    #: Schedules failing, overdue or both.
    either: int
    #: The worst of them (:data:`HEALTH_OF` columns and ``overdue_for``).
    worst: Sequence[RowMapping]


def unhealthy(
    conn: Connection, group: str, factor: float, limit: int = 10, *, overdue_only: bool = False
) -> Unhealthy:
    """Failing and overdue schedules (per :mod:`pg_beat.health`, on the database clock),
    counted, and the worst ``limit`` of them; with ``overdue_only``, only overdue ones are
    listed."""
    params = {"group": group, "factor": factor, "limit": limit, "overdue_only": overdue_only}
    rows = conn.execute(UNHEALTHY, params).mappings().all()
    first = rows[0]
    return Unhealthy(
        int(first["failing_count"]),
        int(first["overdue_count"]),
        int(first["unhealthy_count"]),
        [r for r in rows if r["id"] is not None],
    )


def outcome_counts(conn: Connection, group: str, window: float) -> dict[str, int]:
    """Runs of ``group`` claimed in the last ``window`` seconds that finished, by outcome."""
    rows = conn.execute(OUTCOME_COUNTS, {"group": group, "window": window})
    return {str(outcome): int(count) for outcome, count in rows}


def explain_unhealthy(conn: Connection, group: str, factor: float, limit: int = 10) -> str:
    """EXPLAIN ANALYZE of :data:`UNHEALTHY` (for the benchmark)."""
    params = {"group": group, "factor": factor, "limit": limit, "overdue_only": False}
    explain = text("EXPLAIN (ANALYZE, BUFFERS) " + str(UNHEALTHY.text))
    return "\n".join(str(r[0]) for r in conn.execute(explain, params))
