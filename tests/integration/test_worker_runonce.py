"""Run once with real ``celery worker`` processes (prefork, two children, Redis): a tick's
message pushed a second time by hand while the first runs, and again after it finished, runs
once; without run once it runs twice; a retry (``self.retry``) still runs."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from support import worker_side
from support.procs import ProcessGroup
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def ran(effects: Path, task_id: str, what: str = "ran") -> int:
    return sum(1 for line in worker_side.effects(effects) if line[0] == task_id and line[2] == what)


def test_duplicates_acknowledged_without_running(
    db_url: str, redis_url: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    queue, effects = f"wt-{secrets.token_hex(4)}", tmp_path / "effects"
    schedule_id = worker_side.make_schedule(db_url, "once", "wt.ok")
    other = worker_side.make_schedule(db_url, "twice", "wt.ok")
    retried = worker_side.make_schedule(db_url, "flaky", "wt.flaky")
    due = worker_side.due()
    once = worker_side.make_run(db_url, schedule_id, "once", due)
    twice = worker_side.make_run(db_url, other, "twice", due)
    flaky = worker_side.make_run(db_url, retried, "flaky", due)
    worker_side.start_worker(
        procs,
        "w1",
        broker_url=redis_url,
        queue=queue,
        database_url=db_url,
        effects=effects,
        pool="prefork",
        concurrency=2,
    )
    wait_for(lambda: worker_side.wait_ready(procs, "w1"), 30, "worker ready")
    app = worker_side.sender(redis_url)

    def send(task_id: str, schedule: str, run_once: bool) -> None:
        worker_side.send_tick(
            app, queue, "wt.ok", task_id, schedule, due, args=(2.0,), run_once=run_once
        )

    # While the first execution runs, the other child takes the second delivery.
    send(once, "once", True)
    wait_for(lambda: ran(effects, once, "start") == 1, 30, "first execution started")
    send(once, "once", True)
    wait_for(lambda: worker_side.run_row(db_url, once)["duplicates"] == 1, 30, "duplicate seen")
    assert ran(effects, once) == 0  # the first is still running: the duplicate did not run
    wait_for(lambda: worker_side.run_row(db_url, once)["outcome"] == "success", 30, "finished")
    # After it finished.
    send(once, "once", True)
    wait_for(lambda: worker_side.run_row(db_url, once)["duplicates"] == 2, 30, "2nd duplicate")
    assert ran(effects, once, "start") == 1 and ran(effects, once) == 1
    row = worker_side.run_row(db_url, once)
    assert row["attempts"] == 1 and row["outcome"] == "success"
    assert [e["delivery"] for e in worker_side.executions(db_url, once)] == [
        "first",
        "duplicate",
        "duplicate",
    ]

    # Counter-case: the same two deliveries without run once both run.
    send(twice, "twice", False)
    wait_for(lambda: ran(effects, twice, "start") == 1, 30, "first execution started")
    send(twice, "twice", False)
    wait_for(lambda: ran(effects, twice) == 2, 30, "both deliveries ran")
    assert worker_side.run_row(db_url, twice)["duplicates"] is None

    # A retry of the same execution runs under run once.
    worker_side.send_tick(app, queue, "wt.flaky", flaky, "flaky", due, run_once=True)
    wait_for(lambda: worker_side.run_row(db_url, flaky)["outcome"] == "success", 30, "retried")
    assert [e["delivery"] for e in worker_side.executions(db_url, flaky)] == ["first", "retry"]
    assert ran(effects, flaky, "attempt0") == 1 and ran(effects, flaky, "attempt1") == 1
