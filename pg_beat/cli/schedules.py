"""``pg-beat schedules``: list, show, add, update, enable, disable, detach, remove, run-now.

``add`` and ``update`` share the definition options (``--every``, ``--cron``, ``--at``, ...),
turned into :class:`~pg_beat.api.ScheduleManager` keyword arguments by ``_schedule_kwargs``.
Errors name these options, not the API's arguments or the table's columns: ``--cron``, not
``crontab`` or ``cron_hour`` (``OPTION_OF``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pg_beat.cli.context import (
    Env,
    json_option,
    parse_time,
    pass_env,
    print_json,
    unknown_group_warning,
    warn,
)
from pg_beat.cli.errors import CliError, CliUsageError
from pg_beat.cli.health import overdue_factor_option
from pg_beat.exceptions import ScheduleError, ScheduleNotFound

if TYPE_CHECKING:
    from pg_beat.api import ScheduleInfo, ScheduleManager
    from pg_beat.health import ScheduleHealth

F = TypeVar("F", bound=Callable[..., Any])

#: The option of 'add' and 'update' that sets each column (``field`` of a ScheduleError).
OPTION_OF = {
    "interval_seconds": "--every",
    "crontab": "--cron",
    "cron_minute": "--cron",
    "cron_hour": "--cron",
    "cron_day_of_week": "--cron",
    "cron_day_of_month": "--cron",
    "cron_month_of_year": "--cron",
    "timezone": "--tz",
    "clocked_at": "--at",
    "solar_event": "--solar",
    "latitude": "--lat",
    "longitude": "--lon",
    "args": "--args",
    "kwargs": "--kwargs",
    "one_off": "--one-off",
    "enabled": "--enabled/--disabled",
    "start_time": "--start",
    "end_time": "--end",
    "misfire_policy": "--misfire",
    "catch_up_limit": "--catch-up-limit",
    "overlap_policy": "--overlap",
    "max_runtime": "--max-runtime",
    "run_once": "--run-once/--no-run-once",
    "description": "--description",
    "name": "NAME",
    "task": "TASK",
}
#: The four ways to say when a schedule runs: option -> key of the parsed options.
DEFINITIONS = {"--every": "every", "--cron": "cron", "--at": "at", "--solar": "solar"}
#: Why --tz does nothing with each of the other definitions.
_TZ_USELESS = {
    "--every": "an interval runs at the same pace in every timezone; use --cron for wall-clock "
    "times",
    "--at": "put the offset in the time itself, e.g. 2030-12-01T09:00+01:00",
    "--solar": "solar events follow the sun at --lat and --lon",
}


@click.group("schedules")
def schedules_group() -> None:
    """List, show, add, update, enable, disable, detach, remove and run schedules."""


def _positive_seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> Any:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a number of seconds > 0")
    return value


def _definition_options(f: F) -> F:
    options = [
        click.option("--every", metavar="DURATION", help="Interval: 30s, 5m, 1h30m or seconds."),
        click.option("--cron", metavar="EXPR", help='Crontab: "minute hour day month weekday".'),
        click.option("--tz", metavar="ZONE", help="Timezone of --cron (only), e.g. Europe/Berlin."),
        click.option(
            "--at",
            metavar="TIME",
            help="Once, at an ISO 8601 time with an offset: 2030-12-01T09:00Z. A time already "
            "past is refused unless --allow-past.",
        ),
        click.option(
            "--allow-past",
            is_flag=True,
            help="Accept an --at time already past: the schedule runs once, at once.",
        ),
        click.option("--solar", metavar="EVENT", help="Solar event (sunset, dawn_civil, ...)."),
        click.option("--lat", type=float, help="Latitude for --solar."),
        click.option("--lon", type=float, help="Longitude for --solar."),
        click.option("--args", "args_json", metavar="JSON", help="Positional args: a JSON array."),
        click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword args: JSON object."),
        click.option("--queue", help="Queue to send to."),
        click.option("--priority", type=click.IntRange(0, 255), help="Message priority (0-255)."),
        click.option(
            "--expires",
            type=float,
            callback=_positive_seconds,
            help="Seconds after its due time at which the task expires.",
        ),
        click.option("--one-off/--no-one-off", default=None, help="Disable after one run."),
        click.option("--disabled/--enabled", default=None, help="Store it disabled/enabled."),
        click.option("--start", metavar="TIME", help="Not before this ISO time ('none' clears)."),
        click.option("--end", metavar="TIME", help="Not after this ISO time ('none' clears)."),
        click.option("--misfire", metavar="POLICY", help="fire_once, skip or catch_up."),
        click.option("--catch-up-limit", type=int, help="Most missed ticks sent by catch_up."),
        click.option(
            "--overlap",
            metavar="POLICY",
            help="While the previous run is unfinished: allow (send anyway), skip, or "
            "buffer_one (send once it finishes); 'default' uses the scheduler's "
            "pg_beat_overlap_policy.",
        ),
        click.option(
            "--max-runtime",
            metavar="SECONDS",
            help="Seconds after which an unfinished run stops blocking the next tick (and is "
            "recorded lost); 'default' uses pg_beat_max_runtime.",
        ),
        click.option(
            "--run-once/--no-run-once",
            default=None,
            help="Workers run each tick once even when the broker delivers it twice.",
        ),
        click.option(
            "--run-once-default",
            is_flag=True,
            help="Use the scheduler's pg_beat_run_once instead of --run-once/--no-run-once.",
        ),
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


def _given_definition(name: str, opts: dict[str, Any], *, required: bool) -> str | None:
    """The one definition option given (--every, --cron, --at or --solar), if any; refuses
    several, none when ``required``, and options that would do nothing with the one given."""
    solar = [k for k in ("solar", "lat", "lon") if opts[k] is not None]
    if solar and len(solar) < 3:
        raise CliUsageError(f"schedule {name!r}: --solar needs an event, --lat and --lon together")
    given = [option for option, key in DEFINITIONS.items() if opts[key] is not None]
    if len(given) > 1:
        raise CliUsageError(
            f"schedule {name!r}: give only one of {', '.join(given)}: each says when it runs"
        )
    chosen = given[0] if given else None
    if chosen is None and required:
        raise CliUsageError(
            f"schedule {name!r}: say when it runs: give one of --every, --cron, --at or --solar"
        )
    if opts["tz"] is not None and chosen in _TZ_USELESS:
        raise CliUsageError(
            f"schedule {name!r}: --tz does not apply to {chosen}: {_TZ_USELESS[chosen]}"
        )
    if opts["allow_past"] and chosen != "--at":
        raise CliUsageError(f"schedule {name!r}: --allow-past goes with --at only")
    return chosen


def _refuse_past(name: str, opts: dict[str, Any], at: datetime, now: datetime) -> None:
    """A clocked schedule whose time is past runs at once: most likely a typo in the date or
    the offset, and a task sent cannot be taken back, so it takes --allow-past."""
    if at < now and not opts["allow_past"]:
        from pg_beat import status

        raise CliError(
            f"schedule {name!r}: --at {opts['at']} is in the past (the database clock says "
            f"{status.utc(now)}) and would run at once: give a later time, or add --allow-past "
            "to run it once now"
        )


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
    if opts["solar"] is not None:
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
    out.update(_overlap_kwargs(name, opts))
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


def _overlap_kwargs(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """overlap_policy, max_runtime and run_once for the options given ('default': None, the
    scheduler's setting); their values are checked by the API, in these options' words."""
    out: dict[str, Any] = {}
    if opts["overlap"] is not None:
        policy = opts["overlap"].strip().lower()
        out["overlap_policy"] = None if policy == "default" else policy
    if opts["max_runtime"] is not None:
        text = opts["max_runtime"].strip().lower()
        if text == "default":
            out["max_runtime"] = None
        else:
            try:
                out["max_runtime"] = float(text)
            except ValueError:
                raise CliUsageError(
                    f"schedule {name!r}: --max-runtime: {opts['max_runtime']!r} is not a number "
                    "of seconds (or 'default')"
                ) from None
    if opts["run_once_default"]:
        if opts["run_once"] is not None:
            raise CliUsageError(
                f"schedule {name!r}: give --run-once-default or --run-once/--no-run-once, not both"
            )
        out["run_once"] = None
    elif opts["run_once"] is not None:
        out["run_once"] = opts["run_once"]
    return out


@contextmanager
def _in_cli_words(env: Env, words: Mapping[str, str] | None = None) -> Iterator[None]:
    """Report a schedule error in this command's words: its options (``words`` over
    ``OPTION_OF``), and for an unknown schedule, a hint when the group itself is unknown."""
    try:
        yield
    except ScheduleNotFound as exc:
        hint = _group_hint(env)
        raise CliError(f"{exc}; {hint}" if hint else str(exc)) from exc
    except ScheduleError as exc:
        names = {**OPTION_OF, **(words or {})}
        word = names.get(exc.field or "", exc.argument) if exc.argument else ""
        raise CliError(exc.worded(word)) from exc


def _group_hint(env: Env) -> str | None:
    """The unknown-group warning, or None (also when it cannot be read: it is only a hint)."""
    from pg_beat.cli.errors import driver_errors
    from pg_beat.exceptions import PgBeatError

    quiet: tuple[type[Exception], ...] = (click.ClickException, PgBeatError, *driver_errors())
    try:
        with env.connect() as conn:
            return unknown_group_warning(conn, env.group)
    except quiet:
        return None


def _echo_schedule(info: ScheduleInfo, verb: str, as_json: bool) -> None:
    if as_json:
        print_json(info.as_dict())
    else:
        state = "" if info.enabled else ", disabled"
        click.echo(f"{verb} schedule {info.name!r}: {info.task}, {info.schedule_text}{state}")


def _failing(error: str | None, width: int | None = None) -> str:
    """``FAILING: <error>`` for a schedule whose last tick could not be sent or whose row is
    invalid (``last_error`` is cleared by the next tick sent), else ``-``."""
    if not error:
        return "-"
    from pg_beat import status

    return "FAILING: " + (status.shorten(error, width) if width else error)


def _health_of(env: Env, names: list[str] | None, factor: float) -> dict[str, ScheduleHealth]:
    """The health of the schedules ``names`` (None: all of the group) by name, judged on the
    database clock, in one query whatever their number."""
    from pg_beat import health, store

    with env.connect() as conn:
        now = store.connections.db_now(conn)
        rows = (
            store.health.health_of_group(conn, env.group)
            if names is None
            else store.health.health_of(conn, env.group, names)
        )
    return {name: health.judge(row, factor, now) for name, row in rows.items()}


def _health_label(found: ScheduleHealth | None) -> str:
    from pg_beat import health

    return "-" if found is None else health.label(found)


def _with_health(info: ScheduleInfo, found: ScheduleHealth | None) -> dict[str, Any]:
    return {**info.as_dict(), "health": None if found is None else found.as_dict()}


@schedules_group.command("list")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many.")
@overdue_factor_option
@json_option
@pass_env
def schedules_list(env: Env, limit: int | None, overdue_factor: float, as_json: bool) -> None:
    """Every schedule of the group, soonest due first.

    LAST ERROR says FAILING for a schedule whose last tick could not be sent or whose row is
    invalid. HEALTH is what tracking workers recorded: ok, 'failing xN' (its last N runs
    failed), 'overdue 2h' (no success for 2h, over --overdue-factor times its period),
    untracked (no outcome recorded), disabled or parked. An empty group in which no
    scheduler ever ran is warned about on stderr (a typo in --group?). JSON: an array of
    'show' objects (without health.runtime).
    """
    from pg_beat import status, store

    with env.connect() as conn:
        now = store.connections.db_now(conn)
    with env.manager() as manager:
        infos = manager.list(limit=limit)
    healths = _health_of(env, None if limit is None else [i.name for i in infos], overdue_factor)
    if not infos:
        with env.connect() as conn:
            warning = unknown_group_warning(conn, env.group)
        if warning:
            warn(warning)
    if as_json:
        print_json([_with_health(info, healths.get(info.name)) for info in infos])
        return
    if not infos:
        click.echo(f"no schedules in group {env.group!r}")
        return

    def until(when: datetime | None) -> float | None:
        return None if when is None else (when - now).total_seconds()

    click.echo(
        status.render_table(
            (
                "NAME",
                "TASK",
                "SCHEDULE",
                "ENABLED",
                "NEXT DUE",
                "LAST RUN",
                "RUNS",
                "HEALTH",
                "LAST ERROR",
            ),
            [
                [
                    i.name,
                    i.task,
                    i.schedule_text,
                    "yes" if i.enabled else "no",
                    status.relative(until(i.next_run_at)) if i.enabled else "-",
                    status.relative(until(i.last_run_at)) if i.last_run_at else "never",
                    i.total_run_count,
                    _health_label(healths.get(i.name)),
                    _failing(i.last_error, 40),
                ]
                for i in infos
            ],
        )
    )


@schedules_group.command("show")
@click.argument("name")
@overdue_factor_option
@json_option
@pass_env
def schedules_show(env: Env, name: str, overdue_factor: float, as_json: bool) -> None:
    """One schedule in full, with its health.

    JSON keys: name, task, kind, schedule, schedule_text, args, kwargs, options, enabled,
    one_off, description, misfire_policy, catch_up_limit, overlap_policy, max_runtime,
    run_once, buffered_due_at, next_run_at, last_run_at, total_run_count, last_error, source,
    created_at, updated_at, health (state, label, tracked, last_outcome, last_finished_at,
    last_success_at, consecutive_failures, last_error, overdue, overdue_for, reference_at,
    period, runtime: runs, p50, p95 in seconds over its last 100 finished runs).
    """
    from pg_beat import health, status, store

    with env.connect() as conn:
        now = store.connections.db_now(conn)
        row = store.health.health_of(conn, env.group, [name]).get(name)
        runtimes = [] if row is None else store.health.recent_runtimes(conn, int(row["id"]))
    with env.manager() as manager, _in_cli_words(env):
        info = manager.get(name)
    found = None if row is None else health.judge(row, overdue_factor, now)
    runtime = health.runtime_summary(runtimes)
    if as_json:
        out = _with_health(info, found)
        if out["health"] is not None:
            out["health"]["runtime"] = runtime
        print_json(out)
        return
    spec = info.spec

    def when(value: datetime | None) -> str:
        if value is None:
            return "-"
        return f"{status.utc(value)} ({status.relative((value - now).total_seconds())})"

    source = info.source
    if source == "config":
        source += " (an app's beat_schedule: its next start resets edits; see 'detach')"
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
        ("overlap policy", info.overlap_policy or "(scheduler default)"),
        ("max runtime", _seconds_or_default(info.max_runtime)),
        ("run once", _yes_no_or_default(info.run_once)),
        ("buffered tick", when(info.buffered_due_at) if info.buffered_due_at else "-"),
        ("start", when(spec.start_time)),
        ("end", when(spec.end_time)),
        ("next due", when(info.next_run_at) if info.enabled else "- (disabled)"),
        ("last run", when(info.last_run_at) if info.last_run_at else "never"),
        ("runs", info.total_run_count),
        ("last error", _failing(info.last_error)),
        ("description", info.description or "-"),
        ("source", source),
        ("created", status.utc(info.created_at)),
        ("updated", status.utc(info.updated_at)),
    ]
    if found is not None:
        fields += _health_fields(found, runtime, when)
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        click.echo(f"{label.ljust(width)}  {value}")


def _health_fields(
    found: ScheduleHealth, runtime: Mapping[str, Any], when: Callable[[datetime | None], str]
) -> list[tuple[str, Any]]:
    """The health block of 'show': what tracking workers recorded, and whether it is late."""
    from pg_beat import health, schedules

    def seconds(value: float | None) -> str:
        return "-" if value is None else schedules.format_duration(round(value, 3) or 0.001)

    if not found.tracked:
        outcome = "untracked (no worker recorded an outcome: pg_beat_track_runs)"
    else:
        outcome = found.last_outcome or "-"
        if found.last_finished_at is not None:
            outcome += f", finished {when(found.last_finished_at)}"
    spread = (
        f"p50 {seconds(runtime['p50'])}, p95 {seconds(runtime['p95'])} "
        f"(last {runtime['runs']} finished runs)"
        if runtime["runs"]
        else "-"
    )
    return [
        ("health", health.label(found)),
        ("last outcome", outcome),
        ("last success", when(found.last_success_at) if found.last_success_at else "never"),
        ("failures in a row", found.consecutive_failures),
        ("last task error", found.last_error or "-"),
        ("runtime", spread),
        (
            "overdue",
            "-"
            if found.period is None
            else f"{'yes' if found.overdue_for is not None else 'no'} (reference "
            f"{when(found.reference_at)}, period {seconds(found.period)})",
        ),
    ]


def _seconds_or_default(value: float | None) -> str:
    return "(scheduler default)" if value is None else f"{value:g}s"


def _yes_no_or_default(value: bool | None) -> str:
    return "(scheduler default)" if value is None else ("yes" if value else "no")


def _db_now(env: Env) -> datetime:
    """The database clock (and a clear, fast failure when the schema is not at head)."""
    from pg_beat import store

    with env.connect() as conn:
        return store.connections.db_now(conn)


@schedules_group.command("add")
@click.argument("name")
@click.argument("task")
@_definition_options
@json_option
@pass_env
def schedules_add(env: Env, /, name: str, task: str, as_json: bool, **opts: Any) -> None:
    """Add schedule NAME running TASK: give one of --every, --cron, --at or --solar."""
    chosen = _given_definition(name, opts, required=True)
    kwargs = _schedule_kwargs(name, opts)
    now = _db_now(env)
    if "clocked" in kwargs:
        _refuse_past(name, opts, kwargs["clocked"], now)
    with env.manager() as manager, _in_cli_words(env, {"kind": chosen or "kind"}):
        info = manager.create(name, task, **kwargs)
    _echo_schedule(info, "added", as_json)


@schedules_group.command("update")
@click.argument("name")
@click.option("--task", help="New task name.")
@_definition_options
@json_option
@pass_env
def schedules_update(env: Env, /, name: str, task: str | None, as_json: bool, **opts: Any) -> None:
    """Change some fields of NAME; the result is validated as a whole before it is written.

    A schedule from an app's beat_schedule (source 'config') is reset by that app's next
    start: a note on stderr says so; 'pg-beat schedules detach NAME' keeps the change.
    """
    chosen = _given_definition(name, opts, required=False)
    now = _db_now(env)
    words = {"task": "--task", "kind": chosen or "kind"}
    with env.manager() as manager, _in_cli_words(env, words):
        needs_current = any(opts[k] is not None for k in ("queue", "priority", "expires"))
        tz_only = opts["tz"] is not None and chosen is None
        current = manager.get(name) if needs_current or tz_only else None
        if tz_only and current is not None and current.kind != "crontab":
            raise CliUsageError(
                f"schedule {name!r}: --tz applies to crontab schedules only, and this one runs "
                f"{current.schedule_text}: give --cron with it"
            )
        kwargs = _schedule_kwargs(
            name, opts, current.options if needs_current and current else None
        )
        if task is not None:
            kwargs["task"] = task
        if not kwargs:
            raise CliUsageError(
                f"schedule {name!r}: nothing to update (see 'pg-beat schedules update --help')"
            )
        if "clocked" in kwargs:
            _refuse_past(name, opts, kwargs["clocked"], now)
        info = manager.update(name, **kwargs)
    _echo_schedule(info, "updated", as_json)


@schedules_group.command("detach")
@click.argument("name")
@json_option
@pass_env
def schedules_detach(env: Env, name: str, as_json: bool) -> None:
    """Detach NAME from the app whose beat_schedule wrote it.

    The schedule (source 'config') becomes one of its own (source 'api'): no start of that
    app changes or removes it again. Edit it here from now on, and take it out of the app's
    beat_schedule, whose starts otherwise warn that the name is taken. JSON: as 'show'.
    """
    with env.connect():
        pass  # schema check
    with env.manager() as manager, _in_cli_words(env):
        info = manager.detach(name)
    if as_json:
        print_json(info.as_dict())
        return
    click.echo(
        f"detached schedule {info.name!r}: {info.task}, {info.schedule_text}; no app's "
        "beat_schedule changes it now"
    )


def _simple(
    verb: str, doc: str, action: Callable[[ScheduleManager, str], ScheduleInfo | None]
) -> None:
    @schedules_group.command(verb, help=doc)
    @click.argument("name")
    @json_option
    @pass_env
    def command(env: Env, name: str, as_json: bool) -> None:
        with env.connect():
            pass  # schema check
        with env.manager() as manager, _in_cli_words(env):
            info = action(manager, name)
        if info is not None:
            _echo_schedule(info, f"{verb}d", as_json)
        elif as_json:
            print_json({"name": name, "action": verb, "ok": True})
        else:
            click.echo(f"schedule {name!r} {verb}d")


# Functions rather than ScheduleManager's methods, so that pg_beat.api (and with it SQLAlchemy
# and Celery) is imported only when a command runs.
def _enable(manager: ScheduleManager, name: str) -> ScheduleInfo:
    return manager.enable(name)


def _disable(manager: ScheduleManager, name: str) -> ScheduleInfo:
    return manager.disable(name)


def _remove(manager: ScheduleManager, name: str) -> None:
    manager.delete(name)


_simple("enable", "Enable NAME (it is planned again from now).", _enable)
_simple("disable", "Disable NAME (it keeps its definition and history).", _disable)
_simple("remove", "Delete NAME and its run history.", _remove)


@schedules_group.command("run-now")
@click.argument("name")
@json_option
@pass_env
def schedules_run_now(env: Env, name: str, as_json: bool) -> None:
    """Send one extra tick of NAME now.

    An enabled schedule is made due now, and its grid resumes afterwards. A disabled schedule
    sends one tick and stays disabled, its grid left as it was. Asked again before the leader
    has taken that tick, it is still one tick. JSON keys: name, action, ok, enabled.
    """
    with env.connect():
        pass  # schema check
    with env.manager() as manager, _in_cli_words(env):
        info = manager.run_now(name)
    if as_json:
        print_json({"name": name, "action": "run-now", "ok": True, "enabled": info.enabled})
    elif info.enabled:
        click.echo(f"schedule {name!r} made due now")
    else:
        click.echo(f"schedule {name!r} made due now, once: it stays disabled")
