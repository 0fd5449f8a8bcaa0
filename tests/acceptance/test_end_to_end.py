"""A real ``celery beat -S pg_beat:Scheduler`` sends through Redis to a real worker; schedules
edited with plain SQL take effect without a restart; ``-S pg_beat`` takes over after a stop."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.pg import libpq_url as libpq
from support.procs import ProcessGroup

from pg_beat.api import ScheduleManager
from pg_beat.publish.ticks import task_id_for

pytestmark = pytest.mark.timeout(150)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CELERY = [sys.executable, "-m", "celery", "-A", "e2e_app"]


@dataclass(frozen=True)
class Execution:
    task_id: str
    schedule: str
    due_at: datetime
    epoch: int
    replica: str
    executed_at: datetime


def sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def executions(url: str, schedule: str | None = None) -> list[Execution]:
    rows = sql(
        url,
        "SELECT task_id, schedule, due_at, epoch, replica, executed_at FROM e2e_executions "
        "WHERE %s::text IS NULL OR schedule = %s ORDER BY due_at, id",
        schedule,
        schedule,
    )
    return [
        Execution(task_id, name, parse_due(due), int(epoch), replica, executed)
        for task_id, name, due, epoch, replica, executed in rows
    ]


def parse_due(text: str) -> datetime:
    assert text.endswith("Z"), f"pg_beat_due_at {text!r} is not ISO-8601 UTC"
    return datetime.fromisoformat(text[:-1] + "+00:00")


def db_now(url: str) -> datetime:
    value: datetime = sql(url, "SELECT clock_timestamp()")[0][0]
    return value


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    procs: ProcessGroup,
    watch: tuple[str, ...] = ("worker", "beat-1"),
) -> None:
    """Poll ``predicate``; fail at once if a process in ``watch`` died meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for name in watch:
            assert procs.is_running(name), f"{name} exited while waiting for: {what}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def steps(runs: list[Execution]) -> list[float]:
    return [round((b.due_at - a.due_at).total_seconds(), 6) for a, b in itertools.pairwise(runs)]


