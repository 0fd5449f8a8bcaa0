"""The Celery signal handlers of the worker side, and the per-process state they share.

Only tasks whose message carries the ``pg_beat_schedule`` header are looked at. Handlers run
on the task's thread and only read the request and queue an event (the run-once claim is the
one exception: its answer decides whether the body runs). The writer thread and the claim
connection are made lazily in each process, after any fork, and never used across one: a
forked child forgets (without closing) what it inherited.

Celery 5.7 sends ``task_prerun`` and ``task_postrun`` (with the final ``state``) in the
process that runs the task, and ``task_revoked`` in the process that handles the message
(the prefork pool's parent: a revoke before start, an expiry, a terminate). A custom message
header becomes an attribute of ``task.request``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from datetime import datetime, timezone
from typing import Any

from celery import signals
from celery.exceptions import Ignore

from pg_beat.config import Settings, default_replica_name
from pg_beat.store import connections, outcomes
from pg_beat.worker.outage import Outage, Stats
from pg_beat.worker.runonce import Claimer
from pg_beat.worker.writer import Writer

logger = logging.getLogger("pg_beat.worker")

_TRUE = ("1", "true", "yes", "on")
#: Overlap policies (the ``pg_beat_overlap`` header) under which the leader waits for a run's
#: outcome: it is written without the batching wait.
_WAITED_FOR = ("skip", "buffer_one")
#: Attribute marking a task class whose ``before_start`` makes the run-once claim.
PATCHED = "_pg_beat_run_once"


class Tracking:
    """What one worker process records with: settings, its name, the writer, the claimer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.worker = default_replica_name()
        self.stats = Stats()
        self.connector = connections.Connector(settings)
        self.outage = Outage(self.worker, self.stats)
        self.writer = Writer(settings, self.connector, self.worker, self.pid, self.outage)
        self.claimer = Claimer(settings, self.connector, self.worker, self.outage)
        #: (task id, thread) -> (monotonic start, attempt, claimed delivery or None): by thread
        #: too, since two deliveries of one task id may run at once in a threads pool.
        self.running: dict[tuple[str, int], tuple[float, int, str | None]] = {}
        self._warned_unpatched = False

    def put(self, event: outcomes.Started | outcomes.Finished, urgent: bool = False) -> None:
        self.writer.start()
        self.writer.put(event, urgent)


_lock = threading.Lock()
#: Each app installed in this process -> its settings (weak: an id could be reused).
_apps: weakref.WeakKeyDictionary[Any, Settings] = weakref.WeakKeyDictionary()
_state: Tracking | None = None


def settings_of(app: Any) -> Settings | None:
    return None if app is None else _apps.get(app)


def state(settings: Settings) -> Tracking:
    """This process's Tracking, made on first use (after a fork, a new one)."""
    global _state
    current = _state
    if current is not None and current.pid == os.getpid():
        return current
    with _lock:
        if _state is None or _state.pid != os.getpid():
            _state = Tracking(settings)
        return _state


def current() -> Tracking | None:
    current = _state
    return current if current is not None and current.pid == os.getpid() else None


def _after_fork_in_child() -> None:
    global _state
    inherited = _state
    if inherited is not None:
        inherited.writer.abandon()
        inherited.claimer.abandon()
    _state = None


os.register_at_fork(after_in_child=_after_fork_in_child)


# --- reading a request -------------------------------------------------------------------------


def header(request: Any, name: str) -> Any:
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value


def is_ours(request: Any) -> bool:
    return header(request, "pg_beat_schedule") is not None


def run_once(request: Any, settings: Settings) -> bool:
    """The message's ``pg_beat_run_once`` header, else the worker's setting."""
    value = header(request, "pg_beat_run_once")
    if value is None:
        return settings.run_once
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _error(exc: Any) -> str | None:
    if exc is None:
        return None
    if not isinstance(exc, BaseException):
        return str(exc)
    inner = getattr(exc, "exc", None)  # Retry wraps the error that caused it
    if isinstance(inner, BaseException):
        exc = inner
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- handlers ----------------------------------------------------------------------------------


def on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    settings = settings_of(getattr(task, "app", None))
    if settings is None or task_id is None:
        return
    request = task.request
    if not is_ours(request):
        return
    tracking = state(settings)
    attempt = int(getattr(request, "retries", 0) or 0)
    tracking.running[task_id, threading.get_ident()] = (time.monotonic(), attempt, None)
    if run_once(request, settings):
        if getattr(type(task), PATCHED, False):
            return  # before_start claims, and records the start
        if not tracking._warned_unpatched:
            tracking._warned_unpatched = True
            logger.warning(
                "pg_beat: task %s was registered after the worker started: run once is not "
                "applied to it (its start is recorded)",
                task.name,
                extra={"action": "run_once_unpatched", "worker": tracking.worker},
            )
    _started(tracking, request, task_id, attempt)


def _started(tracking: Tracking, request: Any, task_id: str, attempt: int) -> None:
    delivery: outcomes.Delivery = "first"
    if attempt > 0:
        delivery = "retry"
    elif (getattr(request, "delivery_info", None) or {}).get("redelivered"):
        delivery = "redelivery"
    tracking.put(
        outcomes.Started(
            task_id=task_id,
            group=header(request, "pg_beat_group"),
            attempt=attempt,
            worker=tracking.worker,
            delivery=delivery,
            at=_now(),
        )
    )


