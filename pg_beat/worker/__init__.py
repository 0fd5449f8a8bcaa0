"""The worker side of pg_beat: records what happened to each task pg_beat sent (started,
finished, outcome, runtime, error; per-schedule health; the worker's heartbeat) and, with run
once, lets each tick's task body run once even when the broker delivers it twice.

Switch it on in either of two ways, in the Celery app the workers run:

- configuration only: ``pg_beat_track_runs = True`` (or ``pg_beat_run_once = True``) and
  ``imports = ["pg_beat.worker"]`` (or ``include``); a plain ``celery -A proj worker`` then
  records;
- one call in the app's module: ``pg_beat.worker.install(app)`` (also ``pg_beat.track_runs``).

Tasks not sent by pg_beat (no ``pg_beat_schedule`` header) are untouched.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

from celery import signals as celery_signals
from celery.app.trace import task_has_custom

from pg_beat import config
from pg_beat.config import Settings
from pg_beat.worker import signals
from pg_beat.worker.outage import Stats

_lock = threading.Lock()


def install(app: Any) -> None:
    """Record the outcomes of pg_beat's tasks on the workers of ``app`` (Celery app), with
    run once where a message or ``pg_beat_run_once`` asks for it. Call it where the app is
    defined (before the worker starts); idempotent. Raises
    :class:`~pg_beat.exceptions.ConfigurationError` for bad ``pg_beat_*`` settings."""
    settings = Settings.from_celery(app.conf)
    with _lock:
        signals._apps[app] = settings
        signals.connect()
    if app.finalized:
        _patch_tasks(app)


def stats() -> dict[str, int]:
    """This process's counters: ``recorded`` (events written), ``dropped`` (queue full or
    database away), ``outages``, ``claims``, ``duplicates`` (deliveries acknowledged without
    running) and ``claim_failures`` (claims the database could not answer: the task ran)."""
    tracking = signals.current()
    return dataclasses.asdict(tracking.stats if tracking is not None else Stats())


def _patch_tasks(app: Any) -> None:
    """Give each task of ``app`` a ``before_start`` that makes the run-once claim (Celery's
    tracer calls ``before_start`` before the body, if the task class defines one; the
    tracers are built after ``worker_init``, so patching there reaches every pool)."""
    for task in list(app.tasks.values()):
        cls = type(task)
        if getattr(cls, signals.PATCHED, False) or task.name.startswith("celery."):
            continue
        original = cls.before_start if task_has_custom(task, "before_start") else None
        cls.before_start = _hook(original)
        setattr(cls, signals.PATCHED, True)


def _hook(original: Any) -> Any:
    def before_start(self: Any, task_id: str, args: Any, kwargs: Any) -> None:
        signals.before_start(self, task_id)
        if original is not None:
            original(self, task_id, args, kwargs)

    return before_start


def _switched_on(conf: Any, name: str) -> bool:
    value = conf.get(f"pg_beat_{name}")
    if value is None and os.environ.get(config.env_name(name)):
        value = config.parse_env(name, bool, os.environ[config.env_name(name)])
    return bool(value)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None:
        return
    if signals.settings_of(app) is None:
        if not any(_switched_on(app.conf, name) for name in ("track_runs", "run_once")):
            return
        install(app)
    _patch_tasks(app)


# Importing this module (``imports = ["pg_beat.worker"]``) is enough: the worker's app is
# known when the worker starts.
celery_signals.worker_init.connect(
    _on_worker_init, weak=False, dispatch_uid="pg_beat.worker._on_worker_init"
)
