"""Schedule health read back from real PostgreSQL: the overdue rule's counter-cases, judged
row by row (``schedules list|show``) and counted by the database (``status``, metrics), which
must agree; runtime percentiles over the last finished runs; finished runs by outcome.

The workers' side is not running here: its rows (``pg_beat_schedule_health``, the outcome
columns of ``pg_beat_runs``) are written by hand, following the shared data contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from support.waiting import connect

from pg_beat import health, store
from pg_beat.api import ScheduleManager
from pg_beat.config import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = store.connections.make_engine(Settings(database_url=db_url), "test")
    try:
        yield engine
    finally:
        engine.dispose()


def make(db_url: str, name: str, *, sql: str, **definition: Any) -> None:
    """Create schedule ``name``, then set its run state with ``sql`` (an UPDATE's SET list)."""
    with ScheduleManager(db_url) as manager:
        manager.create(name, f"app.{name}", **definition)
    with connect(db_url) as conn:
        conn.execute(f"UPDATE pg_beat_schedules SET {sql} WHERE name = %s", (name,))


def tracked(db_url: str, name: str, *, sql: str) -> None:
    """A health row for ``name``, as a tracking worker upserts it (``sql``: its values)."""
    with connect(db_url) as conn:
        conn.execute(
            "INSERT INTO pg_beat_schedule_health (schedule_id, group_name, last_outcome, "
            "last_finished_at, last_success_at, last_failure_at, consecutive_failures, "
            f"last_error) SELECT id, group_name, {sql} FROM pg_beat_schedules WHERE name = %s",
            (name,),
        )


# name -> (expected state, overdue?)
CASES = {
    # A new daily schedule that has not run yet: not overdue (one day to its first tick).
    "fresh_daily": ("untracked", False),
    # Disabled for hours (a next due time kept): not expected to run, so never overdue.
    "disabled_old": ("disabled", False),
    # Runs every minute, but its last 40 runs failed: its last success is 40 minutes old.
    "keeps_failing": ("overdue", True),
    # Every tick skipped by overlap (a run that never finishes): no success for 10 minutes.
    "all_skipped": ("overdue", True),
    # Tracked, last success 30 s ago.
    "fine": ("ok", False),
    # Not tracked, last run 30 s ago.
    "untracked_recent": ("untracked", False),
    # Not tracked, last run 10 minutes ago: the scheduler stopped sending it.
    "untracked_stale": ("overdue", True),
    # Hourly crontab (period next_run_at - last_due_at), last run 3 hours ago.
    "cron_stale": ("overdue", True),
    # Parked with an error (no next due time), for days: not planned, not overdue.
    "parked": ("parked", False),
    # A crontab created 3 hours ago whose first tick (due 1 hour after) never fired.
    "never_fired": ("overdue", True),
    # Failing, but its last success is recent: failing, not overdue.
    "just_failed": ("failing", False),
}


def make_cases(db_url: str) -> None:
    soon = "next_run_at = now() + interval '30 s'"
    make(db_url, "fresh_daily", every="1d", sql=f"{soon}, created_at = now() - interval '1 h'")
    make(
        db_url, "disabled_old", every="1m", enabled=False,
        sql=f"{soon}, created_at = now() - interval '5 h', last_run_at = now() - interval '4 h'",
    )  # fmt: skip
    make(db_url, "keeps_failing", every="1m", sql=f"{soon}, last_run_at = now()")
    tracked(
        db_url, "keeps_failing",
        sql="'failure', now(), now() - interval '40 min', now(), 40, 'ZeroDivisionError'",
    )  # fmt: skip
    make(db_url, "all_skipped", every="1m", sql=f"{soon}, last_run_at = now()")
    tracked(
        db_url, "all_skipped",
        sql="'success', now() - interval '10 min', now() - interval '10 min', NULL, 0, NULL",
    )  # fmt: skip
    with connect(db_url) as conn:  # its recent ticks, all skipped
        conn.execute(
            """
            INSERT INTO pg_beat_runs (group_name, schedule_id, schedule_name, due_at, task_id,
                                      epoch, replica, status, reason)
            SELECT 'default', id, name, now() - make_interval(mins => n), 't-' || n, 1, 'r',
                   'skipped', 'overlap: previous run t-11 still running'
            FROM pg_beat_schedules, generate_series(1, 9) AS n WHERE name = 'all_skipped'
            """
        )
    make(db_url, "fine", every="1m", sql=f"{soon}, last_run_at = now() - interval '30 s'")
    tracked(
        db_url, "fine",
        sql="'success', now() - interval '30 s', now() - interval '30 s', NULL, 0, NULL",
    )  # fmt: skip
    make(
        db_url, "untracked_recent", every="1m",
        sql=f"{soon}, last_run_at = now() - interval '30 s'",
    )  # fmt: skip
    make(
        db_url, "untracked_stale", every="1m",
        sql=f"{soon}, last_run_at = now() - interval '10 min'",
    )  # fmt: skip
    make(
        db_url, "cron_stale", crontab="0 * * * *",
        sql="last_run_at = now() - interval '3 h', last_due_at = now() - interval '3 h', "
        "next_run_at = now() - interval '2 h', created_at = now() - interval '1 d'",
    )  # fmt: skip
    make(
        db_url, "parked", every="1m",
        sql="next_run_at = NULL, last_error = 'bad options', created_at = now() - interval '3 d'",
    )  # fmt: skip
    make(
        db_url, "never_fired", crontab="0 * * * *",
        sql="created_at = now() - interval '3 h', next_run_at = now() - interval '2 h'",
    )  # fmt: skip
    make(db_url, "just_failed", every="1m", sql=f"{soon}, last_run_at = now()")
    tracked(
        db_url, "just_failed",
        sql="'failure', now(), now() - interval '70 s', now(), 1, 'KeyError: x'",
    )  # fmt: skip


def test_overdue_rule_counter_cases_row_by_row_and_counted(db_url: str, engine: Engine) -> None:
    make_cases(db_url)
    with engine.connect() as conn:
        now = store.connections.db_now(conn)
        rows = store.health.health_of_group(conn, "default")
        found = store.health.unhealthy(conn, "default", 2.0, limit=100)
        listed_overdue = store.health.unhealthy(conn, "default", 2.0, 2, overdue_only=True)
    judged = {name: health.judge(row, 2.0, now) for name, row in rows.items()}
    assert {n: (h.state, h.overdue_for is not None) for n, h in judged.items()} == CASES
    assert judged["keeps_failing"].consecutive_failures == 40
    assert health.label(judged["keeps_failing"]).startswith("failing x40, overdue 40m")
    assert judged["cron_stale"].period == 3600.0
    assert judged["never_fired"].period == 3600.0

    # The database's counts agree with the judgement of each row.
    overdue = {n for n, (_, late) in CASES.items() if late}
    failing = {"keeps_failing", "just_failed"}
    assert (found.overdue, found.failing, found.either) == (
        len(overdue), len(failing), len(overdue | failing),
    )  # fmt: skip
    assert {r["name"] for r in found.worst} == overdue | failing
    # Worst first: overdue by the most periods (3h / 1h for never_fired and cron_stale,
    # 40 periods of a minute for keeps_failing), failing-only last.
    ranks = [r["name"] for r in found.worst]
    assert ranks[0] == "keeps_failing" and ranks[-1] == "just_failed"
    # Bounded by the limit, the counts still complete; only overdue ones with overdue_only.
    assert listed_overdue.overdue == len(overdue)
    # keeps_failing is 40 periods late, all_skipped 10 (and before untracked_stale, also 10
    # but written later): the limit keeps the worst, not the first by name.
    assert [r["name"] for r in listed_overdue.worst] == ["keeps_failing", "all_skipped"]


def test_a_larger_factor_forgives(db_url: str, engine: Engine) -> None:
    make_cases(db_url)
    with engine.connect() as conn:
        found = store.health.unhealthy(conn, "default", 50.0)
    # None is 50 periods late: keeps_failing is 40, untracked_stale and all_skipped 10,
    # cron_stale 3, never_fired 3.
    assert found.overdue == 0
    assert found.failing == 2


def test_runtimes_of_the_last_finished_runs(db_url: str, engine: Engine) -> None:
    make(db_url, "busy", every="1m", sql="next_run_at = now()")
    with connect(db_url) as conn:
        conn.execute(
            """
            INSERT INTO pg_beat_runs (group_name, schedule_id, schedule_name, due_at, task_id,
                                      epoch, replica, status, finished_at, outcome, runtime)
            SELECT 'default', id, name, now() - make_interval(mins => 200 - n), 'b-' || n, 1,
                   'r', 'sent', CASE WHEN n <= 150 THEN now() END,
                   CASE WHEN n <= 150 THEN 'success' END, n
            FROM pg_beat_schedules, generate_series(1, 160) AS n WHERE name = 'busy'
            """
        )  # runs 151-160 are newest but unfinished: their runtime does not count
        schedule_id = conn.execute("SELECT id FROM pg_beat_schedules").fetchone()[0]  # type: ignore[index]
    with engine.connect() as conn:
        runtimes = store.health.recent_runtimes(conn, schedule_id)
    assert sorted(runtimes) == [float(n) for n in range(51, 151)]
    assert health.runtime_summary(runtimes) == {
        "runs": 100, "p50": 100.5, "p95": pytest.approx(145.05),
    }  # fmt: skip


def test_finished_runs_counted_by_outcome_in_the_window(db_url: str, engine: Engine) -> None:
    make(db_url, "counted", every="1m", sql="next_run_at = now()")
    with connect(db_url) as conn:
        conn.execute(
            """
            INSERT INTO pg_beat_runs (group_name, schedule_id, schedule_name, due_at, task_id,
                                      epoch, replica, status, claimed_at, finished_at, outcome)
            SELECT 'default', s.id, s.name, now() - make_interval(mins => n), 'c-' || n, 1, 'r',
                   'sent', now() - make_interval(mins => n),
                   CASE WHEN o <> 'retry' THEN now() END, o
            FROM pg_beat_schedules s,
                 unnest(ARRAY['success', 'success', 'failure', 'lost', 'retry', NULL,
                              'success'],
                        ARRAY[1, 2, 3, 4, 5, 6, 300]) AS u(o, n)
            """
        )  # the last one was claimed 5 hours ago: out of a one-hour window
    with engine.connect() as conn:
        assert store.health.outcome_counts(conn, "default", 3600) == {
            "success": 2, "failure": 1, "lost": 1,
        }  # fmt: skip
        assert store.health.outcome_counts(conn, "other", 3600) == {}
        assert store.health.outcome_counts(conn, "default", 6 * 3600)["success"] == 3
