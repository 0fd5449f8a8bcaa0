"""Cluster status for ``pg-beat status`` and ``pg-beat check``: gather, judge, render.

:func:`gather` reads everything in a handful of queries on one connection; :func:`verdict`
is pure (rows and the database clock in, one line out) so each verdict is tested with plain
dicts; :func:`render` and :func:`as_json` format the result. Ages are seconds on the
database clock, never the caller's.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy.engine import Connection

from pg_beat import schedules, store
from pg_beat.api import spec_from_row
from pg_beat.lease import LeaseStatus, LeaseView, lease_state

HEALTHY = "healthy"
NO_LEADER = "no leader"
LEADER_STALE = "leader stale"
BLOCKED = "blocked"

#: Seconds without dispatch-loop progress after which a leader counts as stalled.
DEFAULT_MAX_STALL = 10.0
#: Seconds a transaction may hold locks on pg_beat's tables before status lists it.
DEFAULT_LONG_TRANSACTION = 5.0

Row = Mapping[Any, Any]  # a SQLAlchemy RowMapping, or a plain dict in tests


@dataclass(frozen=True)
class Verdict:
    """``state`` is one of HEALTHY, NO_LEADER, LEADER_STALE, BLOCKED; ``message`` one line."""

    state: str
    message: str

    @property
    def healthy(self) -> bool:
        return self.state == HEALTHY


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


def verdict(
    lease: Row | None,
    now: datetime,
    *,
    leader_backends: Sequence[Row] = (),
    blocked: Sequence[Row] = (),
    lock_waiters: Collection[int] = (),
    max_stall: float = DEFAULT_MAX_STALL,
) -> Verdict:
    """Judge the cluster from a ``store.read_lease`` row at database time ``now``.

    ``leader_backends`` and ``blocked`` are ``store.backend_diagnostics`` rows (the leader's
    sessions; every blocked pg_beat session); ``lock_waiters`` are the pids queued on the
    advisory lock, standbys waiting for their turn, which is normal and not "blocked".
    """
    view = lease_state(lease, now)
    if view.status is not LeaseStatus.HELD and view.status is not LeaseStatus.STALE:
        return Verdict(NO_LEADER, f"{NO_LEADER}: {_why_no_leader(view)}")
    stall = progress_age(lease, now)
    if view.status is LeaseStatus.STALE or (stall is not None and stall > max_stall):
        return Verdict(LEADER_STALE, _stale_message(view, stall, leader_backends))
    others = without_lock_waiters(blocked, lock_waiters)
    if others:
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        return Verdict(BLOCKED, f"{BLOCKED}: pg_beat {describe_backend(others[0])}{more}")
    heartbeat = _age(view.heartbeat_age)
    expires = _age(view.expires_in)
    return Verdict(
        HEALTHY,
        f"{HEALTHY}: leader {view.holder!r} (epoch {view.epoch}), heartbeat {heartbeat} ago, "
        f"lease expires in {expires}",
    )


def without_lock_waiters(blocked: Sequence[Row], lock_waiters: Collection[int]) -> list[Row]:
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
    if view.status is LeaseStatus.FREE:
        return "the lease was never taken (is any replica running?)"
    if view.status is LeaseStatus.RELEASED:
        return f"{view.holder!r} released the lease (epoch {view.epoch}) and nobody took it yet"
    return (
        f"the session of {view.holder!r} (epoch {view.epoch}, backend {view.backend_pid}) is "
        "gone; a standby takes over as soon as one is running"
    )


def _stale_message(view: LeaseView, stall: float | None, backends: Sequence[Row]) -> str:
    if view.status is LeaseStatus.STALE:
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
        if hint_idle and row.get("state") == "idle":
            text += " (the process is not talking to the database: paused, or stuck outside it)"
    blockers = row.get("blocked_by") or []
    if blockers:
        text += ", blocked by " + "; ".join(
            f"pid {b['pid']} ({b.get('application_name') or '?'}, {b.get('state')}, "
            f"for {_age(seconds(b.get('age')))})"
            for b in blockers
        )
    return text


# --- gathering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterStatus:
    """Everything ``pg-beat status`` shows, as read at database time ``now``."""

    group: str
    now: datetime
    lease: Row | None
    replicas: Sequence[Row]
    lock: Sequence[Row]
    blocked: Sequence[Row]
    leader_backends: Sequence[Row]
    failovers: Sequence[Row]
    next_due: Sequence[Row]
    long_transactions: Sequence[Row]
    verdict: Verdict
    max_stall: float


def gather(
    conn: Connection,
    group: str,
    *,
    max_stall: float = DEFAULT_MAX_STALL,
    next_limit: int = 5,
    failover_limit: int = 5,
    long_transaction: float = DEFAULT_LONG_TRANSACTION,
) -> ClusterStatus:
    """Read the cluster's state (use an autocommit connection: pg_stat_activity is then fresh)."""
    lease = store.read_lease(conn, group)
    now = lease["db_now"] if lease is not None else store.db_now(conn)
    lock = store.lock_holders(conn, group)
    waiters = [row["pid"] for row in lock if not row["granted"]]
    blocked = without_lock_waiters(store.backend_diagnostics(conn, blocked_pg_beat=True), waiters)
    leader_backends = gather_leader_backends(conn, lease, now, max_stall)
    return ClusterStatus(
        group=group,
        now=now,
        lease=lease,
        replicas=store.list_replicas(conn, group),
        lock=lock,
        blocked=blocked,
        leader_backends=leader_backends,
        failovers=store.recent_terms(conn, group, failover_limit),
        next_due=store.due_schedules(conn, group, next_limit),
        long_transactions=store.long_transactions(conn, long_transaction),
        verdict=verdict(
            lease,
            now,
            leader_backends=leader_backends,
            blocked=blocked,
            lock_waiters=waiters,
            max_stall=max_stall,
        ),
        max_stall=max_stall,
    )


