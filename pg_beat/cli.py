"""The ``pg-beat`` command line: migrations, cluster status, health check, schedules, run log.

Exit codes, for scripts:

== =====================================================================================
0  success (``check``: healthy; ``db check``: schema at head, no drift)
1  bad input or state: unknown schedule, invalid definition, schema not migrated, a
   database error; ``check``: unhealthy; ``db check``: behind head or drift
2  usage: unknown option, missing argument, no database URL
3  the database is unreachable (refused, unknown host, authentication, no such database,
   connection lost)
== =====================================================================================

``status`` exits 0 whatever its verdict (use ``check`` for a yes/no); ``check`` exits 3,
not 1, when it cannot reach the database. Every error is one line on stderr,
``pg-beat: error: ...``; passwords are never printed.

``--json`` output is stable (times ISO 8601, durations and ages in seconds, negative = past):

- ``schedules show|add|update|enable|disable``: name, task, kind, schedule (the timing
  columns that are set), schedule_text, args, kwargs, options, enabled, one_off,
  description, misfire_policy, catch_up_limit, next_run_at, last_run_at, total_run_count,
  last_error, source, created_at, updated_at. ``schedules list``: an array of those.
  ``schedules remove|run-now``: name, action, ok.
- ``runs``: an array of id, schedule, due_at, claimed_at, sent_at, status, lateness_ms,
  replica, epoch, task_id, error.
- ``status``: group, db_now, verdict {state, message}, lease {status, holder, epoch, host,
  pid, backend_pid, backend_alive, acquired_at, heartbeat_at, heartbeat_age, expires_at,
  expires_in, progress_at, progress_age}, replicas [{name, role, host, pid, version,
  backend_pid, started_at, last_seen_at, last_seen_age}], lock [{role (holder|waiter), pid,
  application_name, state, client_addr, backend_start, query, state_age}], blocked and
  leader_backends [{pid, application_name, state, wait_event_type, wait_event, query,
  query_age, xact_age, blocked_by [{pid, application_name, state, query, age}]}], failovers
  [{epoch, holder, host, pid, acquired_at, ended_at, reason, previous_holder}], next_due
  [{name, task, schedule, next_run_at, due_in}], long_transactions [{pid, application_name,
  state, query, xact_age, tables}]. verdict.state is one of ``healthy``,
  ``no leader``, ``leader stale``, ``blocked``; lease.status one of ``free``, ``released``,
  ``held``, ``holder_gone``, ``stale``.
- ``check``: healthy, state, message, lease (as in ``status``).
- ``db current``: current, head, up_to_date. ``db check``: ok, current, head, reason.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any, TypeVar

import click
import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from pg_beat import __version__, migrate, schedules, status, store
from pg_beat.api import ScheduleInfo, ScheduleManager
from pg_beat.config import Settings
from pg_beat.exceptions import (
    ConfigurationError,
    DatabaseUnavailable,
    PgBeatError,
    ScheduleNotFound,
    SchemaMismatch,
)
from pg_beat.urls import normalise_url, redact_url

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

# SQLSTATEs that mean "could not talk to the database" rather than "the statement failed".
_UNREACHABLE_STATES = ("57P01", "57P02", "57P03", "3D000", "28000", "28P01")

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A failure reported as one line on stderr; exit code 1 (bad input or state)."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"pg-beat: error: {self.format_message()}", err=True)


class CliUsageError(CliError):
    """A usage error (exit code 2), reported on one line unlike click's own."""

    exit_code = EXIT_USAGE


class DatabaseUnreachable(CliError):
    """The database could not be reached (exit code 3)."""

    exit_code = EXIT_UNREACHABLE


def _safe_redact(url: str) -> str:
    try:
        return redact_url(url)
    except ValueError:
        return "<unparseable URL>"


def _database_error(exc: DBAPIError | psycopg.Error, url: str) -> CliError:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    sqlstate = getattr(orig, "sqlstate", None)
    unreachable = (isinstance(exc, DBAPIError) and exc.connection_invalidated) or (
        isinstance(orig, psycopg.OperationalError)
        and (sqlstate is None or sqlstate.startswith("08") or sqlstate in _UNREACHABLE_STATES)
    )
    if unreachable:
        return DatabaseUnreachable(f"cannot reach the database at {_safe_redact(url)}: {first}")
    if sqlstate == "42P01":  # undefined_table
        return CliError(f"database error: {first}: run 'pg-beat db upgrade'")
    return CliError(f"database error: {first}")


