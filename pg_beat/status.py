"""Cluster status for ``pg-beat status`` and ``pg-beat check``: gather, judge, render.

:func:`gather` reads each section in a short transaction of its own, bounded by ``SET LOCAL
lock_timeout`` and ``statement_timeout``, so a migration's ACCESS EXCLUSIVE lock or a forgotten
``FOR UPDATE`` costs one section, never the whole report; what could not be read is said, with
the session that blocks it. The locks (``pg_locks``, which never waits on a table lock) are
read first. :func:`verdict`, :func:`find_blockers` and :func:`replica_role` are pure (rows and
the database clock in), so each judgement is tested with plain dicts; :func:`render` and
:func:`as_json` format the result. Ages are seconds on the database clock, never the caller's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from pg_beat import schedules, store
from pg_beat.api import spec_from_row
from pg_beat.exceptions import PgBeatError
from pg_beat.lease import LeaseStatus, LeaseView, lease_state

HEALTHY = "healthy"
NO_LEADER = "no leader"
LEADER_STALE = "leader stale"
BLOCKED = "blocked"
UNKNOWN = "unknown"  # the lease itself could not be read

#: Seconds without dispatch-loop progress after which a leader counts as stalled.
DEFAULT_MAX_STALL = 10.0
#: Seconds a transaction may hold locks on pg_beat's tables before status lists it.
DEFAULT_LONG_TRANSACTION = 5.0
#: Seconds one section may wait for a lock (or run); past it the section is "could not read".
SECTION_TIMEOUT = 1.0
#: Seconds all sections of one report may take together; past it, and for a section whose
#: table pg_locks already shows ACCESS EXCLUSIVE locked, a section waits MIN_SECTION_TIMEOUT.
#: A report during a lock on every table thus takes well under a second.
GATHER_BUDGET = 3.0
MIN_SECTION_TIMEOUT = 0.1
#: A replica without a session of its own (transaction pooling) not seen for this many
#: seconds is gone: it heartbeats every ``pg_beat_heartbeat_interval`` (1 s by default).
REPLICA_GONE_AFTER = 5.0
#: Other sessions' query text is cut to this many characters unless asked for in full.
QUERY_PREFIX = 40

GONE = "gone"

# Table lock modes, weakest first. From SHARE on, a mode conflicts with the row changes every
# pg_beat replica makes; ACCESS EXCLUSIVE also with plain reads (status's own sections).
LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
BLOCKS_WRITES = frozenset(LOCK_MODES[4:])
ROW_LOCKING = frozenset({"RowShareLock", "RowExclusiveLock"})  # FOR UPDATE/SHARE; UPDATE

#: The pg_beat table each section reads: a lock on it explains why the section is unreadable.
SECTION_TABLES = {
    "lease": "pg_beat_leases",
    "replicas": "pg_beat_replicas",
    "failovers": "pg_beat_leader_terms",
    "next_due": "pg_beat_schedules",
    "failing_schedules": "pg_beat_schedules",
}

Row = Mapping[Any, Any]  # a SQLAlchemy RowMapping, or a plain dict in tests
T = TypeVar("T")


@dataclass(frozen=True)
class Verdict:
    """``state`` is one of HEALTHY, NO_LEADER, LEADER_STALE, BLOCKED, UNKNOWN; ``message`` is
    one line."""

    state: str
    message: str

    @property
    def healthy(self) -> bool:
        return self.state == HEALTHY


@dataclass(frozen=True)
class Blocker:
    """A session that keeps pg_beat waiting, or will: ``lock`` is its strongest lock on
    pg_beat's tables or key (a :func:`store.lock_activity` row), ``blocks`` the waiting rows
    of the pg_beat sessions it holds up."""

    lock: Row
    why: str  # 'table lock', 'blocks', 'queued' or 'lease row'
    blocks: tuple[Row, ...] = ()

    @property
    def pid(self) -> int | None:
        pid: int | None = self.lock.get("pid")
        return pid


# --- pure judgement ----------------------------------------------------------------------------


def seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def progress_age(lease: Row | None, now: datetime) -> float | None:
    """Seconds since the leader's dispatch loop last made progress (None when unknown)."""
    if lease is None or lease.get("progress_at") is None or lease.get("holder") is None:
        return None
    return float((now - lease["progress_at"]).total_seconds())


def is_pg_beat(row: Row) -> bool:
    """The session is one of pg_beat's (every pg_beat connection is named ``pg_beat:...``)."""
    return str(row.get("application_name") or "").startswith("pg_beat:")


def _strength(row: Row) -> tuple[bool, bool, int]:
    mode = row.get("mode")
    rank = LOCK_MODES.index(mode) if mode in LOCK_MODES else -1
    return (bool(row.get("granted")), is_table_lock(row), rank)


def is_table_lock(row: Row) -> bool:
    """A lock on a whole pg_beat table (not a row's tuple lock, taken while waiting for it)."""
    return row.get("locktype") == "relation" and row.get("relname") is not None


def strongest_locks(locks: Sequence[Row]) -> dict[int | None, Row]:
    """Each session's most telling lock: held before awaited, a table's before the key's."""
    best: dict[int | None, Row] = {}
    for row in locks:
        pid = row.get("pid")
        if pid not in best or _strength(row) > _strength(best[pid]):
            best[pid] = row
    return best


