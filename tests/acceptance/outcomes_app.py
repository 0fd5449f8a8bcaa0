"""The Celery app of the outcome and overlap acceptance tests, for ``celery beat`` and
``celery worker``, with run tracking on.

Configured from the environment: OC_BROKER_URL, OC_QUEUE (a queue of this test only) and
OC_DATABASE_URL (where ``oc.work`` writes one row per execution, with its start and end, so a
test can see whether two executions overlapped without trusting pg_beat's own records).
pg_beat reads PG_BEAT_DATABASE_URL itself.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
from celery import Celery, Task

import pg_beat.worker

app = Celery("outcomes_app", broker=os.environ["OC_BROKER_URL"])
app.conf.update(
    task_default_queue=os.environ["OC_QUEUE"],
    pg_beat_lease_ttl=3.0,
    pg_beat_heartbeat_interval=0.5,
    pg_beat_hang_timeout=30.0,
    pg_beat_track_runs=True,
    beat_max_loop_interval=5,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
)
pg_beat.worker.install(app)


def _record(statement: str, *params: Any) -> None:
    with psycopg.connect(os.environ["OC_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(statement, params)


@app.task(bind=True, name="oc.work")
def work(self: Task, seconds: float = 0.0) -> None:
    """Sleep ``seconds``, recording the execution's start and end."""
    schedule = getattr(self.request, "pg_beat_schedule", None)
    _record(
        "INSERT INTO oc_executions (task_id, schedule, pid) VALUES (%s, %s, %s)",
        self.request.id,
        schedule,
        os.getpid(),
    )
    time.sleep(seconds)
    _record(
        "UPDATE oc_executions SET finished_at = clock_timestamp() "
        "WHERE task_id = %s AND finished_at IS NULL",
        self.request.id,
    )