class PgBeatGroup(click.Group):
    """The root group: turns every error, usage errors included, into one stderr line."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        url = ctx.params.get("database_url") or ""
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage(exc) from exc
        except DatabaseUnavailable as exc:
            raise DatabaseUnreachable(str(exc)) from exc
        except PgBeatError as exc:
            raise CliError(str(exc)) from exc
        except (DBAPIError, psycopg.Error) as exc:
            raise _database_error(exc, url) from exc


def _usage(exc: click.UsageError) -> CliError:
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return CliUsageError(exc.format_message() + hint)


@dataclass
class Env:
    """The global options, and the connections made from them."""

    url: str | None
    schema: str | None
    group: str
    connect_timeout: int
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            if not self.url:
                raise CliUsageError(
                    "no database URL: pass --database-url or set PG_BEAT_DATABASE_URL"
                )
            try:
                self._settings = Settings(
                    database_url=self.url,
                    schema=self.schema or None,
                    group=self.group,
                    connect_timeout=float(self.connect_timeout),
                )
            except ConfigurationError:
                raise
            except (ValueError, TypeError) as exc:
                raise CliError(f"invalid database URL {_safe_redact(self.url)!r}: {exc}") from exc
        return self._settings

    @property
    def migrate_url(self) -> str:
        """The URL for Alembic, with the connect timeout added unless it names one."""
        url = normalise_url(self.settings.database_url)
        if "connect_timeout" not in url.query:
            url = url.update_query_dict({"connect_timeout": str(self.connect_timeout)})
        return url.render_as_string(hide_password=False)

    @contextmanager
    def connect(self, *, schema: bool = True) -> Iterator[Connection]:
        """An autocommit connection; with ``schema``, fails unless the schema is at head."""
        engine = store.make_engine(self.settings, "cli")
        try:
            try:
                conn = engine.connect()
            except DBAPIError as exc:
                raise _database_error(exc, self.settings.database_url) from exc
            with conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                if schema:
                    require_schema(conn, self.schema)
                yield conn
        finally:
            engine.dispose()

    @contextmanager
    def manager(self) -> Iterator[ScheduleManager]:
        manager = ScheduleManager(settings=self.settings)
        try:
            yield manager
        finally:
            manager.close()


def require_schema(conn: Connection, schema: str | None) -> None:
    current, head = migrate.current_revision(conn, schema), migrate.head_revision()
    if current != head:
        raise SchemaMismatch(
            f"database schema is at revision {current or 'none (not migrated)'}, pg_beat "
            f"needs {head}: run 'pg-beat db upgrade'"
        )


pass_env = click.make_pass_decorator(Env)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (stable keys) instead of a table."
)


def _print_json(value: Any) -> None:
    click.echo(status.dumps(value))


# --- root ----------------------------------------------------------------------------------------


@click.group(
    "pg-beat",
    cls=PgBeatGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--database-url",
    envvar="PG_BEAT_DATABASE_URL",
    metavar="URL",
    help="PostgreSQL URL, direct or session-pooled [env PG_BEAT_DATABASE_URL].",
)
@click.option(
    "--schema", envvar="PG_BEAT_SCHEMA", help="Schema of pg_beat's tables [env PG_BEAT_SCHEMA]."
)
@click.option(
    "--group",
    envvar="PG_BEAT_GROUP",
    default="default",
    show_default=True,
    help="Scheduler group [env PG_BEAT_GROUP].",
)
@click.option(
    "--connect-timeout",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Seconds to wait for a connection.",
)
@click.version_option(__version__, prog_name="pg-beat")
@click.pass_context
def main(
    ctx: click.Context,
    database_url: str | None,
    schema: str | None,
    group: str,
    connect_timeout: int,
) -> None:
    """Operate pg_beat: migrate, inspect the cluster, manage schedules.

    Exit codes: 0 ok, 1 bad input or state (or unhealthy), 2 usage, 3 database unreachable.
    """
    ctx.obj = Env(database_url, schema, group, connect_timeout)


# --- db ------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Schema migrations (Alembic)."""


