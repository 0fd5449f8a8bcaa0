"""The Celery app of the HA examples, demo, failover tests and benchmark.

Everything comes from the environment so that one module serves every replica:
``PG_BEAT_DATABASE_URL`` (schedules and leases), ``PG_BEAT_REPLICA_NAME``, ``CELERY_BROKER_URL``,
``PG_BEAT_DEMO_QUEUE`` (a queue of its own per cluster), ``PG_BEAT_DEMO_RECORD_URL`` (where the
worker records each execution; defaults to the schedules database) and the lease settings
``PG_BEAT_LEASE_TTL``, ``PG_BEAT_HEARTBEAT_INTERVAL``, ``PG_BEAT_HANG_TIMEOUT``,
``PG_BEAT_ON_HANG``.

The ``record`` task writes one row per execution with the headers pg_beat put on the message,
so duplicates and gaps are counted from the worker's side.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from celery import Celery, Task

from examples.recording import forget_connection, header, thread_connection
from pg_beat.urls import libpq_url

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS pg_beat_demo_executions (
    id bigserial PRIMARY KEY,
    task_id text NOT NULL,
    schedule text,
    due_at timestamptz,
    epoch bigint,
    claim_epoch bigint,
    replica text,
    worker_pid int,
    executed_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def _float_env(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


app = Celery("pg_beat_ha", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
_queue = os.environ.get("PG_BEAT_DEMO_QUEUE", "pg_beat_demo")
app.conf.update(
    beat_scheduler="pg_beat:Scheduler",
    task_default_queue=_queue,
    task_default_routing_key=_queue,
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=8,
    timezone="UTC",
    beat_schedule={},
)
for key, env in (
    ("pg_beat_lease_ttl", "PG_BEAT_LEASE_TTL"),
    ("pg_beat_heartbeat_interval", "PG_BEAT_HEARTBEAT_INTERVAL"),
    ("pg_beat_hang_timeout", "PG_BEAT_HANG_TIMEOUT"),
):
    value = _float_env(env)
    if value is not None:
        app.conf[key] = value
if os.environ.get("PG_BEAT_ON_HANG"):
    app.conf.pg_beat_on_hang = os.environ["PG_BEAT_ON_HANG"]
if os.environ.get("CELERY_BROKER_URL", "").startswith("filesystem://"):
    folder = os.environ["PG_BEAT_DEMO_BROKER_DIR"]
    app.conf.broker_transport_options = {
        "data_folder_in": folder,
        "data_folder_out": folder,
        "processed_folder": folder,
        "store_processed": False,
        # Else kombu keeps its exchange table in ./control, inside whatever the cwd is.
        "control_folder": os.path.join(folder, "control"),
    }


def _connection() -> psycopg.Connection[Any]:
    url = os.environ.get("PG_BEAT_DEMO_RECORD_URL") or os.environ["PG_BEAT_DATABASE_URL"]
    return thread_connection(libpq_url(url))


@app.task(
    name="pg_beat_demo.record",
    bind=True,
    autoretry_for=(psycopg.OperationalError,),
    retry_backoff=0.2,
    retry_backoff_max=2,
    max_retries=60,
)
def record(self: Task, *args: Any, **kwargs: Any) -> None:
    """Record this execution (so tests can count every tick exactly once)."""
    request = self.request
    try:
        _connection().execute(
            "INSERT INTO pg_beat_demo_executions "
            "(task_id, schedule, due_at, epoch, claim_epoch, replica, worker_pid) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                request.id,
                header(request, "pg_beat_schedule"),
                header(request, "pg_beat_due_at"),
                header(request, "pg_beat_epoch"),
                header(request, "pg_beat_claim_epoch"),
                header(request, "pg_beat_replica"),
                os.getpid(),
            ),
        )
    except psycopg.OperationalError:
        forget_connection()
        raise
