"""Run once: before a tick's task body runs, claim its execution on the run row.

One statement (:data:`pg_beat.store.outcomes.CLAIM`), one round trip on a connection of its own
(autocommit in session mode; behind a transaction-pooling proxy a ``SET LOCAL``, the claim and
the commit). It is made on the task's thread, because its answer decides whether the body
runs. When the database cannot be reached the task RUNS (availability over run-once): the
claim is counted as failed, one warning is logged per outage, and no claim is tried again
before a backoff (0.5 s doubling to 10 s) so that tasks do not wait on a dead database.

A REDELIVERED message (the broker's ``redelivered`` flag: RabbitMQ sets it at once when the
connection of the worker that held it dies) whose run is still held by an execution nobody
knows to be dead yet would be a duplicate. Its worker may well be dead, so before claiming,
the delivery waits (:meth:`Claimer.wait_released`), reading only, until that execution
finishes (then it is a duplicate), its worker turns GONE (no heartbeat for
``pg_beat_worker_gone_after``) or its ``max_runtime`` passes (then it runs, the lost one
recorded ``lost``): at most ``pg_beat_worker_gone_after`` plus a heartbeat. The cost is a
worker slot held that long, for redeliveries only; a first delivery never waits.
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import datetime
from typing import Any

import psycopg

from pg_beat.config import Settings
from pg_beat.store import connections, outcomes
from pg_beat.worker.outage import Outage
from pg_beat.worker.writer import BACKOFF_MAX, BACKOFF_MIN, _abandoned


class Claimer:
    """Makes run-once claims for one worker process (thread-safe: one claim at a time)."""

    def __init__(
        self, settings: Settings, connector: connections.Connector, worker: str, outage: Outage
    ) -> None:
        self.settings = settings
        self.connector = connector
        self.worker = worker
        self.outage = outage
        self.stats = outage.stats
        self.conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._failing = False
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN

    def claim(self, task_id: str, attempt: int, at: datetime) -> outcomes.Delivery | None:
        """The delivery kind this execution is, or None: no run row, or the database could
        not be asked (run the task either way)."""
        with self._lock:
            if self._failing and time.monotonic() < self._retry_at:
                self.stats.claim_failures += 1
                return None
            try:
                delivery = self._claim(task_id, attempt, at)
            except psycopg.Error as exc:
                self._failed(exc, task_id)
                return None
            self.stats.claims += 1
            if delivery == "duplicate":
                self.stats.duplicates += 1
            self._failing = False
            self.outage.recovered()
            self._backoff = BACKOFF_MIN
            return delivery

    def wait_released(self, task_id: str, timeout: float, step: float) -> float:
        """Wait, up to ``timeout`` s, while a live execution holds the run of ``task_id``
        (reading every ``step`` s); the seconds waited. Returns at once when the database
        cannot be asked: the claim decides then."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with self._lock:
                try:
                    holding = self._held(task_id)
                except psycopg.Error as exc:
                    self._failed(exc, task_id)
                    break
            if not holding:
                break
            time.sleep(step)
        return time.monotonic() - started

    def _held(self, task_id: str) -> bool:
        conn = self._connection()
        args: dict[str, Any] = {
            "task_id": task_id,
            "gone_after": self.settings.worker_gone_after,
            "max_runtime": self.settings.max_runtime,
        }
        if not self.connector.transaction_pooled:
            return outcomes.held(conn, **args)
        with conn.transaction():
            conn.execute(
                connections.set_statement(connections.session_settings(self.settings), local=True)
            )
            return outcomes.held(conn, **args)

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            pooled = self.connector.transaction_pooled
            self.conn = self.connector.connect("claim", autocommit=not pooled)
        return self.conn

    def _claim(self, task_id: str, attempt: int, at: datetime) -> outcomes.Delivery | None:
        pooled = self.connector.transaction_pooled
        conn = self._connection()
        args: dict[str, Any] = {
            "task_id": task_id,
            "attempt": attempt,
            "worker": self.worker,
            "at": at,
            "gone_after": self.settings.worker_gone_after,
            "max_runtime": self.settings.max_runtime,
        }
        if not pooled:
            return outcomes.claim(conn, **args)
        with conn.transaction():
            conn.execute(
                connections.set_statement(connections.session_settings(self.settings), local=True)
            )
            return outcomes.claim(conn, **args)

    def _failed(self, exc: psycopg.Error, task_id: str) -> None:
        self.stats.claim_failures += 1
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self._failing = True
        self.outage.failed(f"claim task {task_id}", connections.first_line(exc))

    def abandon(self) -> None:
        """In a forked child: forget the parent's connection without closing it."""
        _abandoned.append(self.conn)
        self.conn = None