def _pg_beat_waits(locks: Sequence[Row], best: Mapping[int | None, Row]) -> dict[int, list[Row]]:
    """Blocker pid -> the waiting lock rows of the pg_beat sessions it holds up. Standbys
    queued on the leadership key behind another pg_beat session are doing their job."""
    waiting = {row.get("pid") for row in locks if not row.get("granted")}
    waits: dict[int, list[Row]] = {}
    for row in locks:
        if row.get("granted") or not is_pg_beat(row):
            continue
        for pid in row.get("blocked_by") or ():
            holder = best.get(pid)
            if row.get("is_key") and (holder is None or is_pg_beat(holder)):
                continue
            # A pg_beat session that waits itself (first in line for a row) is not the cause:
            # whoever it waits for is.
            if holder is not None and is_pg_beat(holder) and pid in waiting:
                continue
            if pid != row.get("pid"):
                waits.setdefault(pid, []).append(row)
    return waits


def outside_key_holder(locks: Sequence[Row], view: LeaseView | None) -> Row | None:
    """The session holding the leadership key that is no pg_beat replica, when that keeps
    every replica from leading (the lease is not held)."""
    if view is not None and view.status in (LeaseStatus.HELD, LeaseStatus.HUNG):
        return None
    for row in locks:
        if row.get("is_key") and row.get("granted") and not is_pg_beat(row):
            return row
    return None


def find_blockers(locks: Sequence[Row], view: LeaseView | None) -> list[Blocker]:
    """Sessions that block pg_beat, the most harmful first: a lock on a pg_beat table that
    stops its writes, then whoever pg_beat sessions wait for, then a queued request for such
    a lock (everything after it queues too), then, while the lease is not held, a session
    other than pg_beat's that holds row locks on the lease table (it stops renewals and
    takeovers). The leadership key held by an outsider is :func:`outside_key_holder`'s."""
    best = strongest_locks(locks)
    waits = _pg_beat_waits(locks, best)
    found: dict[int | None, Blocker] = {}

    def add(row: Row, why: str) -> None:
        pid = row.get("pid")
        if pid not in found:
            found[pid] = Blocker(best.get(pid, row), why, tuple(waits.get(pid or -1, ())))

    for row in locks:
        if row.get("granted") and is_table_lock(row) and row.get("mode") in BLOCKS_WRITES:
            add(row, "table lock")
    for pid in sorted(waits, key=lambda p: -len(waits[p])):
        add(best.get(pid, {"pid": pid}), "blocks")
    for row in locks:
        if not row.get("granted") and is_table_lock(row) and row.get("mode") in BLOCKS_WRITES:
            add(row, "queued")
    if view is not None and view.status is not LeaseStatus.HELD:
        for row in locks:
            if (
                row.get("granted")
                and is_table_lock(row)
                and row.get("relname") == "pg_beat_leases"
                and row.get("mode") in ROW_LOCKING
                and not is_pg_beat(row)
            ):
                add(row, "lease row")
    return list(found.values())


def lock_target(row: Row) -> str:
    """What a lock row is on: ``pg_beat_schedules``, ``advisory key pg_beat:default``..."""
    if row.get("is_key"):
        return f"advisory key {row.get('lock_key')}"
    relname, locktype = row.get("relname"), row.get("locktype")
    if relname and locktype == "relation":
        return str(relname)
    if relname:
        return f"a row of {relname}"
    if locktype == "transactionid":
        return f"a row locked by transaction {row.get('xid')}"
    return str(locktype or "?")


def who(row: Row) -> str:
    """``pid 4242 (psql, user alice)``."""
    if row.get("pid") is None:
        return "a prepared transaction"
    app = row.get("application_name") or "?"
    return f"pid {row['pid']} ({app}, user {row.get('user_name') or '?'})"


def describe_lock(row: Row) -> str:
    """``pid 4242 (psql, user alice) holds AccessExclusiveLock on pg_beat_schedules for 12s``."""
    if row.get("mode") is None:
        return f"{who(row)} blocks"
    verb = "holds" if row.get("granted") else "waits for"
    text = f"{who(row)} {verb} {row['mode']} on {lock_target(row)} for {_age(row_age(row))}"
    behind = [pid for pid in row.get("blocked_by") or () if pid != row.get("pid")]
    if not row.get("granted") and behind:
        text += ", behind pid " + ", ".join(str(pid) for pid in behind)
    state = str(row.get("state") or "")
    if state.startswith("idle in transaction"):
        text += f" ({state})"
    return text


def row_age(row: Row) -> float | None:
    return seconds(row.get("age"))


def describe_blocker(blocker: Blocker) -> str:
    """The blocker's lock, then the first pg_beat session it holds up."""
    text = describe_lock(blocker.lock)
    if blocker.blocks:
        first = blocker.blocks[0]
        text += (
            f"; pg_beat waits behind it: pid {first.get('pid')} "
            f"({first.get('application_name') or '?'})"
        )
        if len(blocker.blocks) > 1:
            text += f" and {len(blocker.blocks) - 1} more"
    return text


