"""What the publisher did, until a transaction records it; and giving an epoch up.

Outcomes (ticks sent, ticks failed for good, schedules that publish again) are taken from the
publisher and kept until a committed transaction has recorded them: a mark lost to a database
error would make a later leader re-send the tick. The dispatch loop records them inside its
next claim transaction when it is busy, on their own when it is not.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from pg_beat import store
from pg_beat.config import Settings
from pg_beat.dispatch.keeper import ConnectionKeeper
from pg_beat.leadership.lease import LeaderState
from pg_beat.publish.publisher import Publisher
from pg_beat.publish.ticks import Outcomes

logger = logging.getLogger("pg_beat.dispatch")

FLUSH_WAIT = 2.0  # seconds: how long shutdown waits for a send in progress


class Recorder:
    """Outcomes not yet recorded, and the epoch this replica last claimed under."""

    def __init__(
        self,
        settings: Settings,
        state: LeaderState,
        publisher: Publisher,
        keeper: ConnectionKeeper,
    ) -> None:
        self.settings = settings
        self.state = state
        self.publisher = publisher
        self.keeper = keeper
        self.pending = Outcomes()
        self.led_epoch: int | None = None  # the last epoch we claimed under, until disowned

    def collect(self) -> bool:
        """Take the publisher's outcomes; True when some await recording."""
        self.pending.extend(self.publisher.take_outcomes())
        return bool(self.pending)

    def write(self, conn: Connection) -> None:
        """Record the pending outcomes in the caller's transaction; call :meth:`committed`
        once it has committed."""
        store.runs.mark_sent(conn, self.pending.sent)
        store.runs.mark_failed(conn, self.pending.failed)
        store.runs.clear_errors(conn, self.pending.recovered)

    def committed(self) -> None:
        self.pending = Outcomes()

    def record(self) -> None:
        """Record what the publisher did, in a transaction of its own."""
        if self.collect():
            with self.keeper.transaction() as conn:
                self.write(conn)
            self.committed()

    def lead(self, epoch: int) -> bool:
        """Claiming under ``epoch`` now; True when it is a new one (an earlier epoch of ours,
        lost and won again between two steps, is given up first)."""
        if self.led_epoch == epoch:
            return False
        self.disown()
        self.led_epoch = epoch
        return True

    def disown(self) -> None:
        """Once we have stepped down from the epoch we last led and nothing of it is being
        sent, say so in the database (with what was sent, in one transaction), so the next
        leader re-publishes its unsent claims now, not when its lease would expire. Never
        merely past the local deadline: a renewal may still bring that epoch back."""
        epoch = self.led_epoch
        if epoch is None or self.state.holds(epoch) or self.publisher.backlog:
            return
        self.collect()
        with self.keeper.transaction() as conn:
            self.write(conn)
            store.lease.disown(conn, self.settings.group, epoch, self.settings.replica_name)
        self.committed()
        self.led_epoch = None
        logger.info(
            "dispatch: gave up epoch %s; its unsent claims are the next leader's to send "
            "(replica %s)",
            epoch,
            self.settings.replica_name,
            extra={"action": "disowned", "epoch": epoch, "replica": self.settings.replica_name},
        )

    def flush(self, connector: store.connections.Connector) -> None:
        """At shutdown, before the lease is released: record what was sent, on a connection
        of its own (this may run in a signal handler, mid-transaction on the usual one). The
        lease is already stepped down, so the publisher drops its queue and ends its send."""
        self.publisher.wait_below(1, FLUSH_WAIT)
        if not self.collect():
            return
        engine = connector.engine("shutdown", dispatch=True)
        try:
            with engine.begin() as conn:
                self.write(conn)
            self.committed()
        except DBAPIError as exc:
            logger.warning(
                "dispatch: could not record %d sent tick(s) at shutdown: %s",
                len(self.pending.sent),
                store.connections.first_line(exc),
            )
        finally:
            engine.dispose()
