"""``pg-beat runs``: the run log, newest first."""

from __future__ import annotations

from datetime import datetime, timedelta

import click

from pg_beat.cli.context import Env, json_option, parse_time, pass_env, print_json
from pg_beat.exceptions import ScheduleNotFound


@click.command()
@click.option("--schedule", "schedule_name", metavar="NAME", help="Only this schedule's runs.")
@click.option("--since", metavar="AGE|TIME", help="Due since a duration ago (10m) or an ISO time.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
@pass_env
def runs(env: Env, schedule_name: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """The run log, newest first: due time, status, lateness, replica, epoch, task id.

    JSON: an array of objects with keys id, schedule, due_at, claimed_at, sent_at, status,
    lateness_ms, replica, epoch, task_id, error.
    """
    from pg_beat import schedules, status, store

    with env.connect() as conn:
        start: datetime | None = None
        if since is not None:
            try:
                start = store.db_now(conn) - timedelta(seconds=schedules.parse_duration(since))
            except ValueError:
                start = parse_time(since, "--since")
        if schedule_name is not None and store.get_schedule(conn, env.group, schedule_name) is None:
            raise ScheduleNotFound(schedule_name)
        rows = store.list_runs(conn, env.group, schedule=schedule_name, since=start, limit=limit)
    items = [
        {
            "id": r["id"],
            "schedule": r["schedule_name"],
            "due_at": r["due_at"],
            "claimed_at": r["claimed_at"],
            "sent_at": r["sent_at"],
            "status": r["status"],
            "lateness_ms": (
                None if r["lateness"] is None else round(r["lateness"].total_seconds() * 1000, 1)
            ),
            "replica": r["replica"],
            "epoch": r["epoch"],
            "task_id": r["task_id"],
            "error": r["error"],
        }
        for r in rows
    ]
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo("no runs" + (f" of schedule {schedule_name!r}" if schedule_name else ""))
        return
    click.echo(
        status.render_table(
            ("DUE", "SCHEDULE", "STATUS", "LATENESS MS", "REPLICA", "EPOCH", "TASK ID"),
            [
                [
                    status.utc(i["due_at"]),
                    i["schedule"],
                    i["status"],
                    i["lateness_ms"],
                    i["replica"],
                    i["epoch"],
                    i["task_id"],
                ]
                for i in items
            ],
        )
    )
