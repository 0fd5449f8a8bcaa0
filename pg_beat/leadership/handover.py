"""When a leader cut off from its broker lets another replica lead (invariant 15).

A leader whose broker has failed for longer than ``pg_beat_broker_handover_after`` while another
live replica reports a working broker (its own probes, in the replica rows) hands the lease
over; a replica whose broker fails never takes the lease from one whose broker works. A full
outage, where every replica's broker fails, changes nothing: the leader keeps its lease and its
ticks wait, in order, since no successor could publish them either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.engine import Connection

from pg_beat import store
from pg_beat.config import Settings
from pg_beat.leadership import clock
from pg_beat.publish import brokerhealth
from pg_beat.publish.brokerhealth import Health

logger = logging.getLogger("pg_beat.watchdog")


class Handover:
    """Asked by the watchdog thread, once a heartbeat, on its own connection."""

    def __init__(self, settings: Settings, health: Callable[[], Health]) -> None:
        self.settings = settings
        self.health = health

    def failing_for(self) -> float | None:
        """Seconds this replica's broker has failed, or None while it works."""
        since = self.health().failing_since
        return None if since is None else clock.now() - since

    def working_peer(self, conn: Connection) -> str | None:
        """Another live replica whose broker works, when this one's has failed for longer than
        the setting (0: never); else None. Reads the database only in that case."""
        settings = self.settings
        failing_for = self.failing_for()
        after = settings.broker_handover_after
        if not after or failing_for is None or failing_for < after:
            return None
        with conn.begin():
            return store.diagnostics.working_broker_peer(
                conn,
                settings.group,
                settings.replica_name,
                seen_within=3 * settings.heartbeat_interval,
                checked_within=2 * brokerhealth.PROBE_EVERY + settings.heartbeat_interval,
            )

    def should_hand_over(self, conn: Connection, epoch: int | None) -> bool:
        """A leader's question, each heartbeat: True (logged once, as it is acted on) when its
        broker has failed for long while another replica's works."""
        peer = self.working_peer(conn)
        if peer is None:
            return False
        logger.warning(
            "watchdog: the broker has failed here for %.0fs while replica %s reports a working "
            "one; handing the lease over (replica %s, epoch %s)",
            self.failing_for() or 0.0,
            peer,
            self.settings.replica_name,
            epoch,
            extra={"action": "hand_over", "epoch": epoch, "peer": peer},
        )
        return True

    def stands_aside(self, conn: Connection) -> str | None:
        """A standby's question: the replica whose broker works while this one's fails, which
        it must not take the lease from (this is what keeps a replica that handed over from
        winning it straight back); None when it may stand as usual."""
        return self.working_peer(conn)
