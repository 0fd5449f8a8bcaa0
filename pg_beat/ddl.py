"""Online schema changes: the steps pg_beat's migrations (``migrations/versions``) are made of.

Migrations run under running replicas, on populated tables. Every step here:

- runs in a transaction of its own (Alembic's autocommit block), so no lock outlives its
  statement and the migration holds no snapshot between steps;
- waits at most :data:`LOCK_TIMEOUT` for a table lock, and tries again: every session that
  wants a conflicting lock queues behind a waiting lock request, so none may wait long;
- can run again: an interrupted migration is finished by running it again.

An index is built ``CONCURRENTLY`` by :func:`create_index`, which returns only once the index
is valid (or raises :class:`~pg_beat.exceptions.MigrationFailed`): a ``CREATE INDEX
CONCURRENTLY`` that fails after its catalog entry was made leaves an INVALID index, which
``IF NOT EXISTS`` would then take for done.

From revision 0003 on, each revision records the oldest pg_beat code revision that may run
against it (:func:`record_compat`), so that a replica of an earlier release can tell whether
it may run against a schema it does not know (see :mod:`pg_beat.compat`).
"""

from __future__ import annotations

import logging
import time
from enum import Enum

import sqlalchemy as sa
from alembic import op

from pg_beat.exceptions import MigrationFailed
from pg_beat.store import revisions
from pg_beat.store.connections import first_line, sqlstate

logger = logging.getLogger("pg_beat.migrate")

#: Seconds a statement waits for a lock before it gives up and tries again.
LOCK_TIMEOUT = 0.5
#: Seconds :func:`execute` keeps trying a statement that times out on its lock.
STATEMENT_DEADLINE = 60.0
#: Seconds :func:`create_index` keeps starting new attempts at building an index.
INDEX_DEADLINE = 600.0
#: The longest lock wait of one attempt at ``CREATE INDEX CONCURRENTLY`` (seconds).
INDEX_LOCK_TIMEOUT_CAP = 30.0
#: lock_not_available (lock_timeout), deadlock_detected: contention, worth another try.
RETRYABLE = frozenset({"55P03", "40P01"})

# The sessions of this database in the oldest transactions that hold a snapshot: what a
# concurrent index build waits for, named in the error when it gave up.
_OLDEST_TRANSACTIONS = sa.text(
    "SELECT pid, coalesce(nullif(application_name, ''), usename::text, '?') AS who, state, "
    "extract(epoch FROM clock_timestamp() - xact_start) AS seconds FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_xmin IS NOT NULL "
    "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL "
    "ORDER BY xact_start LIMIT 3"
)
_INDEX_STATE = sa.text(
    "SELECT i.indisvalid AND i.indisready AND i.indislive FROM pg_index i "
    "WHERE i.indexrelid = to_regclass(:name)"
)


class IndexState(Enum):
    """Where an index stands: absent, there but not usable (a failed concurrent build), valid."""

    MISSING = "missing"
    INVALID = "invalid"
    VALID = "valid"


