"""This replica's row in ``pg_beat_replicas``: who it is, its role, and whether its own broker
connection works; written by the watchdog thread every heartbeat, on its lease connection, so
``pg-beat status`` can show every replica and a leader cut off from the broker can find one
whose broker works. Rows not seen for ``pg_beat_replica_stale_after`` are pruned."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

from sqlalchemy.engine import Connection

from pg_beat import __version__, store
from pg_beat.config import Settings
from pg_beat.leadership import clock
from pg_beat.publish.brokerhealth import Health

PRUNE_EVERY = 30.0  # seconds between prunes of replica rows not seen for long


class Registry:
    def __init__(
        self, settings: Settings, host: str, pid: int, broker_health: Callable[[], Health]
    ) -> None:
        self.settings = settings
        self.host = host
        self.pid = pid
        self.broker_health = broker_health
        self.started_at = time.time()
        self._pruned_at = 0.0

    def heartbeat(self, conn: Connection, *, leader: bool, session: bool) -> None:
        """Write this replica's row (and now and then prune stale ones), in one transaction."""
        settings = self.settings
        health, now = self.broker_health(), clock.now()
        with conn.begin():
            store.diagnostics.heartbeat_replica(
                conn,
                settings.group,
                {
                    "name": settings.replica_name,
                    "host": self.host,
                    "pid": self.pid,
                    "role": "leader" if leader else "standby",
                    "version": __version__,
                    "started_at": datetime.fromtimestamp(self.started_at, tz=timezone.utc),
                    "session": session,
                    "broker_failing_for": _age(health.failing_since, now),
                    "broker_error": health.error,
                    "broker_checked_ago": _age(health.checked_at, now),
                    "ticks_waiting": health.waiting,
                },
            )
            if now - self._pruned_at > PRUNE_EVERY:
                self._pruned_at = now
                store.diagnostics.prune_replicas(conn, settings.group, settings.replica_stale_after)


def _age(at: float | None, now: float) -> float | None:
    """Seconds from ``at`` to ``now`` (both :func:`clock.now`), or None."""
    return None if at is None else max(0.0, now - at)