def leader_verdict(
    lease: Row | None,
    now: datetime,
    *,
    locks: Sequence[Row] = (),
    leader_backends: Sequence[Row] = (),
    max_stall: float = DEFAULT_MAX_STALL,
    lease_unreadable: str | None = None,
) -> Verdict:
    """Judge the leader alone (``pg-beat check``) from a ``store.read_lease`` row at database
    time ``now``; ``lease_unreadable`` is why the lease could not be read, if it could not."""
    if lease_unreadable is not None:
        return Verdict(UNKNOWN, f"could not read the lease: {lease_unreadable}")
    view = lease_state(lease, now)
    if view.status is not LeaseStatus.HELD and view.status is not LeaseStatus.HUNG:
        outsider = outside_key_holder(locks, view)
        if outsider is not None:
            return Verdict(
                NO_LEADER,
                f"{NO_LEADER}: the leadership lock {outsider.get('lock_key')} is held by "
                f"{who(outsider)}, not a pg_beat replica, for {_age(row_age(outsider))}",
            )
        return Verdict(NO_LEADER, f"{NO_LEADER}: {_why_no_leader(view)}")
    stall = progress_age(lease, now)
    if view.status is LeaseStatus.HUNG or (stall is not None and stall > max_stall):
        return Verdict(LEADER_STALE, _stale_message(view, stall, leader_backends))
    return Verdict(
        HEALTHY,
        f"{HEALTHY}: leader {view.holder!r} (epoch {view.epoch}), heartbeat "
        f"{_age(view.heartbeat_age)} ago, lease expires in {_age(view.expires_in)}",
    )


def verdict(
    lease: Row | None,
    now: datetime,
    *,
    locks: Sequence[Row] = (),
    leader_backends: Sequence[Row] = (),
    blocked: Sequence[Row] = (),
    lock_waiters: Iterable[int] = (),
    max_stall: float = DEFAULT_MAX_STALL,
    lease_unreadable: str | None = None,
) -> Verdict:
    """The headline of ``pg-beat status``: who blocks pg_beat, if anybody does, then the
    leader's judgement (:func:`leader_verdict`).

    ``locks`` are ``store.lock_activity`` rows; ``leader_backends`` and ``blocked`` are
    ``store.backend_diagnostics`` rows (the leader's sessions; every blocked pg_beat session);
    ``lock_waiters`` are the pids queued on the advisory lock, standbys waiting for their
    turn, which is normal and not "blocked".
    """
    leader = leader_verdict(
        lease,
        now,
        locks=locks,
        leader_backends=leader_backends,
        max_stall=max_stall,
        lease_unreadable=lease_unreadable,
    )
    view = None if lease_unreadable is not None else lease_state(lease, now)
    if leader.state == NO_LEADER and outside_key_holder(locks, view) is not None:
        return leader
    blockers = find_blockers(locks, view)
    if blockers:
        more = f" ({len(blockers) - 1} more blocking)" if len(blockers) > 1 else ""
        return Verdict(
            BLOCKED, f"{BLOCKED}: {describe_blocker(blockers[0])}{more}; {_lease_clause(leader)}"
        )
    others = without_lock_waiters(blocked, lock_waiters)
    if leader.healthy and others:
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        return Verdict(BLOCKED, f"{BLOCKED}: pg_beat {describe_backend(others[0])}{more}")
    return leader


def _lease_clause(leader: Verdict) -> str:
    prefix = f"{HEALTHY}: "
    return leader.message[len(prefix) :] if leader.healthy else leader.message


def without_lock_waiters(blocked: Sequence[Row], lock_waiters: Iterable[int]) -> list[Row]:
    """Drop standbys queued on the leadership lock: waiting there is their job, not a block.

    A waiter is recognised by pid or by its wait event, since a standby may start waiting
    between the two queries that list waiters and blocked backends.
    """
    waiting = set(lock_waiters)
    return [
        row
        for row in blocked
        if row["pid"] not in waiting
        and not (row.get("wait_event_type") == "Lock" and row.get("wait_event") == "advisory")
    ]


def _why_no_leader(view: LeaseView) -> str:
    status = view.status
    if status is LeaseStatus.FREE:
        return "the lease was never taken (is any replica running?)"
    if status is LeaseStatus.RELEASED:
        return f"{view.holder!r} released the lease (epoch {view.epoch}) and nobody took it yet"
    if status is LeaseStatus.EXPIRED:
        return (
            f"{view.holder!r} (epoch {view.epoch}) did not renew its lease, which expired "
            f"{_age(view.expires_in)} ago; a standby takes it over at its next heartbeat"
        )
    return (
        f"the session of {view.holder!r} (epoch {view.epoch}, backend {view.backend_pid}) is "
        "gone (it no longer holds the leadership lock); a standby takes over as soon as one is "
        "running"
    )


def _stale_message(view: LeaseView, stall: float | None, backends: Sequence[Row]) -> str:
    if view.status is LeaseStatus.HUNG:
        what = (
            f"has not renewed its lease for {_age(view.heartbeat_age)} "
            f"(expired {_age(-(view.expires_in or 0.0))} ago)"
        )
    else:
        what = f"holds the lease but its dispatch loop made no progress for {_age(stall)}"
    head = f"{LEADER_STALE}: {view.holder!r} (epoch {view.epoch}) {what}"
    if not backends:
        return f"{head}; none of its backends is visible in pg_stat_activity"
    # The interesting backend is the one that waits (on a lock, on whom), else the lease's own.
    ranked = sorted(
        backends,
        key=lambda r: (
            not r.get("blocked_by"),
            r.get("wait_event_type") != "Lock",
            r["pid"] != view.backend_pid,
        ),
    )
    return f"{head}; its {describe_backend(ranked[0], hint_idle=True)}"