def _alembic(revision: str, action: Callable[[], None]) -> None:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        if not revision.startswith(("+", "-")):  # relative steps need the database
            # Fail on an unknown revision before Alembic connects.
            ScriptDirectory(str(migrate.migrations_dir())).get_revisions(revision)
        action()
    except CommandError as exc:
        raise CliError(f"migration failed: {exc}") from exc


@db.command()
@click.argument("revision", default="head")
@pass_env
def upgrade(env: Env, revision: str) -> None:
    """Migrate up to REVISION (default: head)."""
    with env.connect(schema=False):
        pass  # a clear, fast failure when the database is down, before Alembic starts
    _alembic(revision, lambda: migrate.upgrade(env.migrate_url, revision, env.schema))
    with env.connect(schema=False) as conn:
        current = migrate.current_revision(conn, env.schema)
    click.echo(f"database at {redact_url(env.settings.database_url)} is at revision {current}")


@db.command()
@click.argument("revision")
@pass_env
def downgrade(env: Env, revision: str) -> None:
    """Migrate down to REVISION ('base' removes every pg_beat table)."""
    with env.connect(schema=False):
        pass
    _alembic(revision, lambda: migrate.downgrade(env.migrate_url, revision, env.schema))
    with env.connect(schema=False) as conn:
        current = migrate.current_revision(conn, env.schema)
    click.echo(
        f"database at {redact_url(env.settings.database_url)} is at revision "
        f"{current or 'none (base)'}"
    )


@db.command()
@json_option
@pass_env
def current(env: Env, as_json: bool) -> None:
    """Show the schema revision. JSON keys: current, head, up_to_date."""
    with env.connect(schema=False) as conn:
        revision = migrate.current_revision(conn, env.schema)
    head = migrate.head_revision()
    if as_json:
        _print_json({"current": revision, "head": head, "up_to_date": revision == head})
    elif revision == head:
        click.echo(f"{revision} (head)")
    else:
        click.echo(
            f"{revision or 'none (not migrated)'}: pg_beat needs {head}, run 'pg-beat db upgrade'"
        )


@db.command("check")
@json_option
@pass_env
def db_check(env: Env, as_json: bool) -> None:
    """Exit 0 when the schema is at head and matches the models, else 1 with the reason.

    JSON keys: ok, current, head, reason.
    """
    from alembic.util import AutogenerateDiffsDetected

    with env.connect(schema=False) as conn:
        revision = migrate.current_revision(conn, env.schema)
    head = migrate.head_revision()
    reason: str | None = None
    if revision != head:
        reason = (
            f"database schema is at revision {revision or 'none (not migrated)'}, pg_beat needs "
            f"{head}: run 'pg-beat db upgrade'"
        )
    else:
        from alembic import command

        config = migrate.alembic_config(env.migrate_url, env.schema)
        # Alembic prints "No new upgrade operations detected." on its own stdout otherwise.
        config.stdout = io.StringIO()
        try:
            command.check(config)
        except AutogenerateDiffsDetected as exc:
            reason = f"schema differs from pg_beat's models: {status.shorten(str(exc), 300)}"
    if as_json:
        _print_json({"ok": reason is None, "current": revision, "head": head, "reason": reason})
    else:
        click.echo(reason or f"ok: at {head} (head), no drift")
    if reason is not None:
        click.get_current_context().exit(EXIT_ERROR)


# --- status and check ----------------------------------------------------------------------------

max_stall_option = click.option(
    "--max-stall",
    type=click.FloatRange(min=0, min_open=True),
    default=status.DEFAULT_MAX_STALL,
    show_default=True,
    help="Seconds without dispatch-loop progress after which the leader counts as stalled.",
)


