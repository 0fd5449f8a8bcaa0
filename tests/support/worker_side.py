"""Helpers of the worker-side tests: a schedule and run rows made by hand, a tick's message
sent with the headers pg_beat sends, a real ``celery worker`` of support/worker_app.py."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery

from pg_beat.publish.ticks import task_id_for
from support import pg
from support.procs import ProcessGroup

GROUP = "default"
TESTS = Path(__file__).resolve().parents[1]


def make_schedule(url: str, name: str, task: str, **columns: Any) -> int:
    names = ["name", "task", "kind", "interval_seconds", *columns]
    values = [name, task, "interval", 3600.0, *columns.values()]
    with psycopg.connect(pg.libpq_url(url), autocommit=True) as conn:
        row = conn.execute(
            f"INSERT INTO pg_beat_schedules ({', '.join(names)}) "
            f"VALUES ({', '.join(['%s'] * len(values))}) RETURNING id",
            values,
        ).fetchone()
    assert row is not None
    return int(row[0])


def make_run(url: str, schedule_id: int, schedule: str, due_at: datetime) -> str:
    """A run row marked sent, as the leader leaves it; its task id."""
    task_id = task_id_for(GROUP, schedule, due_at)
    with psycopg.connect(pg.libpq_url(url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pg_beat_runs (group_name, schedule_id, schedule_name, due_at, task_id, "
            "epoch, replica, status, sent_at) VALUES (%s, %s, %s, %s, %s, 1, 'test', 'sent', "
            "now())",
            (GROUP, schedule_id, schedule, due_at, task_id),
        )
    return task_id


def due(seconds_ago: float = 0.0) -> datetime:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return now - timedelta(seconds=seconds_ago)


def sender(broker_url: str) -> Celery:
    return Celery("worker_tests_sender", broker=broker_url, set_as_current=False)


def send_tick(
    app: Celery,
    queue: str,
    task: str,
    task_id: str,
    schedule: str,
    due_at: datetime,
    *,
    args: tuple[Any, ...] = (),
    run_once: bool | None = None,
    headers: dict[str, Any] | None = None,
) -> None:
    """The message pg_beat would send for this tick (pg_beat/publish/outbound.py's headers)."""
    sent = {
        "pg_beat_schedule": schedule,
        "pg_beat_due_at": due_at.isoformat().replace("+00:00", "Z"),
        "pg_beat_epoch": 1,
        "pg_beat_claim_epoch": 1,
        "pg_beat_replica": "test",
        "pg_beat_group": GROUP,
    }
    if run_once is not None:
        sent["pg_beat_run_once"] = run_once
    sent.update(headers or {})
    app.send_task(task, args, task_id=task_id, headers=sent, queue=queue)


def start_worker(
    procs: ProcessGroup,
    name: str,
    *,
    broker_url: str,
    queue: str,
    database_url: str,
    effects: Path,
    pool: str = "solo",
    concurrency: int = 1,
    env: dict[str, str] | None = None,
) -> None:
    procs.spawn(
        name,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "support.worker_app",
            "worker",
            "--loglevel=INFO",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            f"--hostname={name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env={
            "PYTHONPATH": str(TESTS),
            "WORKER_BROKER_URL": broker_url,
            "WORKER_QUEUE": queue,
            "WORKER_EFFECTS": str(effects),
            "PG_BEAT_DATABASE_URL": database_url,
            "PG_BEAT_TRACK_RUNS": "true",
            **(env or {}),
        },
    )


def wait_ready(procs: ProcessGroup, name: str) -> bool:
    return "ready." in procs.log(name)


def effects(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines()]


def run_row(url: str, task_id: str) -> dict[str, Any]:
    with psycopg.connect(pg.libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(
            "SELECT status, worker, started_at, finished_at, outcome, runtime, outcome_error, "
            "attempts, duplicates FROM pg_beat_runs WHERE task_id = %s",
            (task_id,),
        )
        row = cur.fetchone()
        assert row is not None, task_id
        return dict(zip([c.name for c in cur.description or ()], row, strict=True))


def executions(url: str, task_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(pg.libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(
            "SELECT attempt, worker, delivery, started_at, finished_at, outcome, runtime, error "
            "FROM pg_beat_executions WHERE task_id = %s ORDER BY id",
            (task_id,),
        )
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def health(url: str, schedule_id: int) -> dict[str, Any] | None:
    with psycopg.connect(pg.libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(
            "SELECT last_outcome, last_success_at, last_failure_at, consecutive_failures, "
            "last_error FROM pg_beat_schedule_health WHERE schedule_id = %s",
            (schedule_id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([c.name for c in cur.description or ()], row, strict=True))