def execute(statement: str, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
    """Run one DDL statement in a transaction of its own, waiting at most ``lock_timeout`` s
    for its lock and trying again until :data:`STATEMENT_DEADLINE`."""
    deadline = time.monotonic() + STATEMENT_DEADLINE
    while True:
        try:
            with op.get_context().autocommit_block():
                _set_lock_timeout(lock_timeout)
                op.execute(statement)
            return
        except sa.exc.DBAPIError as exc:
            if sqlstate(exc) not in RETRYABLE or time.monotonic() > deadline:
                raise
            time.sleep(LOCK_TIMEOUT)


def index_state(name: str) -> IndexState:
    """The state of index ``name`` (looked up through the search path, as the migration's
    statements are)."""
    valid = op.get_bind().execute(_INDEX_STATE, {"name": name}).scalar()
    if valid is None:
        return IndexState.MISSING
    return IndexState.VALID if valid else IndexState.INVALID


def create_index(name: str, definition: str) -> None:
    """``CREATE INDEX CONCURRENTLY name definition`` (``definition``: ``ON table (...) ...``),
    until the index is valid.

    An invalid index (left by an earlier attempt, or by an interrupted run) is dropped and
    built again. A concurrent build waits for every transaction whose snapshot is older than
    its own, e.g. standbys blocked in ``pg_advisory_lock``; an attempt that times out on such
    a wait is retried with twice the lock timeout (up to :data:`INDEX_LOCK_TIMEOUT_CAP`). A
    long timeout is safe here, unlike for other DDL: the build holds only a SHARE UPDATE
    EXCLUSIVE lock on the table, which no replica statement conflicts with, so nobody queues
    behind its waits. After :data:`INDEX_DEADLINE` s, raise
    :class:`~pg_beat.exceptions.MigrationFailed` naming the oldest transactions.
    """
    started = time.monotonic()
    timeout, attempts, last = LOCK_TIMEOUT, 0, ""
    while True:
        with op.get_context().autocommit_block():
            state = index_state(name)
            if state is IndexState.VALID:
                _set_lock_timeout(LOCK_TIMEOUT)  # what the next steps expect
                return
        if attempts and time.monotonic() - started > INDEX_DEADLINE:
            _give_up(name, time.monotonic() - started, attempts, last)
        attempts += 1
        try:
            if state is IndexState.INVALID:
                logger.warning("pg_beat migration: index %s is invalid: dropping it", name)
                drop_index(name)
            with op.get_context().autocommit_block():
                _set_lock_timeout(timeout)
                op.execute(f"CREATE INDEX CONCURRENTLY {name} {definition}")
        except sa.exc.DBAPIError as exc:
            if sqlstate(exc) not in RETRYABLE:
                raise
            last = first_line(exc)
            logger.warning(
                "pg_beat migration: building index %s concurrently: %s (attempt %d, lock "
                "timeout %.1f s); trying again",
                name,
                last,
                attempts,
                timeout,
            )
            timeout = min(timeout * 2, INDEX_LOCK_TIMEOUT_CAP)
            time.sleep(LOCK_TIMEOUT)


def drop_index(name: str) -> None:
    """``DROP INDEX CONCURRENTLY IF EXISTS name``: the table stays writable meanwhile."""
    execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def record_compat(revision: str, oldest_code_revision: str) -> None:
    """Record that pg_beat code at ``oldest_code_revision`` or later may run against the schema
    at ``revision``; every revision from 0003 on calls this in its upgrade.

    Runs in the migration's transaction, the one that also moves the version table to
    ``revision``: a replica never sees the new revision without its record.
    """
    op.execute(revisions.RECORD_COMPAT.bindparams(revision=revision, oldest=oldest_code_revision))


def forget_compat(revision: str) -> None:
    """Remove what :func:`record_compat` recorded for ``revision``; every revision from 0003
    on calls this in its downgrade."""
    op.execute(revisions.FORGET_COMPAT.bindparams(revision=revision))


def _set_lock_timeout(seconds: float) -> None:
    op.execute(f"SET lock_timeout = '{max(1, round(seconds * 1000))}ms'")


def _give_up(name: str, elapsed: float, attempts: int, last: str) -> None:
    with op.get_context().autocommit_block():
        oldest = op.get_bind().execute(_OLDEST_TRANSACTIONS).mappings().all()
    waiting_for = ", ".join(
        f"pid {r['pid']} ({r['who']}, {r['state']}, in a transaction for {r['seconds']:.0f} s)"
        for r in oldest
    )
    try:  # An invalid index slows every write and serves no read: leave none if we can.
        with op.get_context().autocommit_block():
            _set_lock_timeout(LOCK_TIMEOUT)
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    except sa.exc.DBAPIError:
        pass  # the next run drops it first
    raise MigrationFailed(
        f"index {name} is still not valid after {elapsed:.0f} s ({attempts} attempts at "
        f"CREATE INDEX CONCURRENTLY; last: {last or 'no error'}); it waits for older "
        f"transactions to end: {waiting_for or 'none now'}. This revision was not recorded: "
        "run 'pg-beat db upgrade' again once they have ended"
    )
