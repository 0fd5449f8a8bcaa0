"""The Celery app of the RedBeat side of the failover benchmark (``bench_failover.py``).

One module serves the three ``celery beat -S redbeat.RedBeatScheduler`` replicas and the worker;
everything comes from the environment:

- ``CELERY_BROKER_URL``: Redis, also RedBeat's store (``redbeat_redis_url``);
- ``REDBEAT_BENCH_QUEUE``: a queue of its own per run;
- ``REDBEAT_BENCH_KEY_PREFIX``: RedBeat's key prefix, unique per run (schedule zset, entries,
  lock), so the benchmark deletes exactly its own keys afterwards;
- ``REDBEAT_BENCH_RECORD_URL``: the PostgreSQL database the worker records executions in;
- ``REDBEAT_BENCH_LOCK_TIMEOUT`` (default 5, pg_beat's lease TTL) and
  ``REDBEAT_BENCH_MAX_LOOP_INTERVAL`` (default 1, see the README);
- ``REDBEAT_BENCH_REPLICA``: set on beat replicas only, their name.

RedBeat puts no identity on its messages, so a ``before_task_publish`` handler in each beat
replica stamps the replica's name, PID and the publish time on every message, and the
``record`` task writes them with the schedule's name into ``redbeat_bench_executions``.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import psycopg
from celery import Celery, Task
from celery.schedules import schedule as every
from celery.signals import before_task_publish

from examples.recording import forget_connection, header, thread_connection

TASK = "redbeat_bench.record"

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS redbeat_bench_executions (
    id bigserial PRIMARY KEY,
    task_id text NOT NULL,
    schedule text,
    replica text,
    beat_pid int,
    sent_at double precision,
    worker_pid int,
    executed_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

_broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
_queue = os.environ.get("REDBEAT_BENCH_QUEUE", "redbeat_bench")

app = Celery("redbeat_bench", broker=_broker)
app.conf.update(
    beat_scheduler="redbeat.RedBeatScheduler",
    redbeat_redis_url=_broker,
    redbeat_key_prefix=os.environ.get("REDBEAT_BENCH_KEY_PREFIX", "redbeat_bench:"),
    redbeat_lock_timeout=int(float(os.environ.get("REDBEAT_BENCH_LOCK_TIMEOUT", "5"))),
    beat_max_loop_interval=float(os.environ.get("REDBEAT_BENCH_MAX_LOOP_INTERVAL", "1")),
    beat_schedule={},
    task_default_queue=_queue,
    task_default_routing_key=_queue,
    worker_prefetch_multiplier=8,
    worker_enable_remote_control=False,
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
    timezone="UTC",
)

_REPLICA = os.environ.get("REDBEAT_BENCH_REPLICA")


@before_task_publish.connect
def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """On a beat replica: who published this message, and when (``time.time()``)."""
    if _REPLICA and headers is not None:
        headers["bench_replica"] = _REPLICA
        headers["bench_pid"] = os.getpid()
        headers["bench_sent_at"] = time.time()


def save_schedules(names: list[str], seconds: float) -> None:
    """Create one RedBeat entry per name, every ``seconds``, running ``record(schedule=name)``."""
    from redbeat import RedBeatSchedulerEntry

    for name in names:
        RedBeatSchedulerEntry(
            name,
            TASK,
            every(timedelta(seconds=seconds)),
            kwargs={"schedule": name},
            app=app,
        ).save()


def _connection() -> psycopg.Connection[Any]:
    return thread_connection(os.environ["REDBEAT_BENCH_RECORD_URL"])


@app.task(
    name=TASK,
    bind=True,
    autoretry_for=(psycopg.OperationalError,),
    retry_backoff=0.2,
    retry_backoff_max=2,
    max_retries=60,
)
def record(self: Task, schedule: str | None = None) -> None:
    """Record this execution with the publisher's stamp (the benchmark counts these rows)."""
    request = self.request
    try:
        _connection().execute(
            "INSERT INTO redbeat_bench_executions "
            "(task_id, schedule, replica, beat_pid, sent_at, worker_pid) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                request.id,
                schedule,
                header(request, "bench_replica"),
                header(request, "bench_pid"),
                header(request, "bench_sent_at"),
                os.getpid(),
            ),
        )
    except psycopg.OperationalError:
        forget_connection()
        raise
