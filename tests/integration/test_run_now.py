"""Run now against real PostgreSQL and a real in-process replica (watchdog, lease, dispatch
loop): a disabled schedule sends one tick and stays disabled, its grid untouched; an enabled
one keeps its own path (test_dispatch, test_api)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from support.inproc import Replica, replica
from support.pg import libpq_url as libpq

from pg_beat import store
from pg_beat.api import ScheduleManager
from pg_beat.publish.ticks import task_id_for

#: Steps after a tick went out during which nothing else may go out (a 0.2 s interval would
#: tick five times).
QUIET = 1.0


def sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def state(url: str, name: str) -> dict[str, Any]:
    (found,) = sql(
        url,
        "SELECT enabled, next_run_at, resume_at, run_once_at, last_due_at, total_run_count "
        "FROM pg_beat_schedules WHERE name = %s",
        name,
    )
    keys = ("enabled", "next_run_at", "resume_at", "run_once_at", "last_due_at", "runs")
    return dict(zip(keys, found, strict=True))


def runs(url: str, name: str) -> list[tuple[datetime, str, str]]:
    return [
        (r[0], r[1], r[2])
        for r in sql(
            url,
            "SELECT due_at, status, task_id FROM pg_beat_runs WHERE schedule_name = %s "
            "ORDER BY due_at",
            name,
        )
    ]


@pytest.fixture
def api(db_url: str) -> Iterator[ScheduleManager]:
    with ScheduleManager(db_url) as manager:
        yield manager


def sent_once(rep: Replica, name: str) -> list[datetime]:
    """Due times of what went out for ``name`` so far."""
    return [claim.due_at for claim, _ in rep.outbox.sent if claim.schedule == name]


def test_run_now_of_a_disabled_schedule_sends_one_tick_and_leaves_it_disabled(
    db_url: str, api: ScheduleManager
) -> None:
    api.create("off", "t.off", every=0.2)
    with replica(db_url) as rep:
        rep.run_until(lambda: len(sent_once(rep, "off")) >= 2)  # it ran on its grid
        api.disable("off")
        rep.run_for(0.5)  # a tick claimed before the disable is sent; then nothing
        before, history = state(db_url, "off"), runs(db_url, "off")
        rep.outbox.sent.clear()

        info = api.run_now("off")
        assert info.enabled is False
        asked = state(db_url, "off")["run_once_at"]
        assert asked is not None
        rep.run_until(lambda: sent_once(rep, "off") != [], timeout=5)
        rep.run_for(QUIET)  # a few more steps: nothing else goes out
        assert sent_once(rep, "off") == [asked]

    ((claim, epoch),) = rep.outbox.sent
    assert claim.task_id == task_id_for("default", "off", asked) and claim.epoch == epoch
    assert runs(db_url, "off") == [*history, (asked, "sent", claim.task_id)]
    after = state(db_url, "off")
    assert after["enabled"] is False and after["run_once_at"] is None
    # The grid is left where it was; the tick counts as a run.
    assert {k: after[k] for k in ("next_run_at", "resume_at", "last_due_at")} == {
        k: before[k] for k in ("next_run_at", "resume_at", "last_due_at")
    }
    assert after["runs"] == before["runs"] + 1


def test_run_now_of_a_schedule_created_disabled_sends_one_tick(
    db_url: str, api: ScheduleManager
) -> None:
    """Never planned (next_run_at NULL): the tick needs no grid, and plans none."""
    api.create("never", "t.never", crontab="0 3 * * *", enabled=False)
    with replica(db_url) as rep:
        rep.run_for(0.3)
        api.run_now("never")
        rep.run_until(lambda: sent_once(rep, "never") != [], timeout=5)
        rep.run_for(QUIET)
        assert len(sent_once(rep, "never")) == 1
    after = state(db_url, "never")
    assert (after["enabled"], after["next_run_at"], after["run_once_at"]) == (False, None, None)
    assert [status for _, status, _ in runs(db_url, "never")] == ["sent"]


def test_run_now_twice_before_the_leader_takes_it_is_one_tick_and_after_it_another(
    db_url: str, api: ScheduleManager
) -> None:
    api.create("off", "t.off", every=3600, enabled=False)
    with replica(db_url) as rep:
        rep.run_for(0.3)
        api.run_now("off")
        first = state(db_url, "off")["run_once_at"]
        api.run_now("off")  # the loop has not stepped: the leader has not taken the first
        assert state(db_url, "off")["run_once_at"] == first
        rep.run_until(lambda: sent_once(rep, "off") != [], timeout=5)
        rep.run_for(QUIET)
        assert sent_once(rep, "off") == [first]
        # Taken and sent: a run-now now is another tick, with a task id of its own.
        api.run_now("off")
        rep.run_until(lambda: len(sent_once(rep, "off")) >= 2, timeout=5)
        rep.run_for(QUIET)
        dues = sent_once(rep, "off")
    assert len(dues) == 2 and dues[0] == first and dues[1] > first
    assert [status for _, status, _ in runs(db_url, "off")] == ["sent", "sent"]
    assert state(db_url, "off")["enabled"] is False


def test_enabled_after_a_run_now_while_disabled_the_tick_goes_out_once(
    db_url: str, api: ScheduleManager
) -> None:
    api.create("later", "t.later", every=3600)
    with replica(db_url) as rep:
        rep.run_for(0.3)
        planned = state(db_url, "later")["next_run_at"]
        assert planned is not None  # an hour from now
        api.disable("later")
        api.run_now("later")
        asked = state(db_url, "later")["run_once_at"]
        api.enable("later")  # before the leader took the tick
        rep.run_until(lambda: sent_once(rep, "later") != [], timeout=5)
        rep.run_for(QUIET)
        assert sent_once(rep, "later") == [asked]
    after = state(db_url, "later")
    assert (after["enabled"], after["next_run_at"], after["run_once_at"]) == (True, planned, None)


def test_a_run_now_of_the_enabled_schedule_replaces_one_asked_while_disabled(
    db_url: str, api: ScheduleManager
) -> None:
    api.create("later", "t.later", every=3600)
    with replica(db_url) as rep:
        rep.run_for(0.3)
        planned = state(db_url, "later")["next_run_at"]
        api.disable("later")
        api.run_now("later")
        api.enable("later")
        api.run_now("later")  # enabled: due now on its grid's path; the pending one goes
        rep.run_until(lambda: sent_once(rep, "later") != [], timeout=5)
        rep.run_for(QUIET)
        assert len(sent_once(rep, "later")) == 1
    after = state(db_url, "later")
    assert (after["next_run_at"], after["run_once_at"], after["resume_at"]) == (planned, None, None)


def test_a_run_now_of_a_disabled_schedule_wakes_the_sleeping_loop(
    db_url: str, api: ScheduleManager
) -> None:
    """The change NOTIFYs the leader, and its next step finds the tick due (the wake-up read
    counts run_once_at), without waiting for a grid time of its own."""
    api.create("off", "t.off", every=3600, enabled=False)
    with replica(db_url) as rep:
        rep.run_for(0.3)
        assert rep.step() > 0.1  # nothing due: it would sleep
        threading.Timer(0.7, api.run_now, ("off",)).start()
        started = time.monotonic()
        rep.dispatcher.wait(5.0)
        assert 0.65 < time.monotonic() - started < 2.0
        rep.step()
        assert len(sent_once(rep, "off")) == 1


@pytest.mark.parametrize("grid", ["on time", "backlog"])
def test_a_row_due_on_its_grid_and_asked_once_is_selected_once(
    db_url: str, api: ScheduleManager, grid: str
) -> None:
    """SKIP LOCKED does not skip the transaction's own locks: the run-once range must leave out
    a row the on-time range took, and the backlog range one the run-once range took."""
    api.create("both", "t.both", every=3600)
    api.create("other", "t.other", every=3600)
    age = "1 second" if grid == "on time" else "1 hour"
    sql(
        db_url,
        f"UPDATE pg_beat_schedules SET next_run_at = now() - interval '{age}', "
        "run_once_at = now() - interval '2 seconds'",
    )
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            now = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
            rows = store.claims.select_due(conn, "default", now, limit=10, window=10.0)
            assert sorted(r["name"] for r in rows) == ["both", "other"]
            # The limit counts rows, each once.
            assert len(store.claims.select_due(conn, "default", now, limit=1, window=10.0)) == 1
    finally:
        engine.dispose()


def test_the_run_once_range_reads_its_partial_index(db_url: str) -> None:
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = conn.execute(
                text("EXPLAIN " + str(store.claims.SELECT_RUN_ONCE)),
                {"group": "default", "now": datetime.now().astimezone(), "limit": 5, "taken": []},
            ).all()
    finally:
        engine.dispose()
    assert "ix_pg_beat_schedules_run_once" in "\n".join(r[0] for r in plan)
