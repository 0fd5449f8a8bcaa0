"""Whether this replica's own broker connection works, for the replica row, status and metrics.

The leader knows from its publishes (:class:`pg_beat.publish.publisher.Publisher` tracks when
they began to fail). A standby publishes nothing, so it probes: every PROBE_EVERY seconds it opens a
connection of its own to the broker (with the scheduler's timeouts) and closes it. A standby
that reports a working broker is one a leader cut off from the broker may hand over to
(invariant 15). Each change is logged once: unreachable (with the error), reachable again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pg_beat.leadership import clock

logger = logging.getLogger("pg_beat.broker")

PROBE_EVERY = 10.0  # seconds between two probes of a standby
ERROR_CHARS = 200  # of an error, in the replica row


@dataclass(frozen=True)
class Health:
    """One replica's view of its broker; times on :func:`pg_beat.leadership.clock.now`."""

    failing_since: float | None  # None: it works (or was never tried)
    error: str | None
    checked_at: float | None  # the last probe or publish outcome
    waiting: int | None = None  # ticks queued for it (the leader)

    @property
    def working(self) -> bool:
        return self.checked_at is not None and self.failing_since is None


UNKNOWN = Health(None, None, None)


class Publishing(Protocol):
    """What a leader's publisher says of its broker
    (:class:`pg_beat.publish.publisher.Publisher`)."""

    @property
    def failing_since(self) -> float | None: ...
    @property
    def failing_error(self) -> str | None: ...
    @property
    def sent_total(self) -> int: ...
    @property
    def backlog(self) -> int: ...


def current(probed: Health, publisher: Publishing | None) -> Health:
    """A replica's broker health: its publisher's view while it leads (``publisher`` given),
    else, or before its first publish, its last probe."""
    if publisher is None:
        return probed
    since, waiting = publisher.failing_since, publisher.backlog
    if since is None and publisher.sent_total == 0:  # nothing published yet this process
        return Health(probed.failing_since, probed.error, probed.checked_at, waiting)
    return Health(since, publisher.failing_error, clock.now(), waiting)


class Prober:
    """A standby's probe of its broker; :meth:`due` and :meth:`probe` from one thread."""

    def __init__(self, connect: Callable[[], Any], replica: str) -> None:
        self.connect = connect  # opens a new connection, raises when the broker is unreachable
        self.replica = replica
        self.health = UNKNOWN
        self._next = 0.0

    def due(self) -> bool:
        return clock.now() >= self._next

    def probe(self) -> Health:
        """Connect once; record and return the outcome (logged when it changed)."""
        now = clock.now()
        self._next = now + PROBE_EVERY
        before = self.health
        try:
            self.connect()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
            since = before.failing_since if before.failing_since is not None else now
            self.health = Health(since, error, now)
            if before.failing_since is None:
                logger.warning(
                    "broker: not reachable from this replica (replica %s): %s",
                    self.replica,
                    error,
                    extra={"action": "broker_down", "replica": self.replica},
                )
            return self.health
        self.health = Health(None, None, now)
        if before.failing_since is not None:
            logger.info(
                "broker: reachable again from this replica after %.0fs (replica %s)",
                now - before.failing_since,
                self.replica,
                extra={"action": "broker_up", "replica": self.replica},
            )
        return self.health


def probe_connection(connection: Any) -> None:
    """Open a new connection like ``connection`` (a kombu Connection, with its timeouts) and a
    channel on it, then close it; raises what the broker or the link raised."""
    probe = connection.clone()
    try:
        probe.ensure_connection(max_retries=0)
        probe.default_channel  # noqa: B018 - on Redis, opening the channel PINGs
    finally:
        probe.release()
