"""The dispatch loop's database sessions: one kept open for its transactions, one for LISTEN.

Keeping the session open spares the hot path a pool checkout and a ping. A kept session found
closed (terminated while the replica stood by, say) is replaced at once. Waiting is woken by
``NOTIFY`` on a schedule change; behind a transaction pool, where LISTEN does not work, the
wait is a poll every ``pg_beat_poll_interval`` unless ``pg_beat_listen_url`` gives a direct
session to LISTEN on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy.engine import Connection

from pg_beat import store

logger = logging.getLogger("pg_beat.dispatch")


class ConnectionKeeper:
    """The kept-open dispatch session and the LISTEN session of one replica."""

    def __init__(self, connector: store.connections.Connector) -> None:
        self.connector = connector
        self.engine = connector.engine("dispatch", dispatch=True)
        self.backend_pid: int | None = None  # for hang reports; None behind a transaction pool
        #: The last transaction ran on a session opened earlier (not by that transaction).
        self.reused = False
        self._conn: Connection | None = None
        self._generation = connector.generation
        self._listen: psycopg.Connection[Any] | None = None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction on the kept session (opened first if needed)."""
        if self._generation != self.connector.generation:  # the pool mode changed under us
            self._generation = self.connector.generation
            self.drop()
            self.close_listen()
        self.reused = True
        if self._conn is None or self._conn.invalidated or self._conn.closed:
            self.reused = False
            self._conn = self.engine.connect()
            with self._conn.begin():
                pid = store.connections.backend_pid(self._conn)
            self.backend_pid = None if self.connector.transaction_pooled else pid
        with self._conn.begin():
            yield self._conn

    def drop(self) -> None:
        """Close the kept session (after an error: it may be broken)."""
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:
                logger.debug("dispatch: closing the dispatch connection failed", exc_info=True)
        self._conn = None
        self.backend_pid = None
        self.engine.dispose()

    def wait(self, timeout: float, woken: threading.Event) -> None:
        """Sleep up to ``timeout`` s; a NOTIFY (or, when polling, ``woken``) ends it early.
        Raises psycopg errors of the LISTEN session (closed first)."""
        try:
            if self._listen is None or self._listen.closed:
                self._listen = self.connector.listen("listen")
            if self._listen is None:  # transaction pooling: look again soon
                woken.wait(min(timeout, self.connector.settings.poll_interval))
                woken.clear()
                return
            for _ in self._listen.notifies(timeout=timeout, stop_after=1):
                break
            # Drain whatever else arrived, so a burst of edits costs one wake-up.
            for _ in self._listen.notifies(timeout=0.0):
                pass
        except psycopg.Error:
            self.close_listen()
            raise

    def close_listen(self) -> None:
        if self._listen is not None:
            try:
                self._listen.close()
            except Exception:
                logger.debug("dispatch: closing the LISTEN connection failed", exc_info=True)
            self._listen = None

    def close(self) -> None:
        self.close_listen()
        self.drop()
