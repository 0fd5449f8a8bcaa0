"""The human ``pg-beat status`` report (:func:`render`): the verdict first, then who blocks
pg_beat, the lease, the sessions (leader's backends, replicas, advisory lock, blocked
backends, long transactions) and the history (failovers, failing schedules, next due); an
unreadable section says why."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pg_beat import schedules
from pg_beat.status.judge import broker_state, progress_age, replica_role
from pg_beat.status.locks import key_rows, lock_target, row_age
from pg_beat.status.report import ClusterStatus
from pg_beat.status.rows import Row, seconds
from pg_beat.status.text import ago, duration, relative, render_table, shorten, utc
from pg_beat.validation import spec_from_row

__all__ = ["render"]


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
                duration(seconds(r.get("query_age"))),
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
            duration(row_age(b.lock)),
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
        role = replica_role(r, status.lease_view, status.now, status.replica_gone_after)
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
                broker_state(r),
            ]
        )
    return rows


def _advisory_rows(locks: Sequence[Row] | None) -> list[list[Any]] | None:
    keys = key_rows(locks)
    if keys is None:
        return None
    return [
        [
            "holder" if r["granted"] else "waiter",
            r["pid"],
            r.get("application_name"),
            r.get("user_name"),
            r.get("state"),
            duration(seconds(r.get("state_age"))),
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


def _task_health_line(status: ClusterStatus) -> str | None:
    """One line under the verdict when tasks fail or are overdue: said apart from the
    verdict, which is about the scheduler (a task failing does not make it unhealthy)."""
    found = status.task_health
    if found is None or found.clean:
        return None
    return (
        f"tasks: {found.failing_count} schedule(s) failing, {found.overdue_count} overdue "
        "(see Task health; not part of the verdict, which is about the scheduler)"
    )


def _task_health_section(status: ClusterStatus) -> str:
    from pg_beat import health

    found = status.task_health
    title = "Task health (outcomes from tracking workers)"
    rows = None
    if found is not None:
        title += (
            f": {found.failing_count} failing, {found.overdue_count} overdue "
            f"(no success for over {found.overdue_factor:g} periods)"
        )
        rows = []
        for r in found.worst:
            judged = health.judge(r, found.overdue_factor, status.now)
            rows.append(
                [
                    r["name"],
                    health.label(judged),
                    ago(seconds(status.now - judged.last_success_at))
                    if judged.last_success_at
                    else "never",
                    shorten(judged.last_error or "", 60),
                ]
            )
    text = _section(
        title,
        ("NAME", "HEALTH", "LAST SUCCESS", "LAST ERROR"),
        rows,
        "none failing or overdue",
        status.unreadable.get("task_health"),
    )
    if found is not None:
        more = found.unhealthy_count - len(found.worst)
        if found.worst and more > 0:
            text += f"\n  ... and {more} more (pg-beat schedules list)"
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
    return [failovers, _failing_section(status), _task_health_section(status), next_due]


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
            ("NAME", "ROLE", "HOST", "PID", "VERSION", "BACKEND", "LAST SEEN", "BROKER"),
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
                        duration(seconds(r["xact_age"])),
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
    sections = [f"verdict: {status.verdict.message}"]
    tasks = _task_health_line(status)
    if tasks is not None:
        sections[0] += f"\n{tasks}"
    sections.append(f"group {status.group!r}, database clock {utc(status.now)}")
    if status.unreadable:
        sections[-1] += "\ncould not read: " + ", ".join(status.unreadable)
    if status.blockers:
        sections.append(_blockers_section(status))
    sections.append(_lease_section(status))
    sections.extend(_session_sections(status))
    sections.extend(_history_sections(status))
    return "\n\n".join(sections)
