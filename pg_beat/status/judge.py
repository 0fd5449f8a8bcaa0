"""Pure judgement of the cluster: a lease row, lock and backend rows and the database clock in,
a :class:`Verdict` (healthy, no leader, leader stale, blocked, unknown) out; and what each
replica really is, whatever its row says. Ages are seconds on the database clock."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pg_beat.leadership.lease import LeaseStatus, LeaseView, lease_state
from pg_beat.status.locks import (
    describe_blocker,
    find_blockers,
    outside_key_holder,
    row_age,
    who,
)
from pg_beat.status.rows import Row, seconds
from pg_beat.status.text import duration, shorten, utc

__all__ = [
    "BLOCKED",
    "BROKER_DOWN",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_MAX_STALL",
    "GONE",
    "GONE_AFTER_HEARTBEATS",
    "HEALTHY",
    "LEADER_STALE",
    "NO_LEADER",
    "UNKNOWN",
    "Verdict",
    "broker_state",
    "describe_backend",
    "leader_verdict",
    "lease_ttl",
    "progress_age",
    "replica_gone",
    "replica_gone_after",
    "replica_role",
    "verdict",
    "without_lock_waiters",
]


HEALTHY = "healthy"
NO_LEADER = "no leader"
LEADER_STALE = "leader stale"
BLOCKED = "blocked"
UNKNOWN = "unknown"  # the lease itself could not be read
BROKER_DOWN = "broker unreachable"  # the leader leads, but cannot publish

#: Seconds without dispatch-loop progress after which a leader counts as stalled.
DEFAULT_MAX_STALL = 10.0
#: ``pg_beat_lease_ttl``'s default: the TTL assumed when the lease row tells none.
DEFAULT_LEASE_TTL = 5.0
#: Heartbeats a replica without a session of its own may miss before it is gone, counted at
#: the slowest interval its lease TTL allows (the TTL is at least 3 heartbeats).
GONE_AFTER_HEARTBEATS = 4

GONE = "gone"


@dataclass(frozen=True)
class Verdict:
    """``state`` is one of HEALTHY, NO_LEADER, LEADER_STALE, BLOCKED, BROKER_DOWN, UNKNOWN;
    ``message`` is one line."""

    state: str
    message: str

    @property
    def healthy(self) -> bool:
        return self.state == HEALTHY


def progress_age(lease: Row | None, now: datetime) -> float | None:
    """Seconds since the leader's dispatch loop last made progress (None when unknown)."""
    if lease is None or lease.get("progress_at") is None or lease.get("holder") is None:
        return None
    return float((now - lease["progress_at"]).total_seconds())


def leader_verdict(
    lease: Row | None,
    now: datetime,
    *,
    locks: Sequence[Row] = (),
    leader_backends: Sequence[Row] = (),
    max_stall: float = DEFAULT_MAX_STALL,
    lease_unreadable: str | None = None,
    replicas: Sequence[Row] = (),
) -> Verdict:
    """Judge the leader alone (``pg-beat check``) from a ``store.read_lease`` row at database
    time ``now``; ``lease_unreadable`` is why the lease could not be read, if it could not.
    ``replicas`` (``store.list_replicas`` rows) tell whether the leader's broker works."""
    if lease_unreadable is not None:
        return Verdict(UNKNOWN, f"could not read the lease: {lease_unreadable}")
    view = lease_state(lease, now)
    if view.status is not LeaseStatus.HELD and view.status is not LeaseStatus.HUNG:
        outsider = outside_key_holder(locks, view)
        if outsider is not None:
            return Verdict(
                NO_LEADER,
                f"{NO_LEADER}: the leadership lock {outsider.get('lock_key')} is held by "
                f"{who(outsider)}, not a pg_beat replica, for {duration(row_age(outsider))}",
            )
        return Verdict(NO_LEADER, f"{NO_LEADER}: {_why_no_leader(view)}")
    stall = progress_age(lease, now)
    if view.status is LeaseStatus.HUNG or (stall is not None and stall > max_stall):
        return Verdict(LEADER_STALE, _stale_message(view, stall, leader_backends))
    leader = next((r for r in replicas if r.get("name") == view.holder), None)
    if leader is not None and leader.get("broker_failing_since") is not None:
        waiting = leader.get("ticks_waiting")
        return Verdict(
            BROKER_DOWN,
            f"{BROKER_DOWN}: leader {view.holder!r} (epoch {view.epoch}) cannot publish since "
            f"{utc(leader['broker_failing_since'])} "
            f"({duration(seconds(leader.get('broker_failing_age')))} ago), "
            f"{'?' if waiting is None else waiting} tick(s) waiting; it keeps the lease and "
            f"retries: {shorten(leader.get('broker_error') or 'no error recorded', 120)}",
        )
    return Verdict(
        HEALTHY,
        f"{HEALTHY}: leader {view.holder!r} (epoch {view.epoch}), heartbeat "
        f"{duration(view.heartbeat_age)} ago, lease expires in {duration(view.expires_in)}",
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
    replicas: Sequence[Row] = (),
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
        replicas=replicas,
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
            f"{duration(view.expires_in)} ago; a standby takes it over at its next heartbeat"
        )
    return (
        f"the session of {view.holder!r} (epoch {view.epoch}, backend {view.backend_pid}) is "
        "gone (it no longer holds the leadership lock); a standby takes over as soon as one is "
        "running"
    )


