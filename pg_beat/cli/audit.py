"""``pg-beat runs audit``: every due time of every schedule in a window, against the run log
and the executions the workers recorded (:mod:`pg_beat.audit` decides, this reads and prints).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from pg_beat.cli.context import Env, json_option, parse_time, pass_env, print_json
from pg_beat.cli.errors import CliUsageError
from pg_beat.exceptions import ScheduleNotFound

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from pg_beat.audit import Finding, Report, RunView, ScheduleView, Window

#: Exit code when the audit found something (0: a clean window; 1, 2, 3 as for every command).
EXIT_FINDINGS = 4
#: Schedules read per batch; their run rows are read in pages of RUN_PAGE.
SCHEDULE_BATCH = 500
RUN_PAGE = 5000
DEFAULT_SINCE = "24h"
DEFAULT_SETTLE = "5m"

HEADERS = ("SCHEDULE", "DUE", "TASK ID", "WHAT", "WHY")
TITLES = {
    "missing": "missing: no run row for a due time",
    "late": "late: sent after the grace time",
    "unsent": "unsent: claimed, never sent",
    "never_started": "never started: sent, no worker started it",
    "started_twice": "started twice: the task body ran more than once",
    "failed": "failed: not published, or the task failed",
    "lost": "lost: the execution was lost",
    "revoked": "revoked",
    "skipped": "skipped: recorded, not sent",
    "expired": "expired: past its expiry before it was sent",
    "overlap_skipped": "info: skipped by the overlap policy (the previous run was still going)",
    "duplicate_delivery": "info: duplicate deliveries acknowledged without running",
    "unplanned_run": "info: runs at due times the schedule does not produce",
    "partly_checked": "info: schedules checked from their last edit on",
}


@click.command("audit")
@click.option(
    "--since",
    metavar="AGE|TIME",
    default=DEFAULT_SINCE,
    show_default=True,
    help="Due after a duration ago (10m) or an ISO time.",
)
@click.option("--until", metavar="AGE|TIME", help="Due until a duration ago or an ISO time [now].")
@click.option("--schedule", "schedule_name", metavar="NAME", help="Only this schedule.")
@click.option(
    "--settle",
    metavar="DURATION",
    default=DEFAULT_SETTLE,
    show_default=True,
    help="How long a tick may take to be claimed, sent or started before that is a finding.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    help="Seconds a send may be late [the pg_beat_misfire_grace_time default, 10].",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Ticks listed per kind (all are counted).",
)
@json_option
@pass_env
def audit_command(
    env: Env,
    since: str,
    until: str | None,
    schedule_name: str | None,
    settle: str,
    grace: float | None,
    limit: int,
    as_json: bool,
) -> None:
    """Prove every tick: each schedule's due times in the window against its run log.

    \b
    Findings per tick: missing (no run row), late (sent more than the grace after its due
    time; not a tick buffer_one held back on purpose), unsent (claimed, never sent), never
    started (sent, and no worker started it, on a schedule whose runs are tracked), started
    twice (the task body ran twice), failed (not published, or the task failed), lost,
    revoked, skipped (with why) and expired. A finding while no leader held the lease says
    so. Info: ticks an overlap policy did not send (the previous run was still going),
    duplicate deliveries acknowledged without running, runs at due times the schedule does
    not produce (run now, an earlier definition).

    \b
    Which due times are checked (no edit history is kept): those after the schedule was
    created and last edited (any edit: definition, enabled, arguments, run now), or after
    the leaderless time it was edited in ended, and for an interval without start_time one
    interval after that; those due at least --settle ago;
    for a disabled, parked or unplanned schedule only up to its last due time. Ticks before
    the last edit are not compared with a definition, but their run rows are still checked.

    Exit status: 0 when clean, 4 when anything is found (1, 2, 3 as for every command).
    JSON keys: group, since, until, now, settle, grace, schedules, clean, total, counts,
    info_counts, findings and info (each {kind, schedule, due_at, task_id, what, why}),
    truncated.
    """
    from pg_beat import audit, schedules

    try:
        settle_seconds = schedules.parse_duration(settle)
    except ValueError as exc:
        raise CliUsageError(f"--settle: {exc}") from exc
    with env.connect() as conn:
        from pg_beat import store

        now = store.connections.db_now(conn)
        start = _moment(since, "--since", now)
        end = now if until is None else _moment(until, "--until", now)
        if start >= end:
            raise CliUsageError(f"--since ({since}) must be before --until ({until or 'now'})")
        if schedule_name is not None:
            if store.schedules.get_schedule(conn, env.group, schedule_name) is None:
                raise ScheduleNotFound(schedule_name)
        window = audit.Window(
            since=start,
            until=end,
            now=now,
            settle=settle_seconds,
            grace=env.settings.misfire_grace_time if grace is None else grace,
            group=env.group,
            max_runtime=env.settings.max_runtime,
        )
        report = collect(conn, env, window, schedule_name, limit)
    if as_json:
        print_json(_document(env.group, window, report))
    else:
        _print(env.group, window, report)
    if not report.clean:
        raise click.exceptions.Exit(EXIT_FINDINGS)


def _moment(text: str, option: str, now: datetime) -> datetime:
    """An age before ``now`` (``10m``) or an ISO time, as ``pg-beat runs --since`` reads it."""
    from pg_beat import schedules

    try:
        return now - timedelta(seconds=schedules.parse_duration(text))
    except ValueError:
        return parse_time(text, option)


def collect(
    conn: Connection, env: Env, window: Window, schedule_name: str | None, limit: int
) -> Report:
    """Audit the group's schedules (or one) batch by batch; findings counted in a Report."""
    from pg_beat import audit, store

    lease = store.audit.lease(conn, env.group)
    gaps = audit.leaderless_gaps(
        [audit.TermRow(**t) for t in store.audit.terms(conn, env.group, window.since)],
        None if lease is None else audit.LeaseRow(**lease),
        env.settings.lease_ttl,
        window.now,
    )
    report = audit.Report(limit=limit)
    after = 0
    while True:
        rows = store.audit.schedules(
            conn,
            env.group,
            since=window.since,
            after=after,
            name=schedule_name,
            limit=SCHEDULE_BATCH,
        )
        if not rows:
            return report
        after = rows[-1]["id"]
        stream = _RunStream(
            store.audit.runs(
                conn, [r["id"] for r in rows], window.since, window.until, page=RUN_PAGE
            )
        )
        for row in rows:
            report.schedules += 1
            view = _schedule_view(row)
            for item in audit.audit_schedule(view, stream.of(view.id), window, gaps):
                report.add(item)