def describe_backend(row: Row, *, hint_idle: bool = False) -> str:
    """``backend 123 (pg_beat:a:dispatch) waits on Lock/transactionid, blocked by pid 9 (...)``."""
    text = f"backend {row['pid']} ({row.get('application_name') or '?'})"
    # An idle session "waits" on Client/ClientRead: that is its state, not a wait.
    if row.get("wait_event_type") and row["wait_event_type"] != "Client":
        text += f" waits on {row['wait_event_type']}/{row.get('wait_event')}"
        if row.get("query"):
            text += f" in {shorten(row['query'], 60)!r}"
    elif row.get("state") == "active":
        text += f" is running {shorten(row.get('query') or '', 60)!r}"
    else:
        text += f" is {row.get('state') or 'in an unknown state'}"
        if hint_idle and str(row.get("state")).startswith("idle"):
            text += " (the process is not talking to the database: paused, or stuck outside it)"
    blockers = row.get("blocked_by") or []
    if blockers:
        text += ", blocked by " + "; ".join(
            f"pid {b['pid']} ({b.get('application_name') or '?'}, {b.get('state')}, "
            f"for {_age(seconds(b.get('age')))})"
            for b in blockers
        )
    return text


def replica_gone(row: Row, now: datetime, gone_after: float = REPLICA_GONE_AFTER) -> bool:
    """The replica's session is no longer connected, or (transaction pooling: no session of
    its own) it has not heartbeaten for ``gone_after`` seconds of the database clock."""
    if row.get("backend_pid") is not None:
        return not row.get("backend_alive")
    seen: datetime | None = row.get("last_seen_at")
    return seen is None or (now - seen).total_seconds() > gone_after


def replica_role(
    row: Row, view: LeaseView | None, now: datetime, gone_after: float = REPLICA_GONE_AFTER
) -> str:
    """What a replica is, whatever its row says: ``gone``; ``leader`` only for the holder of
    a held lease (so at most one); ``hung`` for the holder of a hung one; else ``standby``
    (``unknown`` for a self-declared leader when the lease could not be read)."""
    if replica_gone(row, now, gone_after):
        return GONE
    if view is None:
        return "unknown" if row.get("role") == "leader" else str(row.get("role"))
    if row.get("name") == view.holder:
        if view.status is LeaseStatus.HELD:
            return "leader"
        if view.status is LeaseStatus.HUNG:
            return "hung"
    return "standby"


def explain_unreadable(unreadable: Mapping[str, str], locks: Sequence[Row]) -> dict[str, str]:
    """Each unreadable section's reason, naming the session whose lock on its table (ACCESS
    EXCLUSIVE, held or queued: the only mode a read waits for) kept it out."""
    out = {}
    for section, reason in unreadable.items():
        table = SECTION_TABLES.get(section)
        holders = [
            row
            for row in locks
            if table
            and is_table_lock(row)
            and row.get("relname") == table
            and row.get("mode") == "AccessExclusiveLock"
        ]
        holders.sort(key=lambda row: not row.get("granted"))
        out[section] = f"{reason}: {describe_lock(holders[0])}" if holders else reason
    return out


# --- reading: one short transaction per section ------------------------------------------------


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
                store.set_local_timeouts(self.conn, limit, limit + 0.25)
                return fetch(self.conn)
        except DBAPIError as exc:
            if _connection_lost(exc):
                raise
            if table is not None and getattr(exc.orig, "sqlstate", None) == "55P03":
                self.locked.add(table)
            self.unreadable[section] = _reason(exc, limit)
            return None

    def read_table(self, section: str, fetch: Callable[[Connection], T]) -> T | None:
        """:meth:`read` of a section that reads its pg_beat table (:data:`SECTION_TABLES`)."""
        return self.read(section, fetch, SECTION_TABLES[section])