def _stale_message(view: LeaseView, stall: float | None, backends: Sequence[Row]) -> str:
    if view.status is LeaseStatus.HUNG:
        what = (
            f"has not renewed its lease for {duration(view.heartbeat_age)} "
            f"(expired {duration(-(view.expires_in or 0.0))} ago)"
        )
    else:
        what = f"holds the lease but its dispatch loop made no progress for {duration(stall)}"
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
            f"for {duration(seconds(b.get('age')))})"
            for b in blockers
        )
    return text


def broker_state(row: Row) -> str:
    """A replica's own broker, as its row says: ``ok``, ``failing 31s``, or ``-`` (unknown:
    never tried, or a replica of a release that does not report it)."""
    if row.get("broker_failing_since") is not None:
        return f"failing {duration(seconds(row.get('broker_failing_age')))}"
    if row.get("broker_checked_age") is None:
        return "-"
    return "ok"


def lease_ttl(lease: Row | None) -> float | None:
    """The group's ``pg_beat_lease_ttl`` as its lease row shows it: every takeover and renewal
    sets ``expires_at`` to ``heartbeat_at`` plus the TTL. None for no lease, a released one
    (its release moved ``expires_at``) or one never renewed."""
    if lease is None or lease.get("released_at") is not None:
        return None
    heartbeat: datetime | None = lease.get("heartbeat_at")
    expires: datetime | None = lease.get("expires_at")
    if heartbeat is None or expires is None:
        return None
    ttl = (expires - heartbeat).total_seconds()
    return ttl if ttl > 0 else None


def replica_gone_after(lease: Row | None) -> float:
    """Seconds without a heartbeat after which a replica with no session of its own is gone.

    The status tool does not know the replicas' ``pg_beat_heartbeat_interval``, but it knows
    their lease TTL, which is at least 3 heartbeats: a replica is gone once it has missed
    :data:`GONE_AFTER_HEARTBEATS` heartbeats at the slowest interval that TTL allows, i.e.
    after 4/3 of the TTL (6.7 s with the default 5 s TTL, which is 6 heartbeats of the default
    1 s). Without a TTL in the lease row (no lease yet, or released) the default TTL is assumed.
    """
    ttl = lease_ttl(lease) or DEFAULT_LEASE_TTL
    return ttl / 3 * GONE_AFTER_HEARTBEATS


def replica_gone(row: Row, now: datetime, gone_after: float | None = None) -> bool:
    """The replica's session is no longer connected, or (transaction pooling: no session of
    its own) it has not heartbeaten for ``gone_after`` seconds of the database clock (by
    default :func:`replica_gone_after` of no lease row)."""
    if row.get("backend_pid") is not None:
        return not row.get("backend_alive")
    if gone_after is None:
        gone_after = replica_gone_after(None)
    seen: datetime | None = row.get("last_seen_at")
    return seen is None or (now - seen).total_seconds() > gone_after


def replica_role(
    row: Row, view: LeaseView | None, now: datetime, gone_after: float | None = None
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
