"""Bounded reading: :class:`SectionReader` reads each section of a report in a short
transaction of its own, bounded by ``SET LOCAL lock_timeout`` and ``statement_timeout``, so a
migration's ACCESS EXCLUSIVE lock or a forgotten ``FOR UPDATE`` costs one section, never the
whole report; it remembers what it could not read, and why."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from pg_beat import store
from pg_beat.status.locks import SECTION_TABLES, is_table_lock
from pg_beat.status.rows import Row

__all__ = ["GATHER_BUDGET", "MIN_SECTION_TIMEOUT", "SECTION_TIMEOUT", "SectionReader"]


#: Seconds one section may wait for a lock (or run); past it the section is "could not read".
SECTION_TIMEOUT = 1.0
#: Seconds all sections of one report may take together; past it, and for a section whose
#: table pg_locks already shows ACCESS EXCLUSIVE locked, a section waits MIN_SECTION_TIMEOUT.
#: A report during a lock on every table thus takes well under a second.
GATHER_BUDGET = 3.0
MIN_SECTION_TIMEOUT = 0.1

T = TypeVar("T")


class SectionReader:
    """Reads each section of a report in a transaction of its own, bounded by ``SET LOCAL``
    ``lock_timeout`` and ``statement_timeout``, and remembers what it could not read and why.

    ``SET LOCAL`` needs a transaction block, so ``conn`` is taken out of autocommit (an
    autocommit connection's autobegun transaction holds nothing and is ended first).
    """

    def __init__(
        self, conn: Connection, *, timeout: float = SECTION_TIMEOUT, budget: float = GATHER_BUDGET
    ) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            if conn.in_transaction():
                conn.commit()
            conn.execution_options(isolation_level="READ COMMITTED")
        self.conn = conn
        self.timeout = timeout
        self.deadline = time.monotonic() + budget
        self.unreadable: dict[str, str] = {}
        #: Tables known to be locked against reads: a section on one waits only briefly.
        self.locked: set[str] = set()

    def note_locks(self, locks: Sequence[Row]) -> None:
        """Remember the tables that ``locks`` show ACCESS EXCLUSIVE locked, held or queued."""
        self.locked.update(
            str(row["relname"])
            for row in locks
            if is_table_lock(row) and row.get("mode") == "AccessExclusiveLock"
        )

    def read(
        self, section: str, fetch: Callable[[Connection], T], table: str | None = None
    ) -> T | None:
        """``fetch(conn)`` in a bounded transaction; None (and ``section`` noted as unreadable)
        when it timed out or failed. A lost connection is raised."""
        limit = max(MIN_SECTION_TIMEOUT, min(self.timeout, self.deadline - time.monotonic()))
        if table in self.locked:
            limit = MIN_SECTION_TIMEOUT
        try:
            with self.conn.begin():
                # The lock wait gives up first, so that a lock is reported as the cause.
                store.diagnostics.set_local_timeouts(self.conn, limit, limit + 0.25)
                return fetch(self.conn)
        except DBAPIError as exc:
            if store.connections.connection_lost(exc):
                raise
            if table is not None and store.connections.sqlstate(exc) == "55P03":
                self.locked.add(table)
            self.unreadable[section] = _reason(exc, limit)
            return None

    def read_table(self, section: str, fetch: Callable[[Connection], T]) -> T | None:
        """:meth:`read` of a section that reads its pg_beat table (:data:`SECTION_TABLES`)."""
        return self.read(section, fetch, SECTION_TABLES[section])


def _reason(exc: DBAPIError, limit: float) -> str:
    sqlstate = store.connections.sqlstate(exc)
    if sqlstate == "55P03":
        return f"lock timeout after {limit:.1f}s"
    if sqlstate == "57014":
        return f"statement timeout after {limit:.1f}s"
    return store.connections.first_line(exc)
