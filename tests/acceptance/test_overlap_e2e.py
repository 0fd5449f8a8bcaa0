"""Overlap policies and outcomes end to end: a real ``celery beat -S pg_beat:Scheduler`` sends
through Redis to a real ``celery worker`` with run tracking on.

A task that takes 3 s on a 1 s schedule: under ``skip`` its executions never overlap and
every tick is recorded sent or skipped (with why); under ``buffer_one`` they run back to back;
a worker SIGKILLed mid-task blocks its schedule no longer than ``max_runtime``, and its run is
recorded ``lost``. Overlap is judged from the task's own records (oc_executions), not from
pg_beat's.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.pg import libpq_url as libpq
from support.procs import ProcessGroup

from pg_beat.api import ScheduleManager

pytestmark = pytest.mark.timeout(180)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CELERY = [sys.executable, "-m", "celery", "-A", "outcomes_app"]


def sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    procs: ProcessGroup,
    watch: tuple[str, ...] = ("worker-1", "beat-1"),
) -> None:
    """Poll ``predicate``; fail at once if a process in ``watch`` died meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for name in watch:
            assert procs.is_running(name), f"{name} exited while waiting for: {what}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def start(
    db_url: str,
    redis_url: str,
    queue: str,
    procs: ProcessGroup,
    tmp_path: Path,
    pool: tuple[str, ...] = ("--pool", "solo"),
) -> dict[str, str]:
    sql(
        db_url,
        "CREATE TABLE oc_executions (id bigserial PRIMARY KEY, task_id text NOT NULL, "
        "schedule text, pid int, started_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
        "finished_at timestamptz)",
    )
    env = {
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "OC_BROKER_URL": redis_url,
        "OC_QUEUE": queue,
        "OC_DATABASE_URL": libpq(db_url),
        "PG_BEAT_DATABASE_URL": db_url,
    }
    spawn_worker("worker-1", env, queue, procs, tmp_path, pool)
    procs.spawn(
        "beat-1",
        [
            *CELERY,
            "beat",
            "-l",
            "info",
            "-s",
            str(tmp_path / "celerybeat-schedule"),
            "-S",
            "pg_beat:Scheduler",
        ],
        env={**env, "PG_BEAT_REPLICA_NAME": "oc-beat-1"},
        cwd=tmp_path,
    )
    return env


def spawn_worker(
    name: str,
    env: dict[str, str],
    queue: str,
    procs: ProcessGroup,
    tmp_path: Path,
    pool: tuple[str, ...] = ("--pool", "solo"),
) -> None:
    procs.spawn(
        name,
        [
            *CELERY,
            "worker",
            *pool,
            "-Q",
            queue,
            "-n",
            f"{name}-{queue}@%h",
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        cwd=tmp_path,
    )


def executions(db_url: str, schedule: str) -> list[tuple[str, datetime, datetime | None]]:
    return [
        (task_id, started, finished)
        for task_id, started, finished in sql(
            db_url,
            "SELECT task_id, started_at, finished_at FROM oc_executions WHERE schedule = %s "
            "ORDER BY started_at",
            schedule,
        )
    ]


def runs(db_url: str, schedule: str) -> list[dict[str, Any]]:
    with psycopg.connect(libpq(db_url), autocommit=True) as conn:
        cur = conn.execute(
            "SELECT due_at, task_id, status, reason, outcome, started_at, finished_at, worker "
            "FROM pg_beat_runs WHERE schedule_name = %s ORDER BY due_at",
            (schedule,),
        )
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def assert_never_overlap(done: list[tuple[str, datetime, datetime | None]]) -> None:
    for (a, _, a_end), (b, b_start, _) in itertools.pairwise(done):
        assert a_end is not None and a_end <= b_start, f"{b} started before {a} ended"


@pytest.mark.parametrize("policy", ["skip", "buffer_one"])
def test_a_3s_task_on_a_1s_schedule_never_overlaps(
    policy: str, db_url: str, redis_url: str, queue: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    name = f"slow-{policy}"
    with ScheduleManager(db_url) as api:
        api.create(
            name, "oc.work", every=1, kwargs={"seconds": 3}, overlap_policy=policy, max_runtime=60
        )
    # Three processes: had pg_beat sent every tick, they would run at once and overlap.
    start(db_url, redis_url, queue, procs, tmp_path, ("--pool", "prefork", "-c", "3"))
    wait_for(
        lambda: sum(1 for e in executions(db_url, name) if e[2]) >= 3,
        60,
        "three finished executions",
        procs,
    )
    done = [e for e in executions(db_url, name) if e[2] is not None]
    assert_never_overlap(executions(db_url, name))
    rows = runs(db_url, name)
    settled = [r for r in rows if r["due_at"] < done[-1][2] - timedelta(seconds=1)]
    assert {r["status"] for r in settled} <= {"sent", "skipped"}, settled
    skipped = [r for r in settled if r["status"] == "skipped"]
    assert skipped, "a 1 s schedule of a 3 s task skipped nothing"
    assert all(r["reason"] and "overlap" in r["reason"] for r in skipped), skipped
    # The worker records an outcome just after the task returns (its writer batches).
    finished = {task_id for task_id, _, _ in done}

    def recorded() -> bool:
        outcomes = {r["task_id"]: r["outcome"] for r in runs(db_url, name)}
        return all(outcomes.get(t) == "success" for t in finished)

    wait_for(recorded, 15, "the outcomes of the finished executions", procs)
    sent = {r["task_id"]: r for r in runs(db_url, name) if r["status"] == "sent"}
    assert finished <= set(sent)
    if policy == "buffer_one":
        # Back to back: the buffered tick goes out as soon as the previous run finishes.
        gaps = [(b[1] - a[2]).total_seconds() for a, b in itertools.pairwise(done)]
        assert gaps and max(gaps) < 1.0, gaps
        assert any(r["reason"] and r["reason"].startswith("buffered") for r in sent.values())


def test_a_killed_worker_blocks_no_longer_than_max_runtime(
    db_url: str, redis_url: str, queue: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    name = "killed"
    with ScheduleManager(db_url) as api:
        api.create(
            name, "oc.work", every=1, kwargs={"seconds": 30}, overlap_policy="skip", max_runtime=6
        )
    env = start(db_url, redis_url, queue, procs, tmp_path)
    wait_for(lambda: executions(db_url, name), 60, "the first execution", procs)
    first, started, _ = executions(db_url, name)[0]
    procs.signal("worker-1", signal.SIGKILL)
    procs.wait("worker-1", 10)
    spawn_worker("worker-2", env, queue, procs, tmp_path)
    wait_for(
        lambda: len(executions(db_url, name)) >= 2,
        60,
        "a run after the kill",
        procs,
        watch=("worker-2", "beat-1"),
    )
    second_started = executions(db_url, name)[1][1]
    # Blocked for max_runtime (6 s) from the first start, not for ever.
    assert second_started - started < timedelta(seconds=6 + 5), second_started - started
    (lost,) = [r for r in runs(db_url, name) if r["task_id"] == first]
    assert lost["outcome"] == "lost", lost
    assert lost["finished_at"] is not None
