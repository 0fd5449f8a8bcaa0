"""``pg-beat runs``: the run log, newest first, or followed as it is written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
#: Runs followed while still 'claimed', to print them again once sent (or failed).
MAX_PENDING = 1000

HEADERS = ("DUE", "SCHEDULE", "STATUS", "LATENESS MS", "REPLICA", "EPOCH", "TASK ID")
_WIDTHS = (24, 20, 8, 11, 16, 5)  # --follow cannot align on rows it has not seen yet


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
    }


def _cells(item: Mapping[Any, Any]) -> list[Any]:
    from pg_beat import status

    return [
        status.utc(item["due_at"]),
        item["schedule"],
        item["status"],
        item["lateness_ms"],
        item["replica"],
        item["epoch"],
        item["task_id"],
    ]


def _line(cells: Sequence[Any]) -> str:
    """One run on one line, in fixed columns (numbers right-aligned)."""
    parts = []
    for i, value in enumerate(cells):
        text = "-" if value is None else str(value)
        if i < len(_WIDTHS):
            numeric = isinstance(value, (int, float)) or i == 3
            text = text.rjust(_WIDTHS[i]) if numeric else text.ljust(_WIDTHS[i])
        parts.append(text)
    return "  ".join(parts).rstrip()


@dataclass
class Follower:
    """What ``runs --follow`` has printed: the last run id seen, and the runs seen while still
    'claimed' (printed again when their status changes)."""

    group: str
    schedule: str | None
    as_json: bool
    after: int | None = None
    pending: dict[int, str] = field(default_factory=dict)

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
            run_id, state = int(row["id"]), str(row["status"])
            if run_id in self.pending and self.pending[run_id] == state:
                continue  # still claimed: said already
            self.pending.pop(run_id, None)
            if state == "claimed":
                self.pending[run_id] = state
                while len(self.pending) > MAX_PENDING:
                    del self.pending[next(iter(self.pending))]
            self.after = max(self.after or 0, run_id)
            item = run_item(row)
            click.echo(status.dumps(item, compact=True) if self.as_json else _line(_cells(item)))


@click.group(invoke_without_command=True)
@click.option("--schedule", "schedule_name", metavar="NAME", help="Only this schedule's runs.")
@click.option("--since", metavar="AGE|TIME", help="Due since a duration ago (10m) or an ISO time.")
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
    limit: int,
    follow: bool,
    as_json: bool,
) -> None:
    """The run log, newest first: due time, status, lateness, replica, epoch, task id.

    JSON: an array of objects with keys id, schedule, due_at, claimed_at, sent_at, status,
    lateness_ms, replica, epoch, task_id, error; with --follow, one such object per line.
    """
    if ctx.invoked_subcommand is not None:
        return  # a subcommand (``runs audit``) reads its own options
    if follow:
        _follow(env, schedule_name, since, limit, as_json)
        return
    from pg_beat import status

    with env.connect() as conn:
        rows = _recent_runs(conn, env, schedule_name, since, limit)
    items = [run_item(r) for r in rows]
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo("no runs" + (f" of schedule {schedule_name!r}" if schedule_name else ""))
        return
    click.echo(status.render_table(HEADERS, [_cells(i) for i in items]))


def _recent_runs(
    conn: Connection, env: Env, schedule_name: str | None, since: str | None, limit: int
) -> Sequence[Mapping[Any, Any]]:
    """The newest ``limit`` runs (of ``schedule_name``, due ``since``), newest first."""
    from pg_beat import schedules, store

    start: datetime | None = None
    if since is not None:
        try:
            start = store.connections.db_now(conn) - timedelta(
                seconds=schedules.parse_duration(since)
            )
        except ValueError:
            start = parse_time(since, "--since")
    if (
        schedule_name is not None
        and store.schedules.get_schedule(conn, env.group, schedule_name) is None
    ):
        raise ScheduleNotFound(schedule_name)
    return store.runs.list_runs(conn, env.group, schedule=schedule_name, since=start, limit=limit)


def _follow(
    env: Env, schedule_name: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    follower = Follower(env.group, schedule_name, as_json)

    def step(conn: Connection) -> None:
        if follower.after is not None:
            follower.poll(conn)
            return
        from pg_beat import store

        # The last id first: a run recorded while the recent ones are read is not lost.
        after = store.runs.last_run_id(conn)
        recent = _recent_runs(conn, env, schedule_name, since, limit)
        follower.start(after, list(reversed(recent)))

    repeat_until_interrupted(env, step, FOLLOW_POLL)
