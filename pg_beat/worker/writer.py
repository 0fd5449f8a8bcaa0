"""The writer: one background thread per worker process that writes the recorded events in
batches on a connection of its own, and heartbeats the process's row in ``pg_beat_workers``.

Task threads only call :meth:`Writer.put`, which never blocks: a full queue drops the event
and counts it. When the database is away, each batch tried is dropped and counted (events wait in
the queue between tries, so a short outage loses little); one warning is
logged when the outage starts and one line when writes succeed again
(:mod:`pg_beat.worker.outage`), and the writer tries again with a backoff (0.5 s doubling to
10 s), never once per task.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from typing import Any

import psycopg

from pg_beat.config import Settings
from pg_beat.store import connections, outcomes
from pg_beat.worker.outage import Outage

logger = logging.getLogger("pg_beat.worker")

Event = outcomes.Started | outcomes.Finished
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
#: Events written per transaction at most (the rest wait for the next one).
BATCH_MAX = 5000
#: How long the thread sleeps at most while idle (so that stop() is noticed).
IDLE_WAIT = 1.0


class Writer:
    """Batches events to the database from its own thread, started by :meth:`start`."""

    def __init__(
        self,
        settings: Settings,
        connector: connections.Connector,
        worker: str,
        pid: int,
        outage: Outage,
    ) -> None:
        self.settings = settings
        self.connector = connector
        self.worker = worker
        self.pid = pid
        self.outage = outage
        self.stats = outage.stats
        self.conn: psycopg.Connection[Any] | None = None
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=settings.track_queue_size)
        self._stopping = threading.Event()
        #: Ends the wait for more events of a batch: set by stop() and by an urgent event.
        self._flush = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._full = False
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN
        self._lock = threading.Lock()

    # --- the task side ----------------------------------------------------------------------

    def put(self, event: Event, urgent: bool = False) -> None:
        """Queue ``event`` for the next batch; never blocks, never raises. ``urgent``: the
        batch is written without waiting the flush interval for more (a leader may be waiting
        for this outcome to send a held tick)."""
        try:
            self._queue.put_nowait(event)
            if urgent:
                self._flush.set()
        except queue.Full:
            self.stats.dropped += 1
            if not self._full:
                self._full = True
                logger.warning(
                    "pg_beat: the outcome queue of worker %s is full "
                    "(pg_beat_track_queue_size = %d): dropping outcomes until it drains",
                    self.worker,
                    self.settings.track_queue_size,
                    extra={"action": "track_queue_full", "worker": self.worker},
                )

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pg_beat-writer", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, mark the worker stopped, close the connection."""
        self._stopping.set()
        self._flush.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def abandon(self) -> None:
        """In a forked child: forget the parent's connection without closing it (closing
        would end the parent's session, whose socket the child shares)."""
        _abandoned.append(self.conn)
        self.conn = None

    # --- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        next_beat = 0.0
        while True:
            stopping = self._stopping.is_set()
            backing_off = self._retry_at - time.monotonic()
            if self._failing and backing_off > 0 and not stopping:
                # Events wait in the queue (bounded) for the next try rather than being
                # dropped at once: a short outage loses only the batches actually tried.
                self._stopping.wait(min(backing_off, IDLE_WAIT))
                continue
            batch = self._take(min(IDLE_WAIT, max(0.0, next_beat - time.monotonic())), stopping)
            beat = time.monotonic() >= next_beat
            if batch or beat or stopping:
                try:
                    if self._write(batch, beat, stopping):
                        if beat:
                            next_beat = time.monotonic() + self.settings.worker_heartbeat_interval
                    elif beat:
                        next_beat = self._retry_at
                except Exception:  # never let the thread die
                    logger.exception("pg_beat: unexpected error in the outcome writer")
            if stopping and self._queue.empty():
                self._close()
                return

    def _take(self, timeout: float, stopping: bool) -> list[Event]:
        """The next batch: waits up to ``timeout`` for a first event, then one flush interval
        for more, so that a burst is one transaction."""
        try:
            if stopping or timeout <= 0:
                first = self._queue.get_nowait()
            else:
                first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if not stopping:
            self._flush.wait(self.settings.track_flush_interval)
            if not self._stopping.is_set():
                self._flush.clear()
        batch = [first]
        while len(batch) < BATCH_MAX:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[Event], beat: bool, stopping: bool) -> bool:
        started = [e for e in batch if isinstance(e, outcomes.Started)]
        finished = [e for e in batch if isinstance(e, outcomes.Finished)]
        pending = len(batch)
        try:
            conn = self._connection()
            # Two transactions: a run row updated twice in one transaction would have its
            # foreign key checked again, a KEY SHARE lock on the schedule row that the leader's
            # claim (FOR UPDATE SKIP LOCKED) would skip.
            if started:
                with conn.transaction():
                    self._set_local(conn)
                    outcomes.write_started(conn, started)
                pending -= len(started)
            with conn.transaction():
                self._set_local(conn)
                outcomes.write_finished(conn, finished)
                if stopping:
                    outcomes.stopped(conn, self.worker)
                elif beat:
                    outcomes.heartbeat(conn, self.worker, socket.gethostname(), self.pid)
        except psycopg.Error as exc:
            self.stats.recorded += len(batch) - pending
            self._failed(exc, pending)
            return False
        self.stats.recorded += len(batch)
        self._full = False
        self._failing = False
        self.outage.recovered()
        self._backoff = BACKOFF_MIN
        return True

    def _set_local(self, conn: psycopg.Connection[Any]) -> None:
        if self.connector.transaction_pooled:
            conn.execute(
                connections.set_statement(connections.session_settings(self.settings), local=True)
            )

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = self.connector.connect("worker")
        return self.conn

    def _failed(self, exc: psycopg.Error, count: int) -> None:
        self.stats.dropped += count
        self._close()
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self._failing = True
        self.outage.failed("record outcomes", connections.first_line(exc))

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


#: Connections a forked child inherited: kept referenced so they are never closed there.
_abandoned: list[Any] = []