def before_start(task: Any, task_id: str) -> None:
    """The run-once claim, called by Celery's tracer before the body; raises ``Ignore`` (the
    message is acknowledged, the body not run) for a duplicate delivery."""
    settings = settings_of(task.app)
    if settings is None:
        return
    request = task.request
    if not is_ours(request) or not run_once(request, settings):
        return
    tracking = state(settings)
    attempt = int(getattr(request, "retries", 0) or 0)
    if (getattr(request, "delivery_info", None) or {}).get("redelivered"):
        # Redelivered after its worker died, perhaps: wait until that is known (runonce).
        waited = tracking.claimer.wait_released(
            task_id,
            settings.worker_gone_after + settings.worker_heartbeat_interval,
            min(1.0, settings.worker_heartbeat_interval),
        )
        if waited >= 1.0:
            logger.info(
                "pg_beat: task %s[%s] was redelivered while its run was held: waited %.1fs "
                "for the holding execution to finish or its worker to be known gone",
                task.name,
                task_id,
                waited,
                extra={"action": "redelivery_wait", "worker": tracking.worker, "task_id": task_id},
            )
    delivery = tracking.claimer.claim(task_id, attempt, _now())
    if delivery is None:
        _started(tracking, request, task_id, attempt)  # no run row, or no database
        return
    key = (task_id, threading.get_ident())
    started = tracking.running.get(key)
    if started is not None:
        tracking.running[key] = (started[0], started[1], delivery)
    if delivery == "duplicate":
        logger.info(
            "pg_beat: task %s[%s] was delivered again: acknowledged without running (run once)",
            task.name,
            task_id,
            extra={"action": "duplicate", "worker": tracking.worker, "task_id": task_id},
        )
        raise Ignore(f"pg_beat: duplicate delivery of {task_id}")
    if delivery == "redelivery":
        logger.warning(
            "pg_beat: task %s[%s] runs again: its previous execution was lost",
            task.name,
            task_id,
            extra={"action": "redelivery", "worker": tracking.worker, "task_id": task_id},
        )


_OUTCOMES: dict[str, outcomes.Outcome] = {
    "SUCCESS": "success",
    "FAILURE": "failure",
    "RETRY": "retry",
}


def on_postrun(
    sender: Any = None,
    task_id: str | None = None,
    task: Any = None,
    retval: Any = None,
    state: str | None = None,
    **_: Any,
) -> None:
    settings = settings_of(getattr(task, "app", None))
    if settings is None or task_id is None:
        return
    tracking = current()
    if tracking is None:
        return
    started = tracking.running.pop((task_id, threading.get_ident()), None)
    if started is None:
        return
    begun, attempt, delivery = started
    outcome = _OUTCOMES.get(state or "")
    if outcome is None or delivery == "duplicate":
        return  # Ignore / Reject: no outcome (a rejected message comes back)
    # Under skip or buffer_one the leader may hold a tick until this run ends: no batching
    # wait (the request is still the task's during task_postrun).
    urgent = header(getattr(task, "request", None), "pg_beat_overlap") in _WAITED_FOR
    tracking.put(
        outcomes.Finished(
            task_id=task_id,
            attempt=attempt,
            worker=tracking.worker,
            outcome=outcome,
            at=_now(),
            runtime=time.monotonic() - begun,
            error=None if outcome == "success" else _error(retval),
        ),
        urgent,
    )


def on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **_: Any,
) -> None:
    settings = settings_of(getattr(sender, "app", None))
    if settings is None or request is None or not is_ours(request):
        return
    task_id = getattr(request, "id", None)
    if task_id is None:
        return
    if expired:
        error = "expired before it started"
    elif terminated:
        error = f"terminated (signal {signum})"
    else:
        error = "revoked"
    tracking = state(settings)
    tracking.put(
        outcomes.Finished(
            task_id=task_id,
            attempt=int(getattr(request, "retries", 0) or 0),
            worker=None,
            outcome="revoked",
            at=_now(),
            runtime=None,
            error=error,
        )
    )


def on_worker_process_init(**_: Any) -> None:
    """A prefork child: start its writer at once, so that its heartbeat is there."""
    for settings in list(_apps.values())[:1]:
        state(settings).writer.start()


def on_worker_ready(sender: Any = None, **_: Any) -> None:
    """The main process of a solo or threads pool runs the tasks: start its writer."""
    pool = getattr(sender, "pool", None)
    if pool is not None and type(pool).__module__ == "celery.concurrency.prefork":
        return
    app = getattr(sender, "app", None)
    settings = settings_of(app)
    if settings is not None:
        state(settings).writer.start()


def on_process_shutdown(**_: Any) -> None:
    tracking = current()
    if tracking is not None:
        tracking.writer.stop()


def connect() -> None:
    """Connect the handlers (once per process; strong references)."""
    for signal, handler in (
        (signals.task_prerun, on_prerun),
        (signals.task_postrun, on_postrun),
        (signals.task_revoked, on_revoked),
        (signals.worker_process_init, on_worker_process_init),
        (signals.worker_ready, on_worker_ready),
        (signals.worker_process_shutdown, on_process_shutdown),
        (signals.worker_shutdown, on_process_shutdown),
    ):
        signal.connect(handler, weak=False, dispatch_uid=f"pg_beat.worker.{handler.__name__}")
