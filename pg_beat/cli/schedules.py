"""``pg-beat schedules``: list, show, add, update, enable, disable, remove and run-now.

``add`` and ``update`` share the definition options (``--every``, ``--cron``, ``--at``, ...),
turned into :class:`~pg_beat.api.ScheduleManager` keyword arguments by ``_schedule_kwargs``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pg_beat.cli.context import Env, json_option, parse_time, pass_env, print_json
from pg_beat.cli.errors import CliError, CliUsageError

if TYPE_CHECKING:
    from pg_beat.api import ScheduleInfo, ScheduleManager

F = TypeVar("F", bound=Callable[..., Any])


@click.group("schedules")
def schedules_group() -> None:
    """List, show, add, update, enable, disable, remove and run schedules."""


def _definition_options(f: F) -> F:
    options = [
        click.option("--every", metavar="DURATION", help="Interval: 30s, 5m, 1h30m or seconds."),
        click.option("--cron", metavar="EXPR", help='Crontab: "minute hour day month weekday".'),
        click.option("--tz", metavar="ZONE", help="Timezone of --cron, e.g. Europe/Berlin."),
        click.option("--at", metavar="TIME", help="Once, at an ISO 8601 time: 2026-12-01T09:00Z."),
        click.option("--solar", metavar="EVENT", help="Solar event (sunset, dawn_civil, ...)."),
        click.option("--lat", type=float, help="Latitude for --solar."),
        click.option("--lon", type=float, help="Longitude for --solar."),
        click.option("--args", "args_json", metavar="JSON", help="Positional args: a JSON array."),
        click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword args: JSON object."),
        click.option("--queue", help="Queue to send to."),
        click.option("--priority", type=int, help="Message priority (0-255)."),
        click.option("--expires", type=float, help="Seconds after which the task expires."),
        click.option("--one-off/--no-one-off", default=None, help="Disable after one run."),
        click.option("--disabled/--enabled", default=None, help="Store it disabled/enabled."),
        click.option("--start", metavar="TIME", help="Not before this ISO time ('none' clears)."),
        click.option("--end", metavar="TIME", help="Not after this ISO time ('none' clears)."),
        click.option("--misfire", metavar="POLICY", help="fire_once, skip or catch_up."),
        click.option("--catch-up-limit", type=int, help="Most missed ticks sent by catch_up."),
        click.option("--description", help="Free text."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _json_arg(name: str, option: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"schedule {name!r}: {option} is not valid JSON: {exc}") from exc


def _optional_time(name: str, option: str, text: str | None) -> tuple[bool, datetime | None]:
    if text is None:
        return False, None
    if text.strip().lower() == "none":
        return True, None
    return True, parse_time(text, option, name)


def _schedule_kwargs(
    name: str, opts: dict[str, Any], current_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """ScheduleManager.create/update keyword arguments for the options given."""
    out: dict[str, Any] = {}
    if opts["every"] is not None:
        out["every"] = opts["every"]
    if opts["cron"] is not None:
        out["crontab"] = opts["cron"]
    if opts["at"] is not None:
        out["clocked"] = parse_time(opts["at"], "--at", name)
    if opts["solar"] is not None or opts["lat"] is not None or opts["lon"] is not None:
        if opts["solar"] is None or opts["lat"] is None or opts["lon"] is None:
            raise CliError(f"schedule {name!r}: --solar needs an event, --lat and --lon together")
        out["solar"] = (opts["solar"], opts["lat"], opts["lon"])
    plain = {
        "timezone": opts["tz"],
        "args": _json_arg(name, "--args", opts["args_json"]),
        "kwargs": _json_arg(name, "--kwargs", opts["kwargs_json"]),
        "one_off": opts["one_off"],
        "enabled": None if opts["disabled"] is None else not opts["disabled"],
        "misfire_policy": opts["misfire"],
        "catch_up_limit": opts["catch_up_limit"],
        "description": opts["description"],
    }
    out.update({k: v for k, v in plain.items() if v is not None})
    for key, option in (("start_time", "--start"), ("end_time", "--end")):
        given, value = _optional_time(name, option, opts[key.split("_")[0]])
        if given:
            out[key] = value
    extra = {
        k: v
        for k, v in (
            ("queue", opts["queue"]),
            ("priority", opts["priority"]),
            ("expires", opts["expires"]),
        )
        if v is not None
    }
    if extra:
        out["options"] = {**(current_options or {}), **extra}
    return out


def _echo_schedule(info: ScheduleInfo, verb: str, as_json: bool) -> None:
    if as_json:
        print_json(info.as_dict())
    else:
        state = "" if info.enabled else ", disabled"
        click.echo(f"{verb} schedule {info.name!r}: {info.task}, {info.schedule_text}{state}")


@schedules_group.command("list")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many.")
@json_option
@pass_env
def schedules_list(env: Env, limit: int | None, as_json: bool) -> None:
    """Every schedule of the group, soonest due first. JSON: an array of 'show' objects."""
    from pg_beat import status, store

    with env.connect() as conn:
        now = store.db_now(conn)
    with env.manager() as manager:
        infos = manager.list(limit=limit)
    if as_json:
        print_json([info.as_dict() for info in infos])
        return
    if not infos:
        click.echo(f"no schedules in group {env.group!r}")
        return

    def until(when: datetime | None) -> float | None:
        return None if when is None else (when - now).total_seconds()

    click.echo(
        status.render_table(
            ("NAME", "TASK", "SCHEDULE", "ENABLED", "NEXT DUE", "LAST RUN", "RUNS", "LAST ERROR"),
            [
                [
                    i.name,
                    i.task,
                    i.schedule_text,
                    "yes" if i.enabled else "no",
                    status.relative(until(i.next_run_at)) if i.enabled else "-",
                    status.relative(until(i.last_run_at)) if i.last_run_at else "never",
                    i.total_run_count,
                    status.shorten(i.last_error, 40) if i.last_error else "-",
                ]
                for i in infos
            ],
        )
    )


@schedules_group.command("show")
@click.argument("name")
@json_option
@pass_env
def schedules_show(env: Env, name: str, as_json: bool) -> None:
    """One schedule in full.

    JSON keys: name, task, kind, schedule, schedule_text, args, kwargs, options, enabled,
    one_off, description, misfire_policy, catch_up_limit, next_run_at, last_run_at,
    total_run_count, last_error, source, created_at, updated_at.
    """
    from pg_beat import status, store

    with env.connect() as conn:
        now = store.db_now(conn)
    with env.manager() as manager:
        info = manager.get(name)
    if as_json:
        print_json(info.as_dict())
        return
    spec = info.spec

    def when(value: datetime | None) -> str:
        if value is None:
            return "-"
        return f"{status.utc(value)} ({status.relative((value - now).total_seconds())})"

    fields = [
        ("name", info.name),
        ("task", info.task),
        ("schedule", info.schedule_text),
        ("enabled", "yes" if info.enabled else "no"),
        ("one-off", "yes" if info.one_off else "no"),
        ("args", json.dumps(info.args)),
        ("kwargs", json.dumps(info.kwargs)),
        ("options", json.dumps(info.options)),
        ("misfire policy", info.misfire_policy or "(scheduler default)"),
        ("catch-up limit", info.catch_up_limit or "(scheduler default)"),
        ("start", when(spec.start_time)),
        ("end", when(spec.end_time)),
        ("next due", when(info.next_run_at) if info.enabled else "- (disabled)"),
        ("last run", when(info.last_run_at) if info.last_run_at else "never"),
        ("runs", info.total_run_count),
        ("last error", info.last_error or "-"),
        ("description", info.description or "-"),
        ("source", info.source),
        ("created", status.utc(info.created_at)),
        ("updated", status.utc(info.updated_at)),
    ]
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        click.echo(f"{label.ljust(width)}  {value}")


@schedules_group.command("add")
@click.argument("name")
@click.argument("task")
@_definition_options
@json_option
@pass_env
def schedules_add(env: Env, /, name: str, task: str, as_json: bool, **opts: Any) -> None:
    """Add schedule NAME running TASK: give one of --every, --cron, --at or --solar."""
    kwargs = _schedule_kwargs(name, opts)
    with env.connect():
        pass  # schema check
    with env.manager() as manager:
        info = manager.create(name, task, **kwargs)
    _echo_schedule(info, "added", as_json)


@schedules_group.command("update")
@click.argument("name")
@click.option("--task", help="New task name.")
@_definition_options
@json_option
@pass_env
def schedules_update(env: Env, /, name: str, task: str | None, as_json: bool, **opts: Any) -> None:
    """Change some fields of NAME; the result is validated as a whole before it is written."""
    with env.connect():
        pass
    with env.manager() as manager:
        needs_current = any(opts[k] is not None for k in ("queue", "priority", "expires"))
        current_options = manager.get(name).options if needs_current else None
        kwargs = _schedule_kwargs(name, opts, current_options)
        if task is not None:
            kwargs["task"] = task
        if not kwargs:
            raise CliUsageError(
                f"schedule {name!r}: nothing to update (see 'pg-beat schedules update --help')"
            )
        info = manager.update(name, **kwargs)
    _echo_schedule(info, "updated", as_json)


def _simple(
    verb: str, doc: str, action: Callable[[ScheduleManager, str], ScheduleInfo | None]
) -> None:
    @schedules_group.command(verb, help=doc)
    @click.argument("name")
    @json_option
    @pass_env
    def command(env: Env, name: str, as_json: bool) -> None:
        with env.connect():
            pass
        with env.manager() as manager:
            info = action(manager, name)
        if info is not None:
            _echo_schedule(info, f"{verb}d", as_json)
        elif as_json:
            print_json({"name": name, "action": verb, "ok": True})
        else:
            past = {"remove": "removed", "run-now": "made due now"}[verb]
            click.echo(f"schedule {name!r} {past}")


# Functions rather than ScheduleManager's methods, so that pg_beat.api (and with it SQLAlchemy
# and Celery) is imported only when a command runs.
def _enable(manager: ScheduleManager, name: str) -> ScheduleInfo:
    return manager.enable(name)


def _disable(manager: ScheduleManager, name: str) -> ScheduleInfo:
    return manager.disable(name)


def _run_now(manager: ScheduleManager, name: str) -> None:
    manager.run_now(name)


def _remove(manager: ScheduleManager, name: str) -> None:
    manager.delete(name)


_simple("enable", "Enable NAME (it is planned again from now).", _enable)
_simple("disable", "Disable NAME (it keeps its definition and history).", _disable)
_simple("remove", "Delete NAME and its run history.", _remove)
_simple("run-now", "Make NAME due now (and enabled); its grid resumes afterwards.", _run_now)