def gather_leader_backends(
    conn: Connection, lease: Row | None, now: datetime, max_stall: float
) -> Sequence[Row]:
    """What the leader's sessions are doing, when it looks hung (else nothing)."""
    view = lease_state(lease, now)
    stall = progress_age(lease, now)
    hung = view.status is LeaseStatus.STALE or (
        view.status is LeaseStatus.HELD and stall is not None and stall > max_stall
    )
    if not hung or view.holder is None:
        return []
    pids = set(store.replica_backend_pids(conn, view.holder))
    if view.backend_pid is not None:
        pids.add(view.backend_pid)
    return store.backend_diagnostics(conn, sorted(pids))


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


def dumps(value: Any) -> str:
    return json.dumps(jsonable(value), indent=2)


def _pick(row: Row, keys: Iterable[str]) -> dict[str, Any]:
    return {key: jsonable(row.get(key)) for key in keys}


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
        "progress_at": jsonable(row.get("progress_at")),
        "progress_age": progress_age(lease, now),
    }


def as_json(status: ClusterStatus) -> dict[str, Any]:
    """The documented ``pg-beat status --json`` object."""
    return {
        "group": status.group,
        "db_now": status.now.isoformat(),
        "verdict": {"state": status.verdict.state, "message": status.verdict.message},
        "lease": lease_dict(status.lease, status.now),
        "replicas": [
            _pick(
                r,
                ("name", "role", "host", "pid", "version", "backend_pid", "started_at"),
            )
            | {
                "last_seen_at": jsonable(r["last_seen_at"]),
                "last_seen_age": seconds(r["last_seen_age"]),
            }
            for r in status.replicas
        ],
        "lock": [
            _pick(r, ("pid", "application_name", "state", "client_addr", "backend_start", "query"))
            | {"role": "holder" if r["granted"] else "waiter", "state_age": seconds(r["state_age"])}
            for r in status.lock
        ],
        "blocked": [_pick(r, _BACKEND_KEYS) for r in status.blocked],
        "leader_backends": [_pick(r, _BACKEND_KEYS) for r in status.leader_backends],
        "failovers": [
            _pick(
                r,
                ("epoch", "holder", "host", "pid", "acquired_at", "ended_at", "reason"),
            )
            | {"previous_holder": r["previous_holder"]}
            for r in status.failovers
        ],
        "next_due": [
            {
                "name": r["name"],
                "task": r["task"],
                "schedule": schedules.describe(spec_from_row(r)),
                "next_run_at": jsonable(r["next_run_at"]),
                "due_in": seconds(r["due_in"]),
            }
            for r in status.next_due
        ],
        "long_transactions": [
            _pick(r, ("pid", "application_name", "state", "query", "xact_age", "tables"))
            for r in status.long_transactions
        ],
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


def _section(title: str, headers: Sequence[str], rows: list[list[Any]], empty: str) -> str:
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
                shorten(r.get("query") or "", 50),
            ]
        )
    return out


