"""The Celery app of the end-to-end test, for both ``celery beat`` and ``celery worker``.

Configured from the environment the test sets: E2E_BROKER_URL, E2E_QUEUE (a queue of this run
only, so runs sharing a broker never take each other's messages), E2E_DATABASE_URL (where
``e2e.record`` writes one row per execution) and, optionally, E2E_MAX_MESSAGE_BYTES. pg_beat
reads PG_BEAT_DATABASE_URL itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import psycopg
from celery import Celery, Task

app = Celery("e2e_app", broker=os.environ["E2E_BROKER_URL"])
app.conf.update(
    task_default_queue=os.environ["E2E_QUEUE"],
    pg_beat_lease_ttl=3.0,
    pg_beat_heartbeat_interval=0.5,
    pg_beat_hang_timeout=30.0,
    beat_max_loop_interval=5,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if os.environ.get("E2E_MAX_MESSAGE_BYTES"):
    app.conf.pg_beat_max_message_bytes = int(os.environ["E2E_MAX_MESSAGE_BYTES"])


def _header(request: Any, name: str) -> Any:
    # Custom message headers (protocol 2) become attributes of the task's request context.
    return getattr(request, name, None)


@app.task(bind=True, name="e2e.record")
def record(self: Task, *args: Any, **kwargs: Any) -> None:
    request = self.request
    with psycopg.connect(os.environ["E2E_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO e2e_executions (task_id, schedule, due_at, epoch, replica, args)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (
                request.id,
                _header(request, "pg_beat_schedule"),
                _header(request, "pg_beat_due_at"),
                _header(request, "pg_beat_epoch"),
                _header(request, "pg_beat_replica"),
                repr(args),
            ),
        )


@app.task(bind=True, name="e2e.inspect")
def inspect(self: Task, *args: Any, **kwargs: Any) -> None:
    """Record what the message carried: routing, priority, expiry and the user's headers."""
    request = self.request
    delivery = request.delivery_info or {}
    seen = {
        "routing_key": delivery.get("routing_key"),
        "exchange": delivery.get("exchange"),
        "priority": delivery.get("priority"),
        "expires": str(request.expires) if request.expires else None,
        # A custom header becomes an attribute of the request (or stays in request.headers).
        "x_trace": _header(request, "x-trace") or (request.headers or {}).get("x-trace"),
        "due_at": _header(request, "pg_beat_due_at"),
    }
    with psycopg.connect(os.environ["E2E_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO e2e_inspected (task_id, seen) VALUES (%s, %s)",
            (request.id, json.dumps(seen)),
        )
