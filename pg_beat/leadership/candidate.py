"""A standby's side of leadership: watch the holder, terminate it when it hung, take over.

In session mode a standby waits for the group's advisory lock; before that it terminates the
holder's session when the lease expired or was given up yet that session, as ``pg_locks``
shows, still holds the lock (a hung or paused process). In transaction-pooling mode there is no
lock: it takes over a lease that expired or was released. Either way the takeover itself is
one statement that bumps the epoch (:func:`pg_beat.store.lease.take_over`) and records why: the
state of the lease read again once the lock is ours, not before the wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from pg_beat import store
from pg_beat.config import Settings
from pg_beat.exceptions import POOLING_MESSAGE
from pg_beat.leadership import clock
from pg_beat.leadership.lease import LeaseStatus, lease_state

logger = logging.getLogger("pg_beat.watchdog")

#: ``say(topic, state, level, message, *args)``: log once per state change of ``topic``.
Say = Callable[..., None]


@dataclass(frozen=True)
class Won:
    """A term this replica just took: its epoch, from when (:func:`clock.now`), and why."""

    epoch: int
    started: float
    previous_holder: str | None
    reason: str


class Candidate:
    """Everything a standby decides; the watchdog thread calls :meth:`stand_by` each beat."""

    def __init__(
        self,
        settings: Settings,
        connector: store.connections.Connector,
        say: Say,
        host: str,
        pid: int,
    ) -> None:
        self.settings = settings
        self.connector = connector
        self.say = say
        self.host = host
        self.pid = pid
        self.seen_epoch = 0  # the highest epoch seen: a new one is always above it
        #: The lease session must be replaced: the pool mode changed under it.
        self.reconnect = False
        self._terminated_epoch: int | None = None
        self._refusing = False  # session mode was asked for, but the URL pools transactions

    def seen(self, epoch: int | None) -> None:
        if epoch is not None and epoch > self.seen_epoch:
            self.seen_epoch = epoch

    def stand_by(self, conn: Connection, *, stopping: Callable[[], bool]) -> Won | None:
        """One look at the lease (and, in session mode, one bounded wait for the lock);
        the term won, if any."""
        settings = self.settings
        with conn.begin():
            lease = store.lease.read_lease(conn, settings.group)
        assert lease is not None  # ensured at connect
        self.seen(lease["epoch"])
        view = lease_state(lease, lease["db_now"])
        self.say(
            "standby",
            str(view.holder),
            logging.INFO,
            "watchdog: standing by; leader is %s (epoch %s)",
            view.holder,
            view.epoch,
        )
        if not self.connector.transaction_pooled:
            return self._wait_for_the_lock(conn, lease, view.status, stopping)
        return None if view.status is LeaseStatus.HELD else self._take_over(conn, locked=False)

    def _wait_for_the_lock(
        self,
        conn: Connection,
        lease: Mapping[Any, Any],
        status: LeaseStatus,
        stopping: Callable[[], bool],
    ) -> Won | None:
        settings = self.settings
        if self._refusing:
            return None
        if status is not LeaseStatus.HELD and lease["holder"] != settings.replica_name:
            self._terminate_hung_holder(conn, lease, status)
        self._note_outside_holder(lease)
        if not store.lease.wait_lock(conn, settings.group, min(settings.heartbeat_interval, 1.0)):
            return None
        if stopping():  # shutting down: never start a term now
            self._unlock(conn)
            return None
        return self._take_over(conn, locked=True)

    def _terminate_hung_holder(
        self, conn: Connection, lease: Mapping[Any, Any], status: LeaseStatus
    ) -> None:
        """The lease expired or was given up, yet the session recorded as its holder's still
        holds the advisory lock (a hung or paused process, or a session the server has not
        seen die): terminate it, once pg_locks has shown that it is that holder."""
        pid, holder = lease["backend_pid"], lease["holder"]
        if pid is None or not lease["backend_alive"] or not self.settings.terminate_hung_leader:
            return
        try:
            with conn.begin():
                others = store.lease.terminate_lock_holder(conn, self.settings.group, pid)
        except DBAPIError as exc:
            if store.connections.sqlstate(exc) != "42501":  # insufficient_privilege
                raise
            self.say(
                "terminate",
                f"denied:{pid}",
                logging.WARNING,
                "watchdog: leader %s looks hung (no heartbeat for %.1fs) but this role may "
                "not terminate its backend %s (grant pg_signal_backend); waiting for it "
                "to let go of the lock",
                holder,
                _age(lease),
                pid,
            )
            return
        if others is None:
            return  # it let go of the lock meanwhile: nothing was terminated
        self._terminated_epoch = int(lease["epoch"])
        logger.warning(
            "watchdog: leader %s %s (no heartbeat for %.1fs) but its session %s still held the "
            "lock: terminated it and %d other session(s) of it holding the lease row",
            holder,
            "hung" if status is LeaseStatus.HUNG else "let go of the lease",
            _age(lease),
            pid,
            others,
            extra={"action": "terminate", "replica": self.settings.replica_name, "holder": holder},
        )

    def _note_outside_holder(self, lease: Mapping[Any, Any]) -> None:
        """Say once when the leadership lock is held by a session that is no pg_beat replica:
        nobody can lead until it lets go, and an operator must be told who it is."""
        pid = lease["lock_holder_pid"]
        app = lease.get("lock_holder_application") or ""
        if pid is None or pid == lease["backend_pid"] or app.startswith("pg_beat:"):
            return  # free, the leader's, or a standby that has just won it
        self.say(
            "outside",
            str(pid),
            logging.WARNING,
            "watchdog: the leadership lock of group %r is held by pid %s (application %r, "
            "user %r), which is not a pg_beat replica: no replica can lead until it lets go",
            self.settings.group,
            pid,
            app,
            lease.get("lock_holder_user"),
        )

    def _unlock(self, conn: Connection) -> None:
        with conn.begin():
            store.lease.unlock_all(conn)

    def _pooling_detected(self, conn: Connection) -> bool:
        """In session mode, after winning the lock: True (and the lock let go) when the lock is
        held by another server session than ours, i.e. the URL pools transactions."""
        with conn.begin():
            holders = store.lease.lock_holders(conn, self.settings.group)
            ours = any(
                h["granted"] and h["pid"] == store.connections.backend_pid(conn) for h in holders
            )
        if ours:
            return False
        self._unlock(conn)
        if self.connector.fall_back_to_transaction_mode():
            self.reconnect = True
            return True
        self._refusing = True
        logger.critical(
            "watchdog: %s; this replica will not lead (replica %s)",
            POOLING_MESSAGE,
            self.settings.replica_name,
            extra={"action": "pooling", "replica": self.settings.replica_name},
        )
        return True

    def _take_over(self, conn: Connection, *, locked: bool) -> Won | None:
        settings = self.settings
        if locked and self._pooling_detected(conn):
            return None
        started = clock.now()
        with conn.begin():
            # Read again now that the lock is ours: the state before the wait is history.
            lease = store.lease.read_lease(conn, settings.group)
            assert lease is not None
            self.seen(lease["epoch"])
            reason = lease_state(lease, lease["db_now"]).status.value
            if self._terminated_epoch == lease["epoch"]:
                reason = LeaseStatus.HUNG.value
            row = store.lease.take_over(
                conn,
                settings.group,
                holder=settings.replica_name,
                host=self.host,
                pid=self.pid,
                ttl=settings.lease_ttl,
                reason=reason,
                locked=locked,
                seen_epoch=self.seen_epoch,
            )
            if row is not None and locked:
                store.connections.set_application_name(
                    conn, self.connector.application_name("leader")
                )
            if row is not None:
                store.connections.notify_schedules(conn, "leader")
        if row is None:  # held by a live lease this session cannot take (transaction mode)
            if locked:
                self._unlock(conn)
            return None
        self.seen(int(row["epoch"]))
        return Won(int(row["epoch"]), started, row["previous_holder"], reason)


def _age(lease: Mapping[Any, Any]) -> float:
    heartbeat = lease["heartbeat_at"]
    return 0.0 if heartbeat is None else (lease["db_now"] - heartbeat).total_seconds()
