"""Managing schedules from Python with :class:`pg_beat.ScheduleManager`.

Schedules live in PostgreSQL, so any process can add, change or remove them while the beat
replicas run; the leader hears of each change at once (``LISTEN/NOTIFY``) and reloads only that
schedule. Every write is validated first and happens in one transaction: bad input raises
:class:`pg_beat.exceptions.InvalidSchedule` and writes nothing.

    export PG_BEAT_DATABASE_URL=postgresql://postgres@127.0.0.1/pg_beat_example
    pg-beat db upgrade
    python -m examples.manage_schedules          # --keep leaves the schedules in place

The tasks are those of ``examples/app.py``. ``examples/manage_schedules.sh`` does the same
with the ``pg-beat`` CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from datetime import datetime, timedelta, timezone

from pg_beat import ScheduleInfo, ScheduleManager
from pg_beat.exceptions import (
    InvalidSchedule,
    PgBeatError,
    ScheduleExists,
    ScheduleNotFound,
)

NAMES = ("example-heartbeat", "example-tidy-berlin", "example-once")


def show(info: ScheduleInfo) -> None:
    # next_run_at stays empty until the leader plans the schedule (milliseconds, when one runs).
    due = f", next due {info.next_run_at:%Y-%m-%d %H:%M:%S}Z" if info.next_run_at else ""
    state = "" if info.enabled else " (disabled)"
    print(f"  {info.name}: {info.task}, {info.schedule_text}{state}{due}")


def tour(schedules: ScheduleManager, keep: bool) -> None:
    for name in NAMES:  # what an earlier --keep run left
        with contextlib.suppress(ScheduleNotFound):
            schedules.delete(name)

    # Three ways to say when: an interval (seconds, a timedelta or "30s", "1h30m"), a crontab
    # in a timezone (DST handled by Celery's crontab), and once at a given time.
    schedules.create("example-heartbeat", "examples.app.heartbeat", every="30s")
    schedules.create(
        "example-tidy-berlin",
        "examples.app.tidy",
        crontab="*/5 8-18 * * mon-fri",
        timezone="Europe/Berlin",
        misfire_policy="skip",  # after downtime, do not send the ticks it missed
        description="tidy up every five minutes in Berlin office hours",
    )
    schedules.create(
        "example-once",
        "examples.app.tidy",
        clocked=datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=1),
        kwargs={},
        options={"queue": "celery", "expires": 600},  # Celery's apply_async options
    )
    print("created:")
    for info in schedules.list():
        if info.name in NAMES:
            show(info)

    # Errors name the schedule and the field, and nothing is written.
    for attempt in (
        lambda: schedules.create("example-bad", "examples.app.tidy", crontab="61 * * * *"),
        lambda: schedules.create("example-heartbeat", "examples.app.heartbeat", every=10),
        lambda: schedules.update("example-no-such", every=10),
    ):
        try:
            attempt()
        except (InvalidSchedule, ScheduleExists, ScheduleNotFound) as exc:
            print(f"refused: {exc}")

    # Change a field, pause and resume, or make a schedule due right now.
    show(schedules.update("example-heartbeat", every=timedelta(seconds=10)))
    show(schedules.disable("example-tidy-berlin"))
    show(schedules.enable("example-tidy-berlin"))
    schedules.run_now("example-heartbeat")
    print("example-heartbeat made due now")

    if not keep:
        for name in NAMES:
            schedules.delete(name)
        print(f"removed {', '.join(NAMES)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.manage_schedules")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PG_BEAT_DATABASE_URL"),
        help="a migrated database (default: $PG_BEAT_DATABASE_URL)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the example schedules")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("set PG_BEAT_DATABASE_URL or pass --database-url")
    try:
        with ScheduleManager(args.database_url) as schedules:
            tour(schedules, args.keep)
    except PgBeatError as exc:  # e.g. the database is down, or another run left a schedule
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
