"""The ``pg-beat`` command line: migrations, cluster status, health check, schedules, run log.

Exit codes, for scripts:

== =====================================================================================
0  success (``check``: healthy; ``db check``: schema at head with no drift, or ahead and
   declared compatible; no invalid index)
1  bad input or state: unknown schedule, invalid definition, schema not migrated, a
   database error; ``check``: unhealthy; ``db check``: behind head, ahead and incompatible,
   drift, an invalid index
2  usage: unknown option, missing argument, no database URL
3  the database is unreachable (refused, unknown host, authentication, no such database,
   connection lost)
4  ``runs audit``: the audit found something (missing, late, failed... ticks)
== =====================================================================================

``status`` exits 0 whatever its verdict (use ``check`` for a yes/no); ``check`` exits 3,
not 1, when it cannot reach the database. Every error is one line on stderr,
``pg-beat: error: ...``, in the command's own words (``--cron``, not a column name); a URL is
shown as typed, with its password masked. Options that conflict or would do nothing
(``--every`` with ``--cron``, ``--tz`` with ``--every``) are usage errors (2). Warnings, such as
pg_beat's own (an edit that the next start of an app resets) or an empty group nobody runs,
are ``pg-beat: warning: ...`` lines on stderr and do not change the exit code.

``--json`` output is stable (times ISO 8601, durations and ages in seconds, negative = past):

- ``schedules show|add|update|enable|disable``: name, task, kind, schedule (the timing
  columns that are set), schedule_text, args, kwargs, options, enabled, one_off,
  description, misfire_policy, catch_up_limit, overlap_policy, max_runtime, run_once,
  buffered_due_at, next_run_at, last_run_at, total_run_count, last_error, source, created_at,
  updated_at; ``schedules detach`` too. ``schedules list``:
  an array of those. ``schedules remove|run-now``: name, action, ok.
- ``runs``: an array of id, schedule, due_at, claimed_at, sent_at, status, lateness_ms,
  replica, epoch, task_id, error.
- ``runs audit``: group, since, until, now, settle, grace, schedules, clean, total, counts
  and info_counts (kind -> number, every kind present), findings and info (arrays of kind,
  schedule, due_at, task_id, what, why), truncated.
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
- ``db current``: current, head, up_to_date, compatible. ``db check``: ok, current, head,
  reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from pg_beat import __version__
from pg_beat.cli import audit, cluster, db, runs, schedules
from pg_beat.cli.context import Env, parse_time, require_schema
from pg_beat.cli.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    CliUsageError,
    DatabaseUnreachable,
    database_error,
    driver_errors,
    usage_error,
)
from pg_beat.exceptions import DatabaseUnavailable, PgBeatError

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "CliUsageError",
    "DatabaseUnreachable",
    "Env",
    "PgBeatGroup",
    "main",
    "parse_time",
    "require_schema",
]


class _StderrWarnings(logging.Handler):
    """pg_beat's own warnings (e.g. the API's, about a schedule from an app's beat_schedule)
    as ``pg-beat: warning: ...`` lines, instead of logging's bare last-resort output."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno == logging.WARNING else record.levelname.lower()
        click.echo(f"pg-beat: {level}: {' '.join(record.getMessage().split())}", err=True)


@contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    handler, logger = _StderrWarnings(logging.WARNING), logging.getLogger("pg_beat")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


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
            raise usage_error(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        url = ctx.params.get("database_url") or ""
        try:
            with _warnings_on_stderr():
                return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise usage_error(exc) from exc
        except (click.ClickException, click.exceptions.Exit):
            raise  # carries its exit code already (and spares importing the drivers below)
        except DatabaseUnavailable as exc:
            raise DatabaseUnreachable(str(exc)) from exc
        except PgBeatError as exc:
            raise CliError(str(exc)) from exc
        except driver_errors() as exc:  # evaluated only when an exception gets this far
            raise database_error(exc, url) from exc


@click.group(
    "pg-beat",
    cls=PgBeatGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--database-url",
    envvar="PG_BEAT_DATABASE_URL",
    metavar="URL",
    help="PostgreSQL URL, any libpq or SQLAlchemy form [env PG_BEAT_DATABASE_URL].",
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


main.add_command(db.db)
main.add_command(cluster.status_command)
main.add_command(cluster.check_command)
runs.runs.add_command(audit.audit_command)
main.add_command(runs.runs)
main.add_command(schedules.schedules_group)