def _connection_lost(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return (
        exc.connection_invalidated
        or sqlstate is None
        or sqlstate.startswith("08")
        or sqlstate in ("57P01", "57P02", "57P03")
    )


def _reason(exc: DBAPIError, limit: float) -> str:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate == "55P03":
        return f"lock timeout after {limit:.1f}s"
    if sqlstate == "57014":
        return f"statement timeout after {limit:.1f}s"
    return (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]


def read_clock_and_locks(
    reader: SectionReader, group: str
) -> tuple[datetime, Sequence[Row] | None]:
    """The database clock and :func:`store.lock_activity`, read before anything else: neither
    waits for a lock on pg_beat's tables."""
    got = reader.read("locks", lambda c: (store.db_now(c), store.lock_activity(c, group)))
    if got is not None:
        reader.note_locks(got[1])
        return got
    now = reader.read("clock", store.db_now)
    if now is None:
        raise PgBeatError(f"could not read the database clock: {reader.unreadable['clock']}")
    return now, None


def cut_queries(rows: Sequence[Row] | None, show: bool) -> list[dict[str, Any]] | None:
    """Rows as dicts, other sessions' query text (and their blockers') cut to QUERY_PREFIX
    characters unless ``show``."""
    if rows is None:
        return None
    return [_cut_row(row, show) for row in rows]


def _cut_row(row: Row, show: bool) -> dict[str, Any]:
    out = {str(key): value for key, value in row.items()}
    if show:
        return out
    if out.get("query") is not None:
        out["query"] = shorten(out["query"], QUERY_PREFIX)
    blockers = out.get("blocked_by")
    if blockers and isinstance(blockers[0], Mapping):
        out["blocked_by"] = [_cut_row(b, show) for b in blockers]
    return out


@dataclass(frozen=True)
class ClusterStatus:
    """Everything ``pg-beat status`` shows, as read at database time ``now``; a section that
    could not be read is None, and named with the reason in ``unreadable``."""

    group: str
    now: datetime
    verdict: Verdict
    lease: Row | None
    locks: Sequence[Row] | None
    blockers: Sequence[Blocker]
    replicas: Sequence[Row] | None
    blocked: Sequence[Row] | None
    leader_backends: Sequence[Row] | None
    failovers: Sequence[Row] | None
    next_due: Sequence[Row] | None
    failing: Sequence[Row] | None
    failing_count: int | None
    long_transactions: Sequence[Row] | None
    max_stall: float = DEFAULT_MAX_STALL
    unreadable: Mapping[str, str] = field(default_factory=dict)
    show_queries: bool = False

    @property
    def lease_view(self) -> LeaseView | None:
        return None if "lease" in self.unreadable else lease_state(self.lease, self.now)


@dataclass(frozen=True)
class _Lease:
    """The lease section: the row, the clock to judge it by, why it is unreadable."""

    row: Row | None
    now: datetime
    unreadable: str | None

    @property
    def view(self) -> LeaseView | None:
        return None if self.unreadable is not None else lease_state(self.row, self.now)


def _read_lease(
    reader: SectionReader, group: str, now: datetime, max_stall: float
) -> tuple[_Lease, Sequence[Row] | None]:
    """The lease, and the leader's backends when it looks hung."""
    row = reader.read_table("lease", lambda c: store.read_lease(c, group))
    if "lease" in reader.unreadable:
        return _Lease(None, now, reader.unreadable["lease"]), []
    now = row["db_now"] if row is not None else now
    backends = reader.read(
        "leader_backends", lambda c: gather_leader_backends(c, row, now, max_stall)
    )
    return _Lease(row, now, None), backends


def gather(
    conn: Connection,
    group: str,
    *,
    max_stall: float = DEFAULT_MAX_STALL,
    next_limit: int = 5,
    failover_limit: int = 5,
    failing_limit: int = 10,
    long_transaction: float = DEFAULT_LONG_TRANSACTION,
    show_queries: bool = False,
    timeout: float = SECTION_TIMEOUT,
    budget: float = GATHER_BUDGET,
) -> ClusterStatus:
    """Read the cluster's state, the locks first, each section bounded by ``timeout`` seconds
    (all of them by about ``budget``); ``conn`` must not be inside a transaction."""
    reader = SectionReader(conn, timeout=timeout, budget=budget)
    now, raw_locks = read_clock_and_locks(reader, group)
    lease, backends = _read_lease(reader, group, now, max_stall)
    blocked = reader.read("blocked", lambda c: store.backend_diagnostics(c, blocked_pg_beat=True))
    replicas = reader.read_table("replicas", lambda c: store.list_replicas(c, group))
    failovers = reader.read_table(
        "failovers", lambda c: store.recent_terms(c, group, failover_limit)
    )
    next_due = reader.read_table("next_due", lambda c: store.due_schedules(c, group, next_limit))
    failing = reader.read_table(
        "failing_schedules", lambda c: store.schedule_failures(c, group, failing_limit)
    )
    long_transactions = reader.read(
        "long_transactions", lambda c: store.long_transactions(c, long_transaction)
    )
    unreadable = explain_unreadable(reader.unreadable, raw_locks or ())
    lease = _Lease(lease.row, lease.now, unreadable.get("lease"))
    locks = cut_queries(raw_locks, show_queries)
    waiters = [r["pid"] for r in locks or () if r.get("is_key") and not r.get("granted")]
    blocked_rows: Sequence[Row] | None = cut_queries(blocked, show_queries)
    if blocked_rows is not None:
        blocked_rows = without_lock_waiters(blocked_rows, waiters)
    leader_rows = cut_queries(backends, show_queries)
    return ClusterStatus(
        group=group,
        now=lease.now,
        verdict=verdict(
            lease.row,
            lease.now,
            locks=locks or (),
            leader_backends=leader_rows or (),
            blocked=blocked_rows or (),
            lock_waiters=waiters,
            max_stall=max_stall,
            lease_unreadable=lease.unreadable,
        ),
        lease=lease.row,
        locks=locks,
        blockers=find_blockers(locks or (), lease.view),
        replicas=replicas,
        blocked=blocked_rows,
        leader_backends=leader_rows,
        failovers=failovers,
        next_due=next_due,
        failing=None if failing is None else failing[1],
        failing_count=None if failing is None else failing[0],
        long_transactions=cut_queries(long_transactions, show_queries),
        max_stall=max_stall,
        unreadable=unreadable,
        show_queries=show_queries,
    )


def gather_leader_backends(
    conn: Connection, lease: Row | None, now: datetime, max_stall: float
) -> Sequence[Row]:
    """What the leader's sessions are doing, when it looks hung (else nothing)."""
    view = lease_state(lease, now)
    stall = progress_age(lease, now)
    hung = view.status is LeaseStatus.HUNG or (
        view.status is LeaseStatus.HELD and stall is not None and stall > max_stall
    )
    if not hung or view.holder is None:
        return []
    pids = set(store.replica_backend_pids(conn, view.holder))
    if view.backend_pid is not None:
        pids.add(view.backend_pid)
    return store.backend_diagnostics(conn, sorted(pids))


@dataclass(frozen=True)
class Health:
    """What ``pg-beat check`` says: the leader's verdict, and the line to print."""

    verdict: Verdict
    message: str
    lease: Row | None
    now: datetime
    unreadable: Mapping[str, str]

    @property
    def healthy(self) -> bool:
        return self.verdict.healthy


def check(
    conn: Connection,
    group: str,
    *,
    max_stall: float = DEFAULT_MAX_STALL,
    timeout: float = SECTION_TIMEOUT,
    budget: float = GATHER_BUDGET,
) -> Health:
    """Judge the leader alone, with the sections it needs (locks, lease, the leader's
    backends) bounded as in :func:`gather`. Unhealthy also when the lease cannot be read;
    an unhealthy line names what blocks pg_beat, when something does."""
    reader = SectionReader(conn, timeout=timeout, budget=budget)
    now, raw_locks = read_clock_and_locks(reader, group)
    lease, backends = _read_lease(reader, group, now, max_stall)
    unreadable = explain_unreadable(reader.unreadable, raw_locks or ())
    locks = cut_queries(raw_locks, False) or []
    leader = leader_verdict(
        lease.row,
        lease.now,
        locks=locks,
        leader_backends=cut_queries(backends, False) or (),
        max_stall=max_stall,
        lease_unreadable=unreadable.get("lease"),
    )
    message = leader.message if leader.healthy else f"unhealthy: {leader.message}"
    if not leader.healthy and leader.state != UNKNOWN:
        blockers = find_blockers(locks, lease.view)
        if blockers and outside_key_holder(locks, lease.view) is None:
            message += f"; blocked: {describe_blocker(blockers[0])}"
    return Health(leader, message, lease.row, lease.now, unreadable)


# --- JSON --------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Datetimes to ISO 8601, intervals to seconds, containers recursively."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any, *, compact: bool = False) -> str:
    """JSON text: indented, or on one line (``compact``, for a stream of documents)."""
    if compact:
        return json.dumps(jsonable(value), separators=(",", ":"))
    return json.dumps(jsonable(value), indent=2)


def _pick(row: Row, keys: Iterable[str]) -> dict[str, Any]:
    return {key: jsonable(row.get(key)) for key in keys}


def _each(rows: Sequence[Row] | None, convert: Callable[[Row], dict[str, Any]]) -> Any:
    return None if rows is None else [convert(row) for row in rows]


_BACKEND_KEYS = (
    "pid",
    "application_name",
    "state",
    "wait_event_type",
    "wait_event",
    "query",
    "query_age",
    "xact_age",
    "blocked_by",
)


def lease_dict(lease: Row | None, now: datetime) -> dict[str, Any]:
    view = lease_state(lease, now)
    row = lease or {}
    return {
        "status": view.status.value,
        "holder": view.holder,
        "epoch": view.epoch,
        "host": row.get("host"),
        "pid": row.get("pid"),
        "backend_pid": view.backend_pid,
        "backend_alive": row.get("backend_alive"),
        "acquired_at": jsonable(row.get("acquired_at")),
        "heartbeat_at": jsonable(row.get("heartbeat_at")),
        "heartbeat_age": view.heartbeat_age,
        "expires_at": jsonable(row.get("expires_at")),
        "expires_in": view.expires_in,
        "released_at": jsonable(row.get("released_at")),
        "progress_at": jsonable(row.get("progress_at")),
        "progress_age": progress_age(lease, now),
    }


def lock_dict(row: Row) -> dict[str, Any]:
    """A ``locks`` item: one lock on pg_beat's tables or key, held or awaited."""
    return _pick(
        row,
        ("pid", "application_name", "user_name", "state", "locktype", "mode", "granted", "query"),
    ) | {
        "target": lock_target(row),
        "age": seconds(row.get("age")),
        "xact_age": seconds(row.get("xact_age")),
        "blocked_by": list(row.get("blocked_by") or ()),
    }


def blocker_dict(blocker: Blocker) -> dict[str, Any]:
    return lock_dict(blocker.lock) | {
        "why": blocker.why,
        "blocks": [_pick(row, ("pid", "application_name")) for row in blocker.blocks],
        "description": describe_blocker(blocker),
    }


def replica_dict(row: Row, view: LeaseView | None, now: datetime) -> dict[str, Any]:
    return _pick(
        row, ("name", "host", "pid", "version", "backend_pid", "backend_alive", "started_at")
    ) | {
        "role": replica_role(row, view, now),
        "reported_role": row.get("role"),
        "last_seen_at": jsonable(row.get("last_seen_at")),
        "last_seen_age": seconds(row.get("last_seen_age")),
    }


def advisory_dict(row: Row) -> dict[str, Any]:
    """A ``lock`` item: a holder or waiter of the leadership key."""
    return _pick(
        row,
        ("pid", "application_name", "user_name", "state", "client_addr", "backend_start", "query"),
    ) | {"role": "holder" if row["granted"] else "waiter", "state_age": seconds(row["state_age"])}


def _key_rows(locks: Sequence[Row] | None) -> list[Row] | None:
    return None if locks is None else [row for row in locks if row.get("is_key")]


def failing_dict(row: Row) -> dict[str, Any]:
    return _pick(row, ("name", "task", "enabled", "parked", "last_error", "last_run_at")) | {
        "next_run_at": jsonable(row.get("next_run_at")),
    }


def due_dict(row: Row) -> dict[str, Any]:
    return {
        "name": row["name"],
        "task": row["task"],
        "schedule": schedules.describe(spec_from_row(row)),
        "next_run_at": jsonable(row["next_run_at"]),
        "due_in": seconds(row["due_in"]),
    }


def as_json(status: ClusterStatus) -> dict[str, Any]:
    """The documented ``pg-beat status --json`` object; an unreadable section is null."""
    view, now = status.lease_view, status.now
    return {
        "group": status.group,
        "db_now": now.isoformat(),
        "verdict": {"state": status.verdict.state, "message": status.verdict.message},
        "unreadable": [{"section": k, "reason": v} for k, v in status.unreadable.items()],
        "blockers": [blocker_dict(b) for b in status.blockers],
        "lease": None if view is None else lease_dict(status.lease, now),
        "replicas": _each(status.replicas, lambda r: replica_dict(r, view, now)),
        "lock": _each(_key_rows(status.locks), advisory_dict),
        "locks": _each(status.locks, lock_dict),
        "blocked": _each(status.blocked, lambda r: _pick(r, _BACKEND_KEYS)),
        "leader_backends": _each(status.leader_backends, lambda r: _pick(r, _BACKEND_KEYS)),
        "failovers": _each(
            status.failovers,
            lambda r: (
                _pick(r, ("epoch", "holder", "host", "pid", "acquired_at", "ended_at", "reason"))
                | {"previous_holder": r["previous_holder"]}
            ),
        ),
        "next_due": _each(status.next_due, due_dict),
        "failing_schedules": _each(status.failing, failing_dict),
        "failing_count": status.failing_count,
        "long_transactions": _each(
            status.long_transactions,
            lambda r: _pick(r, ("pid", "application_name", "state", "query", "xact_age", "tables")),
        ),
    }


def check_json(health: Health) -> dict[str, Any]:
    """The documented ``pg-beat check --json`` object."""
    lease = None if "lease" in health.unreadable else lease_dict(health.lease, health.now)
    return {
        "healthy": health.healthy,
        "state": health.verdict.state,
        "message": health.message,
        "lease": lease,
        "unreadable": [{"section": k, "reason": v} for k, v in health.unreadable.items()],
    }


# --- text --------------------------------------------------------------------------------------


def _age(value: float | None) -> str:
    if value is None:
        return "?"
    value = abs(value)
    if value < 10:
        return f"{value:.1f}s"
    whole = int(value)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


def ago(value: float | None) -> str:
    """``'12s ago'`` for an age in seconds; ``'-'`` when unknown."""
    return "-" if value is None else f"{_age(value)} ago"


def relative(value: float | None) -> str:
    """``'in 12s'`` / ``'12s ago'`` for seconds until a time (negative: past)."""
    if value is None:
        return "-"
    return f"in {_age(value)}" if value >= 0 else f"{_age(value)} ago"


def utc(value: datetime | None) -> str:
    """``2026-12-01 09:00:00Z`` (milliseconds when there are any)."""
    if value is None:
        return "-"
    value = value.astimezone(timezone.utc)
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"


def shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "") -> str:
    """Aligned plain-text columns; numbers right-aligned, None shown as '-'."""
    raw = [list(row) for row in rows]
    cells = [["-" if v is None else " ".join(str(v).split()) for v in row] for row in raw]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [
        any(isinstance(row[i], (int, float)) for row in raw)
        and all(isinstance(row[i], (int, float)) or row[i] is None for row in raw)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str], is_header: bool) -> str:
        parts = [
            v.rjust(w) if numeric[i] and not is_header else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(headers, True), *(line(row, False) for row in cells)])