@main.command("status")
@json_option
@max_stall_option
@click.option(
    "--next",
    "next_limit",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many upcoming schedules to show.",
)
@click.option(
    "--long-transaction",
    type=click.FloatRange(min=0),
    default=status.DEFAULT_LONG_TRANSACTION,
    show_default=True,
    help="List sessions whose transaction has held locks on pg_beat tables this many seconds.",
)
@click.option(
    "--failovers",
    "failover_limit",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many recent leader terms to show.",
)
@pass_env
def status_command(
    env: Env,
    as_json: bool,
    max_stall: float,
    next_limit: int,
    long_transaction: float,
    failover_limit: int,
) -> None:
    """Leader, replicas, lock holder and waiters, blocked backends, failovers, next due.

    The verdict is one of: healthy, no leader, leader stale, blocked.
    """
    with env.connect() as conn:
        found = status.gather(
            conn,
            env.group,
            max_stall=max_stall,
            next_limit=next_limit,
            failover_limit=failover_limit,
            long_transaction=long_transaction,
        )
    if as_json:
        _print_json(status.as_json(found))
    else:
        click.echo(status.render(found))


@main.command("check")
@json_option
@max_stall_option
@pass_env
def check_command(env: Env, as_json: bool, max_stall: float) -> None:
    """Exit 0 when a leader holds a fresh lease and its loop progresses, else 1.

    For container health checks and Kubernetes probes; prints one line.
    JSON keys: healthy, state, message, lease.
    """
    with env.connect() as conn:
        lease = store.read_lease(conn, env.group)
        now = lease["db_now"] if lease is not None else store.db_now(conn)
        backends = status.gather_leader_backends(conn, lease, now, max_stall)
    found = status.verdict(lease, now, leader_backends=backends, max_stall=max_stall)
    healthy = found.state == status.HEALTHY
    message = found.message if healthy else f"unhealthy: {found.message}"
    if as_json:
        _print_json(
            {
                "healthy": healthy,
                "state": found.state,
                "message": message,
                "lease": status.lease_dict(lease, now),
            }
        )
    else:
        click.echo(message)
    if not healthy:
        click.get_current_context().exit(EXIT_ERROR)


# --- runs ----------------------------------------------------------------------------------------


def parse_time(text: str, option: str, schedule: str | None = None) -> datetime:
    """An aware datetime from ISO 8601 (``Z`` allowed); naive times are refused."""
    where = f"schedule {schedule!r}: " if schedule else ""
    raw = text.strip()
    if raw[-1:] in ("Z", "z"):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise CliError(
            f"{where}{option} {text!r} is not an ISO 8601 time (e.g. 2026-12-01T09:00Z)"
        ) from exc
    if value.utcoffset() is None:
        raise CliError(
            f"{where}{option} {text!r} has no timezone: add Z for UTC or an offset like +01:00"
        )
    return value


@main.command()
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
        _print_json(items)
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


# --- schedules -----------------------------------------------------------------------------------


@main.group("schedules")
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
        _print_json(info.as_dict())
    else:
        state = "" if info.enabled else ", disabled"
        click.echo(f"{verb} schedule {info.name!r}: {info.task}, {info.schedule_text}{state}")


@schedules_group.command("list")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many.")
@json_option
@pass_env
def schedules_list(env: Env, limit: int | None, as_json: bool) -> None:
    """Every schedule of the group, soonest due first. JSON: an array of 'show' objects."""
    with env.connect() as conn:
        now = store.db_now(conn)
    with env.manager() as manager:
        infos = manager.list(limit=limit)
    if as_json:
        _print_json([info.as_dict() for info in infos])
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
    with env.connect() as conn:
        now = store.db_now(conn)
    with env.manager() as manager:
        info = manager.get(name)
    if as_json:
        _print_json(info.as_dict())
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
            _print_json({"name": name, "action": verb, "ok": True})
        else:
            past = {"remove": "removed", "run-now": "made due now"}[verb]
            click.echo(f"schedule {name!r} {past}")


def _run_now(manager: ScheduleManager, name: str) -> None:
    manager.run_now(name)


def _remove(manager: ScheduleManager, name: str) -> None:
    manager.delete(name)


_simple("enable", "Enable NAME (it is planned again from now).", ScheduleManager.enable)
_simple("disable", "Disable NAME (it keeps its definition and history).", ScheduleManager.disable)
_simple("remove", "Delete NAME and its run history.", _remove)
_simple("run-now", "Make NAME due now (and enabled); its grid resumes afterwards.", _run_now)
