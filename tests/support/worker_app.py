"""The Celery app the worker-side tests and the tracking benchmark run in real ``celery worker``
processes. Configured from the environment: WORKER_BROKER_URL, WORKER_QUEUE (a queue of this
test only), WORKER_EFFECTS (a file each task body appends a line to: ``<task id> <pid>``, the
side effects a test counts), WORKER_ACKS_LATE (``1``: acknowledge after the body), and pg_beat's
own PG_BEAT_* variables (PG_BEAT_DATABASE_URL, PG_BEAT_TRACK_RUNS, PG_BEAT_RUN_ONCE, ...).

It switches the worker side on the configuration-only way: ``pg_beat.worker`` in ``imports``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task

app = Celery("worker_app", broker=os.environ.get("WORKER_BROKER_URL", "memory://"))
app.conf.update(
    task_default_queue=os.environ.get("WORKER_QUEUE", "celery"),
    imports=["pg_beat.worker"],
    task_acks_late=os.environ.get("WORKER_ACKS_LATE") == "1",
    task_reject_on_worker_lost=False,
    worker_prefetch_multiplier=int(os.environ.get("WORKER_PREFETCH", "1")),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    broker_transport_options={"visibility_timeout": 3600},
)


def _effect(task_id: str | None, what: str = "ran") -> None:
    path = os.environ.get("WORKER_EFFECTS")
    if path:
        with open(path, "a") as effects:
            effects.write(f"{task_id} {os.getpid()} {what}\n")


@app.task(bind=True, name="wt.ok")
def ok(self: Task, seconds: float = 0.0) -> str:
    _effect(self.request.id, "start")
    time.sleep(seconds)
    _effect(self.request.id)
    return "done"


@app.task(bind=True, name="wt.fail")
def fail(self: Task) -> None:
    _effect(self.request.id)
    raise ValueError("boom " * 1000)


@app.task(bind=True, name="wt.flaky")
def flaky(self: Task) -> str:
    _effect(self.request.id, f"attempt{self.request.retries}")
    if self.request.retries < 1:
        raise self.retry(countdown=0.2, max_retries=3, exc=RuntimeError("not yet"))
    return "done"


@app.task(name="wt.noop")
def noop(*args: Any) -> None:
    return None


@app.task(name="wt.mark")
def mark(path: str) -> None:
    """The benchmark's first and last message (a solo worker runs them in queue order)."""
    with open(path, "a") as marks:
        marks.write(f"{time.time()}\n")