def _section(
    title: str,
    headers: Sequence[str],
    rows: list[list[Any]] | None,
    empty: str,
    unreadable: str | None = None,
) -> str:
    if unreadable is not None:
        return f"{title}\n  (could not read: {unreadable})"
    if not rows:
        return f"{title}\n  {empty}"
    return f"{title}\n{render_table(headers, rows, indent='  ')}"


def _backend_rows(rows: Sequence[Row]) -> list[list[Any]]:
    out = []
    for r in rows:
        wait = f"{r['wait_event_type']}/{r['wait_event']}" if r.get("wait_event_type") else "-"
        blockers = ", ".join(
            f"{b['pid']} ({b.get('application_name') or '?'}, {b.get('state')})"
            for b in r.get("blocked_by") or []
        )
        out.append(
            [
                r["pid"],
                r.get("application_name") or "",
                r.get("state"),
                wait,
                blockers or "-",
                _age(seconds(r.get("query_age"))),
                r.get("query") or "",
            ]
        )
    return out


_BACKEND_HEADERS = ("PID", "APPLICATION", "STATE", "WAITING ON", "BLOCKED BY", "AGE", "QUERY")


def _lease_section(status: ClusterStatus) -> str:
    lease, view = status.lease, status.lease_view
    rows: list[list[Any]] = []
    if lease is not None and view is not None and view.holder is not None:
        rows.append(
            [
                view.holder,
                lease.get("host"),
                lease.get("pid"),
                view.epoch,
                view.status.value,
                view.backend_pid,
                ago(view.heartbeat_age),
                relative(view.expires_in),
                ago(progress_age(lease, status.now)),
            ]
        )
    headers = ("HOLDER", "HOST", "PID", "EPOCH", "STATUS", "BACKEND", "HEARTBEAT", "EXPIRES")
    return _section(
        "Lease",
        (*headers, "LOOP PROGRESS"),
        rows,
        f"free (epoch {view.epoch if view else '?'})",
        status.unreadable.get("lease"),
    )


