"""The lease as this replica sees it: who holds it, whether it is alive, and the local fence.

``LeaderState`` is shared by the watchdog thread (which wins, renews and loses the lease), the
dispatch loop and the publisher thread (which may publish only while ``may_publish`` says so).
The deadline is on :mod:`pg_beat.leadership.clock`, which keeps counting through SIGSTOP, a VM
freeze, a long GC pause and a suspended host.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from pg_beat.leadership import clock


class LeaseStatus(str, Enum):
    """What a standby concludes from the lease row, ``pg_locks`` and ``pg_stat_activity``.

    The value is also the failover reason recorded when a standby takes such a lease over.
    """

    FREE = "free"  # never held
    RELEASED = "released"  # handed over on purpose (shutdown, a hang, an epoch given up)
    HELD = "held"  # a live holder with an unexpired lease
    HOLDER_GONE = "holder_gone"  # its session, which held the advisory lock, no longer exists
    HUNG = "hung"  # its session still holds the lock, but the lease expired: hung or paused
    EXPIRED = "expired"  # not renewed in time, no session to tell (transaction pooling)


@dataclass(frozen=True)
class LeaseView:
    status: LeaseStatus
    epoch: int
    holder: str | None
    backend_pid: int | None
    heartbeat_age: float | None
    expires_in: float | None


def lease_state(row: Mapping[Any, Any] | None, now: datetime) -> LeaseView:
    """Classify a ``store.read_lease`` row at database time ``now``.

    ``backend_alive`` in the row means the session recorded as the holder's still holds the
    advisory lock (``pg_locks``), not merely that some session has that pid. A lease taken in
    transaction-pooling mode records no session: it is alive while it is unexpired.
    """
    if row is None or row["holder"] is None:
        return LeaseView(
            LeaseStatus.FREE, 0 if row is None else row["epoch"], None, None, None, None
        )
    heartbeat: datetime | None = row["heartbeat_at"]
    expires: datetime | None = row["expires_at"]
    heartbeat_age = None if heartbeat is None else (now - heartbeat).total_seconds()
    expires_in = None if expires is None else (expires - now).total_seconds()
    expired = expires_in is None or expires_in <= 0
    if row.get("released_at") is not None and expired:
        status = LeaseStatus.RELEASED
    elif row["backend_pid"] is None:
        status = LeaseStatus.EXPIRED if expired else LeaseStatus.HELD
    elif not row["backend_alive"]:
        status = LeaseStatus.HOLDER_GONE
    elif expired:
        status = LeaseStatus.HUNG
    else:
        status = LeaseStatus.HELD
    return LeaseView(
        status, row["epoch"], row["holder"], row["backend_pid"], heartbeat_age, expires_in
    )


class LeaderState:
    """This replica's leadership: the epoch it holds and the deadline of its fence."""

    def __init__(self) -> None:
        # Re-entrant: Celery's SIGTERM handler runs close() -> step_down() on the main thread,
        # possibly while that thread is inside one of these methods.
        self._lock = threading.RLock()
        self._epoch: int | None = None
        self._deadline = 0.0
        self.changed = threading.Event()

    def become_leader(self, epoch: int, renewed_at: float, lifetime: float) -> None:
        """Hold ``epoch`` until ``renewed_at + lifetime`` (seconds of
        :func:`pg_beat.leadership.clock.now`)."""
        with self._lock:
            self._epoch = epoch
            self._deadline = renewed_at + lifetime
        self.changed.set()

    def extend(self, epoch: int, renewed_at: float, lifetime: float) -> None:
        """Move the deadline after a renewal that *started* at ``renewed_at``."""
        with self._lock:
            if self._epoch == epoch:
                self._deadline = max(self._deadline, renewed_at + lifetime)

    def step_down(self) -> int | None:
        with self._lock:
            epoch, self._epoch, self._deadline = self._epoch, None, 0.0
        if epoch is not None:
            self.changed.set()
        return epoch

    def holds(self, epoch: int) -> bool:
        """True until this replica stepped down from ``epoch`` or won a later one, whatever the
        deadline: past the deadline a renewal may still bring the epoch back."""
        with self._lock:
            return self._epoch == epoch

    @property
    def epoch(self) -> int | None:
        with self._lock:
            return self._epoch if clock.now() < self._deadline else None

    def may_publish(self, epoch: int) -> bool:
        """True only while ``epoch`` is ours and its local deadline has not passed."""
        with self._lock:
            return self._epoch == epoch and clock.now() < self._deadline

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._deadline - clock.now()) if self._epoch else 0.0
