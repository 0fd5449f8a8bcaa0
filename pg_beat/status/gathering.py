"""Reading the cluster for ``pg-beat status`` (:func:`gather`) and ``pg-beat check``
(:func:`check`): the database clock and the locks first (``pg_locks`` never waits on a table
lock), then the lease and each other section through a :class:`SectionReader`, then the
judgement. What could not be read is said, with the session that blocks it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from pg_beat import store
from pg_beat.exceptions import PgBeatError
from pg_beat.leadership.lease import LeaseStatus, LeaseView, lease_state
from pg_beat.status.judge import (
    DEFAULT_MAX_STALL,
    UNKNOWN,
    leader_verdict,
    progress_age,
    verdict,
    without_lock_waiters,
)
from pg_beat.status.locks import (
    describe_blocker,
    explain_unreadable,
    find_blockers,
    outside_key_holder,
)
from pg_beat.status.reader import GATHER_BUDGET, SECTION_TIMEOUT, SectionReader
from pg_beat.status.report import ClusterStatus, Health, TaskHealth
from pg_beat.status.rows import Row, cut_queries

__all__ = [
    "DEFAULT_LONG_TRANSACTION",
    "check",
    "gather",
    "gather_leader_backends",
    "read_clock_and_locks",
    "read_task_health",
]


#: Seconds a transaction may hold locks on pg_beat's tables before status lists it.
DEFAULT_LONG_TRANSACTION = 5.0
#: pg_beat_overdue_factor's default.
DEFAULT_OVERDUE_FACTOR = 2.0


def read_task_health(conn: Connection, group: str, factor: float, limit: int) -> TaskHealth:
    """Failing and overdue schedules: counted, and the worst ``limit`` of them."""
    found = store.health.unhealthy(conn, group, factor, limit)
    return TaskHealth(found.failing, found.overdue, found.either, found.worst, factor)


def read_clock_and_locks(
    reader: SectionReader, group: str
) -> tuple[datetime, Sequence[Row] | None]:
    """The database clock and :func:`store.diagnostics.lock_activity`, read before anything
    else: neither waits for a lock on pg_beat's tables."""
    got = reader.read(
        "locks", lambda c: (store.connections.db_now(c), store.diagnostics.lock_activity(c, group))
    )
    if got is not None:
        reader.note_locks(got[1])
        return got
    now = reader.read("clock", store.connections.db_now)
    if now is None:
        raise PgBeatError(f"could not read the database clock: {reader.unreadable['clock']}")
    return now, None


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
    row = reader.read_table("lease", lambda c: store.lease.read_lease(c, group))
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
    overdue_factor: float = DEFAULT_OVERDUE_FACTOR,
    unhealthy_limit: int = 10,
    show_queries: bool = False,
    timeout: float = SECTION_TIMEOUT,
    budget: float = GATHER_BUDGET,
) -> ClusterStatus:
    """Read the cluster's state, the locks first, each section bounded by ``timeout`` seconds
    (all of them by about ``budget``); ``conn`` must not be inside a transaction."""
    reader = SectionReader(conn, timeout=timeout, budget=budget)
    now, raw_locks = read_clock_and_locks(reader, group)
    lease, backends = _read_lease(reader, group, now, max_stall)
    blocked = reader.read(
        "blocked", lambda c: store.diagnostics.backend_diagnostics(c, blocked_pg_beat=True)
    )
    replicas = reader.read_table("replicas", lambda c: store.diagnostics.list_replicas(c, group))
    failovers = reader.read_table(
        "failovers", lambda c: store.lease.recent_terms(c, group, failover_limit)
    )
    next_due = reader.read_table(
        "next_due", lambda c: store.diagnostics.due_schedules(c, group, next_limit)
    )
    failing = reader.read_table(
        "failing_schedules", lambda c: store.diagnostics.schedule_failures(c, group, failing_limit)
    )
    task_health = reader.read_table(
        "task_health", lambda c: read_task_health(c, group, overdue_factor, unhealthy_limit)
    )
    long_transactions = reader.read(
        "long_transactions", lambda c: store.diagnostics.long_transactions(c, long_transaction)
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
            replicas=replicas or (),
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
        task_health=task_health,
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
    pids = set(store.diagnostics.replica_backend_pids(conn, view.holder, view.backend_pid))
    if view.backend_pid is not None:
        pids.add(view.backend_pid)
    return store.diagnostics.backend_diagnostics(conn, sorted(pids))


def check(
    conn: Connection,
    group: str,
    *,
    max_stall: float = DEFAULT_MAX_STALL,
    timeout: float = SECTION_TIMEOUT,
    budget: float = GATHER_BUDGET,
) -> Health:
    """Judge the leader alone, with the sections it needs (locks, lease, the leader's
    backends, the replica rows for its broker) bounded as in :func:`gather`. Unhealthy also
    when the lease cannot be read; an unhealthy line names what blocks pg_beat, when
    something does."""
    reader = SectionReader(conn, timeout=timeout, budget=budget)
    now, raw_locks = read_clock_and_locks(reader, group)
    lease, backends = _read_lease(reader, group, now, max_stall)
    # Whether the leader's broker works (a replica table that cannot be read leaves it
    # unknown); only worth a read when there is a leader to judge.
    replicas = None
    if "lease" not in reader.unreadable and lease.view is not None and lease.view.holder:
        replicas = reader.read_table(
            "replicas", lambda c: store.diagnostics.list_replicas(c, group)
        )
    unreadable = explain_unreadable(reader.unreadable, raw_locks or ())
    locks = cut_queries(raw_locks, False) or []
    leader = leader_verdict(
        lease.row,
        lease.now,
        locks=locks,
        leader_backends=cut_queries(backends, False) or (),
        max_stall=max_stall,
        lease_unreadable=unreadable.get("lease"),
        replicas=replicas or (),
    )
    message = leader.message if leader.healthy else f"unhealthy: {leader.message}"
    if not leader.healthy and leader.state != UNKNOWN:
        blockers = find_blockers(locks, lease.view)
        if blockers and outside_key_holder(locks, lease.view) is None:
            message += f"; blocked: {describe_blocker(blockers[0])}"
    return Health(leader, message, lease.row, lease.now, unreadable)