def _blockers_section(status: ClusterStatus) -> str:
    rows = [
        [
            b.pid,
            b.lock.get("application_name"),
            b.lock.get("user_name"),
            ("holds " if b.lock.get("granted") else "waits for ") + str(b.lock.get("mode")),
            lock_target(b.lock),
            _age(row_age(b.lock)),
            b.lock.get("state"),
            ", ".join(str(w.get("pid")) for w in b.blocks) or "-",
            b.lock.get("query") or "",
        ]
        for b in status.blockers
    ]
    headers = ("PID", "APPLICATION", "USER", "LOCK", "ON", "FOR", "STATE", "BLOCKS", "QUERY")
    return _section("Blocking pg_beat", headers, rows, "")


def _replica_rows(status: ClusterStatus) -> list[list[Any]] | None:
    if status.replicas is None:
        return None
    rows = []
    for r in status.replicas:
        role = replica_role(r, status.lease_view, status.now)
        shown = role if role == r.get("role") else f"{role} (reports {r.get('role')})"
        rows.append(
            [
                r["name"],
                shown,
                r["host"],
                r["pid"],
                r["version"],
                r.get("backend_pid"),
                ago(seconds(r["last_seen_age"])),
            ]
        )
    return rows


def _advisory_rows(locks: Sequence[Row] | None) -> list[list[Any]] | None:
    keys = _key_rows(locks)
    if keys is None:
        return None
    return [
        [
            "holder" if r["granted"] else "waiter",
            r["pid"],
            r.get("application_name"),
            r.get("user_name"),
            r.get("state"),
            _age(seconds(r.get("state_age"))),
            r.get("client_addr"),
        ]
        for r in keys
    ]


