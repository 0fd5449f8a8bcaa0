"""The dispatch loop's database errors: what each means, how long to wait, and the log lines it
owes (one per kind of trouble, one when the database works again). A deadlock or a lock or
statement timeout is contention: the transaction rolled back, try again at once. A kept
session found closed is replaced at once. Anything else (unreachable, read-only after a
failover of PostgreSQL) means waiting on a new session."""

from __future__ import annotations

import enum
import logging

from sqlalchemy.exc import DBAPIError

from pg_beat import store
from pg_beat.dispatch.keeper import ConnectionKeeper

logger = logging.getLogger("pg_beat.dispatch")

CONTENTION_RETRY = 0.05  # seconds before the next step after a contended transaction


class DbTrouble(enum.Enum):
    """What a database error of the loop means: retry at once, or wait for the server."""

    CONTENDED = "contended"  # a deadlock, lock or statement timeout: the server answered
    DOWN = "down"  # unreachable, or read-only after a failover of PostgreSQL


class DbErrors:
    """One per dispatcher, called from the loop's thread."""

    def __init__(self, replica: str, keeper: ConnectionKeeper) -> None:
        self.replica = replica
        self.keeper = keeper
        #: The trouble of the current streak: (kind, sqlstate); None while the database works.
        self._state: tuple[DbTrouble, str | None] | None = None

    @property
    def failing(self) -> bool:
        return self._state is not None

    def worked(self, epoch: int | None) -> None:
        """A step went through: the end of any streak (logged when the database was down)."""
        if self._state is not None and self._state[0] is DbTrouble.DOWN:
            logger.info(
                "dispatch: database reachable again (epoch %s)",
                epoch,
                extra={"action": "db_recovered", "epoch": epoch},
            )
        self._state = None

    def failed(self, exc: BaseException, epoch: int | None, down_wait: float) -> float:
        """Log a database error once per kind; how long to wait before the next step
        (``down_wait`` when the database is down)."""
        sqlstate = store.connections.sqlstate(exc)
        if sqlstate in store.connections.TRANSIENT_SQLSTATES:
            self._say((DbTrouble.CONTENDED, sqlstate), logging.WARNING, "retrying", exc, epoch)
            return CONTENTION_RETRY
        lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
        if lost and self.keeper.reused and self._state is None:
            # The kept session was found closed (terminated while we stood by): a new one at
            # once rather than a back-off; if the server is really gone, that one fails too.
            logger.info(
                "dispatch: the kept-open database connection was closed (%s); reconnecting "
                "(replica %s, epoch %s)",
                store.connections.first_line(exc),
                self.replica,
                epoch,
                extra={"action": "reconnect", "epoch": epoch, "replica": self.replica},
            )
            self.keeper.drop()
            return 0.0
        # Unreachable, or read-only after a failover of PostgreSQL (25006): a new session.
        down = (DbTrouble.DOWN, None)
        self._say(down, logging.ERROR, "not dispatching until it recovers", exc, epoch)
        self.keeper.drop()
        self.keeper.close_listen()
        return down_wait

    def _say(
        self,
        state: tuple[DbTrouble, str | None],
        level: int,
        what: str,
        exc: BaseException,
        epoch: int | None,
    ) -> None:
        if self._state != state:
            logger.log(
                level,
                "dispatch: database error (sqlstate %s), %s (replica %s, epoch %s): %s",
                store.connections.sqlstate(exc),
                what,
                self.replica,
                epoch,
                store.connections.first_line(exc),
                extra={"action": "db_error", "epoch": epoch, "replica": self.replica},
            )
        self._state = state