class _RunStream:
    """The run rows of a batch of schedules (ordered by schedule id, then due time), handed
    out one schedule at a time."""

    def __init__(self, rows: Iterator[Sequence[Any]]) -> None:
        self._rows = rows
        self._next = next(rows, None)

    def of(self, schedule_id: int) -> Iterator[RunView]:
        from pg_beat.audit import RunView

        while self._next is not None and self._next[0] <= schedule_id:
            row, self._next = self._next, next(self._rows, None)
            if row[0] == schedule_id:
                yield RunView(*row[1:])


def _schedule_view(row: Mapping[Any, Any]) -> ScheduleView:
    from pg_beat.audit import ScheduleView
    from pg_beat.validation import spec_from_row

    return ScheduleView(
        id=row["id"],
        name=row["name"],
        spec=spec_from_row(row),
        enabled=row["enabled"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        next_run_at=row["next_run_at"],
        last_due_at=row["last_due_at"],
        resume_at=row["resume_at"],
        last_error=row["last_error"],
        tracked=row["tracked"],
        max_runtime=row["max_runtime"],
    )


def _item(finding: Finding) -> dict[str, Any]:
    return {
        "kind": finding.kind,
        "schedule": finding.schedule,
        "due_at": finding.due_at,
        "task_id": finding.task_id,
        "what": finding.what,
        "why": finding.why or None,
    }


def _document(group: str, window: Window, report: Report) -> dict[str, Any]:
    return {
        "group": group,
        "since": window.since,
        "until": window.until,
        "now": window.now,
        "settle": window.settle,
        "grace": window.grace,
        "schedules": report.schedules,
        "clean": report.clean,
        "total": report.total,
        "counts": report.counts,
        "info_counts": report.info_counts,
        "findings": [_item(f) for f in report.findings],
        "info": [_item(i) for i in report.info],
        "truncated": report.truncated,
    }


def _print(group: str, window: Window, report: Report) -> None:
    from pg_beat import status

    click.echo(
        f"audit of group {group!r}: due after {status.utc(window.since)} until "
        f"{status.utc(window.until)}, {report.schedules} schedule(s) "
        f"(settle {window.settle:g}s, grace {window.grace:g}s)"
    )
    for kind, count in (*report.counts.items(), *report.info_counts.items()):
        if not count:
            continue
        kept = [f for f in (*report.findings, *report.info) if f.kind == kind]
        click.echo(f"\n{TITLES[kind]} ({count})")
        click.echo(status.render_table(HEADERS, [_cells(f) for f in kept], indent="  "))
        if count > len(kept):
            click.echo(f"  ... and {count - len(kept)} more (raise --limit, or use --json)")
    click.echo("")
    click.echo(_summary(report))


def _cells(finding: Finding) -> Sequence[Any]:
    from pg_beat import status

    due = None if finding.due_at is None else status.utc(finding.due_at)
    return (finding.schedule, due, finding.task_id, finding.what, finding.why or None)


def _summary(report: Report) -> str:
    if report.clean:
        return (
            f"clean: every due time checked in {report.schedules} schedule(s) has its run, "
            "and nothing was late, skipped, failed or lost"
        )
    parts = ", ".join(f"{kind} {n}" for kind, n in report.counts.items() if n)
    return f"{report.total} finding(s) in {report.schedules} schedule(s): {parts}"
