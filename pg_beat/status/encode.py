"""The documented JSON of ``pg-beat status --json`` (:func:`as_json`) and ``pg-beat check
--json`` (:func:`check_json`); :func:`dumps` turns any result (datetimes, intervals) into JSON
text. An unreadable section is null."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pg_beat import schedules
from pg_beat.leadership.lease import LeaseView, lease_state
from pg_beat.status.judge import broker_state, progress_age, replica_role
from pg_beat.status.locks import Blocker, describe_blocker, key_rows, lock_target
from pg_beat.status.report import ClusterStatus, Health, TaskHealth
from pg_beat.status.rows import Row, seconds
from pg_beat.validation import spec_from_row

__all__ = [
    "advisory_dict",
    "as_json",
    "blocker_dict",
    "check_json",
    "due_dict",
    "dumps",
    "failing_dict",
    "jsonable",
    "lease_dict",
    "lock_dict",
    "replica_dict",
    "task_health_dict",
]


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


def replica_dict(
    row: Row, view: LeaseView | None, now: datetime, gone_after: float | None = None
) -> dict[str, Any]:
    return _pick(
        row, ("name", "host", "pid", "version", "backend_pid", "backend_alive", "started_at")
    ) | {
        "role": replica_role(row, view, now, gone_after),
        "reported_role": row.get("role"),
        "last_seen_at": jsonable(row.get("last_seen_at")),
        "last_seen_age": seconds(row.get("last_seen_age")),
        "broker": {
            "state": broker_state(row),
            "failing_since": jsonable(row.get("broker_failing_since")),
            "error": row.get("broker_error"),
            "checked_age": seconds(row.get("broker_checked_age")),
            "ticks_waiting": row.get("ticks_waiting"),
        },
    }


def advisory_dict(row: Row) -> dict[str, Any]:
    """A ``lock`` item: a holder or waiter of the leadership key."""
    return _pick(
        row,
        ("pid", "application_name", "user_name", "state", "client_addr", "backend_start", "query"),
    ) | {"role": "holder" if row["granted"] else "waiter", "state_age": seconds(row["state_age"])}


def failing_dict(row: Row) -> dict[str, Any]:
    return _pick(row, ("name", "task", "enabled", "parked", "last_error", "last_run_at")) | {
        "next_run_at": jsonable(row.get("next_run_at")),
    }


def task_health_dict(found: TaskHealth, now: datetime) -> dict[str, Any]:
    """``task_health``: failing and overdue schedules, counted, and the worst of them."""
    from pg_beat import health

    worst = []
    for row in found.worst:
        judged = health.judge(row, found.overdue_factor, now)
        worst.append(
            {"name": row["name"], "task": row["task"]}
            | {k: jsonable(v) for k, v in judged.as_dict().items()}
        )
    return {
        "failing_count": found.failing_count,
        "overdue_count": found.overdue_count,
        "unhealthy_count": found.unhealthy_count,
        "overdue_factor": found.overdue_factor,
        "schedules": worst,
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
    view, now, gone_after = status.lease_view, status.now, status.replica_gone_after
    return {
        "group": status.group,
        "db_now": now.isoformat(),
        "verdict": {"state": status.verdict.state, "message": status.verdict.message},
        "unreadable": [{"section": k, "reason": v} for k, v in status.unreadable.items()],
        "blockers": [blocker_dict(b) for b in status.blockers],
        "lease": None if view is None else lease_dict(status.lease, now),
        "replicas": _each(status.replicas, lambda r: replica_dict(r, view, now, gone_after)),
        "lock": _each(key_rows(status.locks), advisory_dict),
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
        "task_health": None
        if status.task_health is None
        else task_health_dict(status.task_health, now),
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
