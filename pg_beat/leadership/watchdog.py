"""The watchdog thread: wins, renews and gives up the lease, and watches the holder.

Every replica runs one. On the leader it renews the lease on its own connection, but only
while the dispatch loop makes progress (invariant 6). On a standby in session mode it waits
for the advisory lock and watches ``pg_locks`` for a holder that died or hung; in
transaction-pooling mode it reads the lease row each heartbeat and takes over a lease that
expired or was released. Every statement runs in a short transaction of its own (so that
``SET LOCAL`` applies behind a transaction pool); each iteration is guarded: the thread logs
state changes once and never dies.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from pg_beat import store
from pg_beat.config import Settings
from pg_beat.leadership import clock, hang
from pg_beat.leadership.candidate import Candidate
from pg_beat.leadership.handover import Handover
from pg_beat.leadership.lease import LeaderState
from pg_beat.leadership.registry import Registry
from pg_beat.publish import brokerhealth
from pg_beat.publish.brokerhealth import Health

logger = logging.getLogger("pg_beat.watchdog")

HANG_EXIT_CODE = 70  # EX_SOFTWARE: the supervisor restarts us


class Watchdog(threading.Thread):
    """Leadership for one replica. ``progress`` returns the dispatch loop's last progress, on
    :func:`pg_beat.leadership.clock.now`."""

    def __init__(
        self,
        settings: Settings,
        state: LeaderState,
        progress: Callable[[], float],
        *,
        dispatch_thread: Callable[[], int | None] = lambda: None,
        dispatch_backend: Callable[[], int | None] = lambda: None,
        exit_process: Callable[[int], None] = os._exit,
        connector: store.connections.Connector | None = None,
        broker_health: Callable[[], Health] = lambda: brokerhealth.UNKNOWN,
    ) -> None:
        super().__init__(name=f"pg_beat-watchdog[{settings.replica_name}]", daemon=True)
        self.settings = settings
        self.state = state
        self.progress = progress
        self.dispatch_thread = dispatch_thread
        self.dispatch_backend = dispatch_backend
        self.exit_process = exit_process
        self.broker_health = broker_health
        self.handover = Handover(settings, broker_health)
        self.connector = connector or store.connections.Connector(settings)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.engine: Engine = self.connector.engine("standby")
        self.conn: Connection | None = None
        self.backend_pid: int | None = None  # our lease session's, in session mode
        self.epoch: int | None = None
        self.stopping = threading.Event()
        self.failovers = 0
        self.renewal_failures = 0
        self._said: dict[str, str] = {}
        self._hung = False
        self._gap = 0.0
        self.candidate = Candidate(settings, self.connector, self._say, self.host, self.pid)
        self.registry = Registry(settings, self.host, self.pid, broker_health)

    # --- logging once per state change ---------------------------------------------------

    def _say(
        self, topic: str, state: str, level: int, message: str, *args: Any, **extra: Any
    ) -> None:
        if self._said.get(topic) == state:
            return
        self._said[topic] = state
        logger.log(
            level,
            message,
            *args,
            extra={
                "action": topic,
                "replica": self.settings.replica_name,
                "epoch": self.epoch,
                **extra,
            },
        )

    # --- thread ------------------------------------------------------------------------

    def run(self) -> None:
        last_start: float | None = None
        while not self.stopping.is_set():
            started = clock.now()
            self._gap = 0.0 if last_start is None else started - last_start
            last_start = started
            try:
                self.iterate()
                self._say("db", "ok", logging.INFO, "watchdog: connected to the database")
                self._said.pop("error", None)
            except DBAPIError as exc:
                self._lost_database(exc)
            except Exception as exc:  # never let the thread die; one traceback per streak
                if self._said.get("error") != type(exc).__name__:
                    logger.exception(
                        "watchdog: unexpected error (replica %s, epoch %s)",
                        self.settings.replica_name,
                        self.epoch,
                    )
                self._said["error"] = type(exc).__name__
                if self.epoch is not None:
                    self._step_down(f"unexpected error: {exc}")
                self._drop_connection()
            elapsed = clock.now() - started
            pause = self.settings.heartbeat_interval - elapsed
            if self.epoch is None and self.conn is None:
                pause = max(pause, 0.5)  # reconnect backoff
            if pause > 0:
                self.stopping.wait(pause)

    def iterate(self) -> None:
        conn = self._connection()
        if self.epoch is not None:
            self._lead(conn)
        else:
            self._stand_by(conn)
        if self.conn is not None:  # a step-down closes the connection
            self.registry.heartbeat(
                self.conn, leader=self.epoch is not None, session=self.session_mode
            )

    @property
    def session_mode(self) -> bool:
        return not self.connector.transaction_pooled

    def _connection(self) -> Connection:
        if self.conn is None:
            conn = self.engine.connect()
            try:
                with conn.begin():
                    pid = store.connections.backend_pid(conn)
                    store.lease.ensure_lease(conn, self.settings.group)
            except BaseException:
                conn.close()
                raise
            self.backend_pid = pid if self.session_mode else None
            self.conn = conn
        return self.conn

    def _drop_connection(self) -> None:
        """Close our session, which releases the advisory lock if we still hold it."""
        if self.conn is not None:
            try:
                self.conn.invalidate()
                self.conn.close()
            except Exception:
                logger.debug("watchdog: closing the lease connection failed", exc_info=True)
        self.conn = None
        self.backend_pid = None

    def _lost_database(self, exc: DBAPIError) -> None:
        if self.stopping.is_set():  # shutting down: close() ended our session on purpose
            self._drop_connection()
            return
        first_line = store.connections.first_line(exc)
        sqlstate = store.connections.sqlstate(exc)
        # A lock or statement timeout, or a deadlock: the server answered, something blocked us.
        blocked = sqlstate in store.connections.TRANSIENT_SQLSTATES
        if self.epoch is not None:
            self.renewal_failures += 1
            what = "lease statement blocked" if blocked else "lease connection failed"
            self._step_down(f"{what}: {first_line}")
        if blocked:
            self._say(
                "db",
                f"blocked:{sqlstate}",
                logging.ERROR,
                "watchdog: a lease statement was blocked (sqlstate %s), retrying on a new "
                "connection (replica %s): %s",
                sqlstate,
                self.settings.replica_name,
                first_line,
            )
        else:
            self._say(
                "db",
                "down",
                logging.ERROR,
                "watchdog: database unreachable or read-only, retrying (replica %s): %s",
                self.settings.replica_name,
                first_line,
            )
        self._drop_connection()

    # --- leader --------------------------------------------------------------------------

    def _lead(self, conn: Connection) -> None:
        assert self.epoch is not None
        settings = self.settings
        if not self.state.holds(self.epoch):
            # The dispatch loop was fenced out, or we are shutting down: never renew a lease
            # that this process will not publish under (the loop may have given it up).
            self._step_down("this process gave the epoch up (fenced out, or shutting down)")
            return
        stuck_for = clock.now() - self.progress()
        # When this thread was frozen as long as the loop, the whole process was paused
        # (SIGSTOP, VM freeze): not a hang of the loop. The renewal below tells if we lost.
        paused = self._gap > stuck_for - 2 * settings.heartbeat_interval
        if stuck_for > settings.hang_timeout and not paused:
            self._hang_detected(conn, stuck_for)
            return
        if paused and self._gap > settings.lease_ttl - settings.publish_margin:
            logger.warning(
                "watchdog: this process was paused for %.1fs (past the lease deadline)",
                self._gap,
                extra={"action": "paused", "epoch": self.epoch},
            )
        started = clock.now()
        with conn.begin():
            expires = store.lease.renew(
                conn,
                settings.group,
                self.epoch,
                settings.replica_name,
                settings.lease_ttl,
                stuck_for,
            )
        if expires is None:
            self.renewal_failures += 1
            self._step_down("the lease expired or was taken over by another replica")
            return
        self.state.extend(self.epoch, started, settings.lease_ttl - settings.publish_margin)
        if self.handover.should_hand_over(conn, self.epoch):  # invariant 15
            self.release(conn)

    def _hang_detected(self, conn: Connection, stuck_for: float) -> None:
        """The dispatch loop made no progress for too long: say why, and let go of the lease."""
        self._hung = True
        stack = hang.stack_of(self.dispatch_thread())
        backend = self.dispatch_backend()
        waits = "(dispatch backend unknown)"
        if backend is not None:
            with conn.begin():
                waits = hang.describe_backends(
                    store.diagnostics.backend_diagnostics(conn, [backend])
                )
        logger.critical(
            "watchdog: dispatch loop stuck for %.1fs (replica %s, epoch %s); releasing the lease."
            "\nDatabase: %s\nStack of the stuck thread:\n%s",
            stuck_for,
            self.settings.replica_name,
            self.epoch,
            waits,
            stack,
            extra={"action": "hang", "replica": self.settings.replica_name, "epoch": self.epoch},
        )
        self.release(conn)
        if self.settings.on_hang == "exit":
            logger.critical(
                "watchdog: exiting with status %d for the supervisor to restart us", HANG_EXIT_CODE
            )
            logging.shutdown()
            self.exit_process(HANG_EXIT_CODE)

    def release(self, conn: Connection | None = None) -> None:
        """Give the lease up now: expire it, drop the lock, stop publishing."""
        epoch = self.state.step_down()
        epoch = epoch if epoch is not None else self.epoch
        self.epoch = None
        conn = conn or self.conn
        if epoch is not None and conn is not None:
            try:
                with conn.begin():
                    store.lease.release(
                        conn, self.settings.group, epoch, self.settings.replica_name
                    )
                    if self.session_mode:
                        store.lease.unlock_all(conn)
            except DBAPIError:
                self._drop_connection()
            logger.info(
                "watchdog: released the lease (epoch %s)",
                epoch,
                extra={"action": "released", "epoch": epoch},
            )

    def _step_down(self, why: str) -> None:
        epoch = self.epoch
        self.state.step_down()
        self.epoch = None
        self._said.pop("standby", None)
        logger.warning(
            "watchdog: no longer the leader (epoch %s): %s; standing by",
            epoch,
            why,
            extra={"action": "step_down", "epoch": epoch, "replica": self.settings.replica_name},
        )
        self._drop_connection()

    # --- standby -------------------------------------------------------------------------

    def _stand_by(self, conn: Connection) -> None:
        if self._hung:
            if clock.now() - self.progress() > self.settings.hang_timeout:
                return  # our own loop is still stuck: never lead with it
            self._hung = False
        peer = self.handover.stands_aside(conn)
        if peer is not None:
            self._say(
                "aside",
                "aside",
                logging.INFO,
                "watchdog: standing aside while the broker fails here; replica %s reports a "
                "working one",
                peer,
            )
            return
        self._said.pop("aside", None)
        won = self.candidate.stand_by(conn, stopping=self.stopping.is_set)
        if self.candidate.reconnect:  # the pool mode changed: a session made for the new one
            self.candidate.reconnect = False
            self._drop_connection()
        if won is None:
            return
        settings = self.settings
        self.epoch = won.epoch
        self.failovers += 1
        self.state.become_leader(
            won.epoch, won.started, settings.lease_ttl - settings.publish_margin
        )
        self._said.pop("standby", None)
        logger.warning(
            "watchdog: now the leader, epoch %s (previous holder %s, %s)",
            won.epoch,
            won.previous_holder,
            won.reason,
            extra={
                "action": "take_over",
                "epoch": won.epoch,
                "replica": settings.replica_name,
                "reason": won.reason,
            },
        )

    # --- replica registry ----------------------------------------------------------------

    # --- shutdown ------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        """After :meth:`stop` and a join: close the session (dropping any lock) and the engine."""
        self._drop_connection()
        self.engine.dispose()
