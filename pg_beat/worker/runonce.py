"""Run once: before a tick's task body runs, claim its execution on the run row.

One statement (:data:`pg_beat.store.outcomes.CLAIM`), one round trip on a connection of its own
(autocommit in session mode; behind a transaction-pooling proxy a ``SET LOCAL``, the claim and
the commit). It is made on the task's thread, because its answer decides whether the body
runs. When the database cannot be reached the task RUNS (availability over run-once): the
claim is counted as failed, one warning is logged per outage, and no claim is tried again
before a backoff (0.5 s doubling to 10 s) so that tasks do not wait on a dead database.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import datetime
from typing import Any

import psycopg

from pg_beat.config import Settings
from pg_beat.store import connections, outcomes
from pg_beat.worker.writer import BACKOFF_MAX, BACKOFF_MIN, Stats, _abandoned

logger = logging.getLogger("pg_beat.worker")


class Claimer:
    """Makes run-once claims for one worker process (thread-safe: one claim at a time)."""

    def __init__(
        self, settings: Settings, connector: connections.Connector, worker: str, stats: Stats
    ) -> None:
        self.settings = settings
        self.connector = connector
        self.worker = worker
        self.stats = stats
        self.conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._outage = False
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN

    def claim(self, task_id: str, attempt: int, at: datetime) -> outcomes.Delivery | None:
        """The delivery kind this execution is, or None: no run row, or the database could
        not be asked (run the task either way)."""
        with self._lock:
            if self._outage and time.monotonic() < self._retry_at:
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
            if self._outage:
                self._outage = False
                logger.warning(
                    "pg_beat: worker %s makes run-once claims again (%d made without)",
                    self.worker,
                    self.stats.claim_failures,
                    extra={"action": "claim_recovered", "worker": self.worker},
                )
            self._backoff = BACKOFF_MIN
            return delivery

    def _claim(self, task_id: str, attempt: int, at: datetime) -> outcomes.Delivery | None:
        pooled = self.connector.transaction_pooled
        if self.conn is None or self.conn.closed:
            self.conn = self.connector.connect("claim", autocommit=not pooled)
        conn = self.conn
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
        if not self._outage:
            self._outage = True
            logger.warning(
                "pg_beat: worker %s cannot make run-once claims (%s): tasks run without them "
                "until the database is back (first: task %s)",
                self.worker,
                connections.first_line(exc),
                task_id,
                extra={"action": "claim_outage", "worker": self.worker, "task_id": task_id},
            )

    def abandon(self) -> None:
        """In a forked child: forget the parent's connection without closing it."""
        _abandoned.append(self.conn)
        self.conn = None