_BACKEND_HEADERS = ("PID", "APPLICATION", "STATE", "WAITING ON", "BLOCKED BY", "AGE", "QUERY")


def render(status: ClusterStatus) -> str:
    """The human ``pg-beat status`` report, verdict first."""
    now, lease = status.now, status.lease
    view = lease_state(lease, now)
    sections = [
        f"verdict: {status.verdict.message}",
        f"group {status.group!r}, database clock {utc(now)}",
    ]
    leader_rows: list[list[Any]] = []
    if lease is not None and view.holder is not None:
        leader_rows.append(
            [
                view.holder,
                lease.get("host"),
                lease.get("pid"),
                view.epoch,
                view.status.value,
                view.backend_pid,
                ago(view.heartbeat_age),
                relative(view.expires_in),
                ago(progress_age(lease, now)),
            ]
        )
    sections.append(
        _section(
            "Lease",
            (
                "HOLDER",
                "HOST",
                "PID",
                "EPOCH",
                "STATUS",
                "BACKEND",
                "HEARTBEAT",
                "EXPIRES",
                "LOOP PROGRESS",
            ),
            leader_rows,
            f"free (epoch {view.epoch})",
        )
    )
    if status.leader_backends:
        sections.append(
            _section(
                "Leader's backends", _BACKEND_HEADERS, _backend_rows(status.leader_backends), ""
            )
        )
    sections.append(
        _section(
            "Replicas",
            ("NAME", "ROLE", "HOST", "PID", "VERSION", "LAST SEEN"),
            [
                [
                    r["name"],
                    r["role"],
                    r["host"],
                    r["pid"],
                    r["version"],
                    ago(seconds(r["last_seen_age"])),
                ]
                for r in status.replicas
            ],
            "none registered",
        )
    )
    sections.append(
        _section(
            "Advisory lock",
            ("ROLE", "PID", "APPLICATION", "STATE", "FOR", "CLIENT"),
            [
                [
                    "holder" if r["granted"] else "waiter",
                    r["pid"],
                    r["application_name"],
                    r["state"],
                    _age(seconds(r["state_age"])),
                    r["client_addr"],
                ]
                for r in status.lock
            ],
            "not held",
        )
    )
    sections.append(
        _section(
            "Blocked pg_beat backends", _BACKEND_HEADERS, _backend_rows(status.blocked), "none"
        )
    )
    if status.long_transactions:
        sections.append(
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
                        shorten(r["query"] or "", 50),
                    ]
                    for r in status.long_transactions
                ],
                "",
            )
        )
    sections.append(
        _section(
            "Recent terms (failovers)",
            ("EPOCH", "HOLDER", "HOST", "PID", "ACQUIRED", "ENDED", "REASON", "PREVIOUS"),
            [
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
        )
    )
    sections.append(
        _section(
            "Next due",
            ("NAME", "TASK", "SCHEDULE", "DUE"),
            [
                [
                    r["name"],
                    r["task"],
                    schedules.describe(spec_from_row(r)),
                    relative(seconds(r["due_in"])),
                ]
                for r in status.next_due
            ],
            "nothing planned",
        )
    )
    return "\n\n".join(sections)
