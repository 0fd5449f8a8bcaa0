"""``pg-beat runs``: the run log, newest first, or followed as it is written."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from pg_beat.cli.cluster import repeat_until_interrupted
from pg_beat.cli.context import Env, json_option, parse_time, pass_env, print_json
from pg_beat.exceptions import ScheduleNotFound

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

#: Seconds between two reads of the run log with --follow (the dispatcher does not NOTIFY
#: on runs, so there is nothing to LISTEN for).
FOLLOW_POLL = 0.5
#: Runs followed while unfinished, to print them again once sent, failed or finished (the
#: oldest are let go first: without tracking workers, a sent run never finishes).
MAX_PENDING = 1000
#: Characters of a skipped run's reason or a failed run's error in the NOTE column.
NOTE_CHARS = 60

HEADERS = (
    "DUE", "SCHEDULE", "STATUS", "OUTCOME", "RUNTIME S", "LATENESS MS", "WORKER", "REPLICA",
    "EPOCH", "TASK ID", "NOTE",
)  # fmt: skip
# --follow cannot align on rows it has not seen yet.
_WIDTHS = (24, 20, 8, 8, 9, 11, 16, 16, 5, 36)
_NUMERIC = {4, 5}


def run_item(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A run row as ``runs --json`` shows it."""
    lateness = row["lateness"]
    return {
        "id": row["id"],
        "schedule": row["schedule_name"],
        "due_at": row["due_at"],
        "claimed_at": row["claimed_at"],
        "sent_at": row["sent_at"],
        "status": row["status"],
        "lateness_ms": None if lateness is None else round(lateness.total_seconds() * 1000, 1),
        "replica": row["replica"],
        "epoch": row["epoch"],
        "task_id": row["task_id"],
        "error": row["error"],
        "reason": row["reason"],
        "worker": row["worker"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "outcome": row["outcome"],
        "runtime": row["runtime"],
        "outcome_error": row["outcome_error"],
        "attempts": row["attempts"],
        "duplicates": row["duplicates"],
    }


def _state(row: Mapping[Any, Any]) -> str | None:
    """What --follow prints a run again for when it changes; None once it cannot change
    (not sent and never will be, or finished)."""
    if row["status"] not in ("claimed", "sent") or row["finished_at"] is not None:
        return None
    return f"{row['status']}/{row['outcome']}"


def _note(item: Mapping[Any, Any]) -> str | None:
    """Why a run was skipped or held back, or what went wrong (the task's error first)."""
    from pg_beat import status

    note = item["outcome_error"] or item["error"] or item["reason"]
    return None if note is None else status.shorten(" ".join(str(note).split()), NOTE_CHARS)


def _cells(item: Mapping[Any, Any]) -> list[Any]:
    from pg_beat import status

    return [
        status.utc(item["due_at"]),
        item["schedule"],
        item["status"],
        item["outcome"],
        None if item["runtime"] is None else round(item["runtime"], 3),
        item["lateness_ms"],
        item["worker"],
        item["replica"],
        item["epoch"],
        item["task_id"],
        _note(item),
    ]


def _line(cells: Sequence[Any]) -> str:
    """One run on one line, in fixed columns (numbers right-aligned)."""
    parts = []
    for i, value in enumerate(cells):
        text = "-" if value is None else str(value)
        if i < len(_WIDTHS):
            numeric = isinstance(value, (int, float)) or i in _NUMERIC
            text = text.rjust(_WIDTHS[i]) if numeric else text.ljust(_WIDTHS[i])
        parts.append(text)
    return "  ".join(parts).rstrip()


@dataclass
class Follower:
    """What ``runs --follow`` has printed: the last run id seen, and the runs seen unfinished
    (printed again when their status or outcome changes)."""

    group: str
    schedule: str | None
    as_json: bool
    after: int | None = None
    pending: dict[int, str | None] = field(default_factory=dict)
    #: Which runs to print (--failed, --outcome); every run is still followed.
    keeps: Callable[[Mapping[Any, Any]], bool] = lambda row: True

    def start(self, after: int, rows: Sequence[Mapping[Any, Any]]) -> None:
        """Print ``rows`` (the most recent runs, oldest first), then follow the runs after
        ``after`` (the last run id when ``rows`` were read, or before)."""
        self.after = after
        if not self.as_json:
            click.echo(_line(HEADERS))
        self.show(rows)

    def poll(self, conn: Connection) -> None:
        from pg_beat import store

        assert self.after is not None
        rows = store.runs.runs_after(
            conn, self.group, self.after, pending=list(self.pending), schedule=self.schedule
        )
        self.show(rows)

    def show(self, rows: Sequence[Mapping[Any, Any]]) -> None:
        from pg_beat import status

        for row in rows:
            run_id, state = int(row["id"]), _state(row)
            if run_id in self.pending and self.pending[run_id] == state:
                continue  # unchanged: said already
            self.pending.pop(run_id, None)
            if state is not None:
                self.pending[run_id] = state
                while len(self.pending) > MAX_PENDING:
                    del self.pending[next(iter(self.pending))]
            self.after = max(self.after or 0, run_id)
            if not self.keeps(row):
                continue
            item = run_item(row)
            click.echo(status.dumps(item, compact=True) if self.as_json else _line(_cells(item)))


@click.group(invoke_without_command=True)
@click.option("--schedule", "schedule_name", metavar="NAME", help="Only this schedule's runs.")
@click.option("--since", metavar="AGE|TIME", help="Due since a duration ago (10m) or an ISO time.")
@click.option(
    "--failed",
    is_flag=True,
    help="Only runs whose task failed or was lost, or whose tick could not be sent.",
)
@click.option(
    "--outcome",
    type=click.Choice(["success", "failure", "retry", "revoked", "lost"]),
    help="Only runs with this outcome (recorded by tracking workers).",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help=(
        f"Print the last --limit runs, oldest first, then each new run as it is recorded "
        f"(polled every {FOLLOW_POLL:g}s: the scheduler does not NOTIFY on runs); a run "
        "seen 'claimed' is printed again once sent or failed. Ctrl-C ends it (exit 0)."
    ),
)
@json_option
@click.pass_context
@pass_env
def runs(
    env: Env,
    ctx: click.Context,
    schedule_name: str | None,
    since: str | None,
    failed: bool,
    outcome: str | None,
    limit: int,
    follow: bool,
    as_json: bool,
) -> None:
    """The run log, newest first: due time, status, outcome, runtime, lateness, worker,
    replica, epoch, task id, and a note (why skipped, or the error).

    OUTCOME, RUNTIME (seconds, of the last execution) and WORKER are recorded by workers with
    pg_beat_track_runs on; '-' until the run finishes (or without tracking).

    JSON: an array of objects with keys id, schedule, due_at, claimed_at, sent_at, status,
    lateness_ms, replica, epoch, task_id, error, reason, worker, started_at, finished_at,
    outcome, runtime, outcome_error, attempts, duplicates; with --follow, one such object per
    line.
    """
    if ctx.invoked_subcommand is not None:
        return  # a subcommand (``runs audit``) reads its own options
    filters = RunFilter(schedule_name, since, outcome, failed)
    if follow:
        _follow(env, filters, limit, as_json)
        return
    from pg_beat import status

    with env.connect() as conn:
        rows = _recent_runs(conn, env, filters, limit)
    items = [run_item(r) for r in rows]
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo("no runs" + (f" of schedule {schedule_name!r}" if schedule_name else ""))
        return
    click.echo(status.render_table(HEADERS, [_cells(i) for i in items]))


@dataclass(frozen=True)
class RunFilter:
    """Which runs to show: of one schedule, due since, with an outcome, failed only."""

    schedule: str | None = None
    since: str | None = None
    outcome: str | None = None
    failed: bool = False

    def keeps(self, row: Mapping[Any, Any]) -> bool:
        """Whether --follow prints ``row`` (the schedule is filtered by the query)."""
        if self.outcome is not None and row["outcome"] != self.outcome:
            return False
        return not self.failed or (
            row["outcome"] in ("failure", "lost") or row["status"] == "failed"
        )


def _recent_runs(
    conn: Connection, env: Env, filters: RunFilter, limit: int
) -> Sequence[Mapping[Any, Any]]:
    """The newest ``limit`` runs kept by ``filters``, newest first."""
    from pg_beat import schedules, store

    start: datetime | None = None
    if filters.since is not None:
        try:
            start = store.connections.db_now(conn) - timedelta(
                seconds=schedules.parse_duration(filters.since)
            )
        except ValueError:
            start = parse_time(filters.since, "--since")
    if (
        filters.schedule is not None
        and store.schedules.get_schedule(conn, env.group, filters.schedule) is None
    ):
        raise ScheduleNotFound(filters.schedule)
    return store.runs.list_runs(
        conn,
        env.group,
        schedule=filters.schedule,
        since=start,
        outcome=filters.outcome,
        failed=filters.failed,
        limit=limit,
    )


def _follow(env: Env, filters: RunFilter, limit: int, as_json: bool) -> None:
    follower = Follower(env.group, filters.schedule, as_json, keeps=filters.keeps)

    def step(conn: Connection) -> None:
        if follower.after is not None:
            follower.poll(conn)
            return
        from pg_beat import store

        # The last id first: a run recorded while the recent ones are read is not lost.
        after = store.runs.last_run_id(conn)
        recent = _recent_runs(conn, env, filters, limit)
        follower.start(after, list(reversed(recent)))

    repeat_until_interrupted(env, step, FOLLOW_POLL)