def _failing_section(status: ClusterStatus) -> str:
    count = status.failing_count
    rows = None
    if status.failing is not None:
        rows = [
            [
                r["name"],
                "parked" if r["parked"] else "running" if r["enabled"] else "disabled",
                relative(seconds(r.get("due_in"))),
                shorten(r["last_error"] or "", 60),
            ]
            for r in status.failing
        ]
    text = _section(
        f"Failing schedules ({'?' if count is None else count})",
        ("NAME", "STATE", "NEXT DUE", "LAST ERROR"),
        rows,
        "none",
        status.unreadable.get("failing_schedules"),
    )
    if rows is not None and count is not None and count > len(rows):
        text += f"\n  ... and {count - len(rows)} more (pg-beat schedules list)"
    return text


def _history_sections(status: ClusterStatus) -> list[str]:
    failovers = _section(
        "Recent terms (failovers)",
        ("EPOCH", "HOLDER", "HOST", "PID", "ACQUIRED", "ENDED", "REASON", "PREVIOUS"),
        None
        if status.failovers is None
        else [
            [
                r["epoch"],
                r["holder"],
                r["host"],
                r["pid"],
                utc(r["acquired_at"]),
                utc(r["ended_at"]),
                r["reason"],
                r["previous_holder"],
            ]
            for r in status.failovers
        ],
        "none",
        status.unreadable.get("failovers"),
    )
    next_due = _section(
        "Next due",
        ("NAME", "TASK", "SCHEDULE", "DUE"),
        None
        if status.next_due is None
        else [
            [
                r["name"],
                r["task"],
                schedules.describe(spec_from_row(r)),
                relative(seconds(r["due_in"])),
            ]
            for r in status.next_due
        ],
        "nothing planned",
        status.unreadable.get("next_due"),
    )
    return [failovers, _failing_section(status), next_due]


def _session_sections(status: ClusterStatus) -> list[str]:
    out = []
    if status.leader_backends:
        out.append(
            _section(
                "Leader's backends", _BACKEND_HEADERS, _backend_rows(status.leader_backends), ""
            )
        )
    out.append(
        _section(
            "Replicas",
            ("NAME", "ROLE", "HOST", "PID", "VERSION", "BACKEND", "LAST SEEN"),
            _replica_rows(status),
            "none registered",
            status.unreadable.get("replicas"),
        )
    )
    out.append(
        _section(
            "Advisory lock",
            ("ROLE", "PID", "APPLICATION", "USER", "STATE", "FOR", "CLIENT"),
            _advisory_rows(status.locks),
            "not held",
            status.unreadable.get("locks"),
        )
    )
    out.append(
        _section(
            "Blocked pg_beat backends",
            _BACKEND_HEADERS,
            None if status.blocked is None else _backend_rows(status.blocked),
            "none",
            status.unreadable.get("blocked"),
        )
    )
    if status.long_transactions or "long_transactions" in status.unreadable:
        out.append(
            _section(
                "Long transactions holding locks on pg_beat tables (rows they lock never fire)",
                ("PID", "APPLICATION", "STATE", "OPEN FOR", "TABLES", "QUERY"),
                [
                    [
                        r["pid"],
                        r["application_name"],
                        r["state"],
                        _age(seconds(r["xact_age"])),
                        ",".join(r["tables"]),
                        r["query"] or "",
                    ]
                    for r in status.long_transactions or ()
                ],
                "",
                status.unreadable.get("long_transactions"),
            )
        )
    return out


def render(status: ClusterStatus) -> str:
    """The human ``pg-beat status`` report, verdict first."""
    sections = [
        f"verdict: {status.verdict.message}",
        f"group {status.group!r}, database clock {utc(status.now)}",
    ]
    if status.unreadable:
        sections[-1] += "\ncould not read: " + ", ".join(status.unreadable)
    if status.blockers:
        sections.append(_blockers_section(status))
    sections.append(_lease_section(status))
    sections.extend(_session_sections(status))
    sections.extend(_history_sections(status))
    return "\n\n".join(sections)