def test_beat_to_worker_through_redis(
    db_url: str, redis_url: str, queue: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    sql(
        db_url,
        "CREATE TABLE e2e_executions (id bigserial PRIMARY KEY, task_id text NOT NULL, "
        "schedule text, due_at text, epoch bigint, replica text, args text, "
        "executed_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    env = {
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "E2E_BROKER_URL": redis_url,
        "E2E_QUEUE": queue,
        "E2E_DATABASE_URL": libpq(db_url),
        "PG_BEAT_DATABASE_URL": db_url,
    }
    with ScheduleManager(db_url) as api:
        api.create("every-second", "e2e.record", every=1, args=["tick"])

    procs.spawn(
        "worker",
        [
            *CELERY,
            "worker",
            "--pool",
            "solo",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        cwd=tmp_path,
    )
    beat = [*CELERY, "beat", "-l", "info", "-s", str(tmp_path / "celerybeat-schedule")]
    procs.spawn(
        "beat-1",
        [*beat, "-S", "pg_beat:Scheduler"],
        env={**env, "PG_BEAT_REPLICA_NAME": "e2e-beat-1"},
        cwd=tmp_path,
    )

    # 1. A 1-second schedule runs about once a second, on its grid, each tick once.
    wait_for(lambda: executions(db_url, "every-second"), 45, "first execution", procs)
    started = db_now(db_url)
    wait_for(lambda: db_now(db_url) > started + timedelta(seconds=6.2), 15, "6 s", procs)
    runs = executions(db_url, "every-second")
    window = [r for r in runs if started < r.executed_at <= started + timedelta(seconds=6)]
    assert 5 <= len(window) <= 7, [r.executed_at for r in runs]
    assert len(runs) >= 7
    assert set(steps(runs)) == {1.0}, steps(runs)
    assert len({r.task_id for r in runs}) == len(runs)
    first = runs[0]
    assert first.replica == "e2e-beat-1" and first.epoch >= 1
    assert {(r.replica, r.epoch) for r in runs} == {("e2e-beat-1", first.epoch)}
    for run in runs:
        assert run.task_id == task_id_for("default", "every-second", run.due_at)
        assert run.executed_at - run.due_at < timedelta(seconds=3)
    assert "scheduler -> pg_beat.scheduler.Scheduler" in procs.log("beat-1")

    # 2. Plain SQL: a faster interval and a new row take effect without restarting beat.
    edited = db_now(db_url)
    sql(db_url, "UPDATE pg_beat_schedules SET interval_seconds = 0.5 WHERE name = 'every-second'")
    sql(
        db_url,
        # next_run_at = now(): at once (a new interval otherwise waits one interval, as in Celery)
        "INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds, args, next_run_at) "
        "VALUES ('from-sql', 'e2e.record', 'interval', 3600, '[\"sql\"]', now())",
    )

    def half_second_ticks() -> list[Execution]:
        return [r for r in executions(db_url, "every-second") if r.due_at > edited]

    wait_for(lambda: len(half_second_ticks()) >= 6, 15, "0.5 s ticks after the edit", procs)
    after = half_second_ticks()
    assert set(steps(after)) == {0.5}, steps(after)
    assert after[0].due_at - edited < timedelta(seconds=1.5)
    wait_for(lambda: executions(db_url, "from-sql"), 10, "the row inserted by SQL", procs)
    (inserted,) = executions(db_url, "from-sql")
    assert inserted.due_at - edited < timedelta(seconds=3)
    assert inserted.task_id == task_id_for("default", "from-sql", inserted.due_at)

    # 3. Stopped, beat hands the lease over; `-S pg_beat` (the entry point alias) takes over.
    assert procs.stop("beat-1", timeout=20) == 0, procs.log("beat-1")[-3000:]
    assert sql(db_url, "SELECT expires_at <= clock_timestamp() FROM pg_beat_leases") == [(True,)]
    procs.spawn(
        "beat-2",
        [*beat, "-S", "pg_beat"],
        env={**env, "PG_BEAT_REPLICA_NAME": "e2e-beat-2"},
        cwd=tmp_path,
    )

    def from_second_beat() -> list[Execution]:
        return [r for r in executions(db_url) if r.replica == "e2e-beat-2"]

    wait_for(
        lambda: len(from_second_beat()) >= 3,
        45,
        "ticks sent by `-S pg_beat`",
        procs,
        watch=("worker", "beat-2"),
    )
    second = from_second_beat()
    assert "scheduler -> pg_beat.scheduler.Scheduler" in procs.log("beat-2")
    assert {r.epoch for r in second} == {first.epoch + 1}
    # Nothing beat-1 sent is sent again; the tick it left behind is fired once (fire_once),
    # then the schedule is back on its 0.5 s grid.
    last_first = max(r.due_at for r in executions(db_url, "every-second") if r.epoch == first.epoch)
    ticks = [r for r in second if r.schedule == "every-second"]
    assert ticks[0].due_at == last_first + timedelta(seconds=0.5)
    assert all(step > 0 and step % 0.5 == 0 for step in steps(ticks)), steps(ticks)
    everything = executions(db_url)
    assert set(sql(db_url, "SELECT DISTINCT schedule, args FROM e2e_executions")) == {
        ("every-second", "('tick',)"),
        ("from-sql", "('sql',)"),
    }
    assert len({r.task_id for r in everything}) == len(everything), "a tick ran twice"
    assert sql(
        db_url,
        "SELECT DISTINCT status FROM pg_beat_runs WHERE due_at < now() - interval '2 seconds'",
    ) == [("sent",)]


def test_message_options_reach_the_worker(
    db_url: str, redis_url: str, queue: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    """Queue, priority, expires (absolute: due time + seconds) and the user's headers, as the
    worker receives them."""
    sql(db_url, "CREATE TABLE e2e_inspected (task_id text, seen jsonb)")
    env = {
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "E2E_BROKER_URL": redis_url,
        "E2E_QUEUE": f"{queue}-default",
        "E2E_DATABASE_URL": libpq(db_url),
        "PG_BEAT_DATABASE_URL": db_url,
    }
    with ScheduleManager(db_url) as api:
        api.create(
            "inspected",
            "e2e.inspect",
            every=3600,
            options={"queue": queue, "priority": 5, "expires": 120, "headers": {"x-trace": "t1"}},
        )
        api.run_now("inspected")
    procs.spawn(
        "worker",
        [
            *CELERY,
            "worker",
            "--pool",
            "solo",
            "-Q",
            queue,
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        cwd=tmp_path,
    )
    procs.spawn(
        "beat-1",
        [*CELERY, "beat", "-l", "info", "-s", str(tmp_path / "s"), "-S", "pg_beat"],
        env={**env, "PG_BEAT_REPLICA_NAME": "e2e-inspect"},
        cwd=tmp_path,
    )
    wait_for(lambda: sql(db_url, "SELECT seen FROM e2e_inspected"), 45, "the inspected task", procs)
    ((seen,),) = sql(db_url, "SELECT seen FROM e2e_inspected")
    assert seen["routing_key"] == queue  # the queue of the options, not the app's default
    assert seen["priority"] == 5
    assert seen["x_trace"] == "t1"
    due = parse_due(seen["due_at"])
    expires = datetime.fromisoformat(seen["expires"])
    assert expires == due + timedelta(seconds=120)
