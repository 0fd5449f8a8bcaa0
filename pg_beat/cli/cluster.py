"""``pg-beat status`` and ``pg-beat check``: the cluster as the database sees it.

Both read each part of the report in a short transaction of its own, bounded by a lock and a
statement timeout of about a second, so they answer during a migration's ACCESS EXCLUSIVE
lock or a forgotten ``FOR UPDATE``: what they could not read is said, with who blocks it.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from pg_beat.cli.context import Env, json_option, pass_env, print_json, warn
from pg_beat.cli.errors import (
    EXIT_ERROR,
    CliUsageError,
    DatabaseUnreachable,
    database_error,
    driver_errors,
)
from pg_beat.cli.health import overdue_factor_option

if TYPE_CHECKING:
    from types import FrameType

    import psycopg
    from sqlalchemy.engine import Connection

CLEAR_SCREEN = "\x1b[H\x1b[2J"
#: Seconds a watch waits at least between two redraws, however many NOTIFYs arrive.
MIN_REDRAW = 0.2


class _StatusDefault:
    """An option default read from :mod:`pg_beat.status` when click needs it, not at import.

    pg_beat.status imports SQLAlchemy, psycopg and Celery, which ``pg-beat --help`` does not
    need. click calls a callable default for the value and, unlike for a function, shows its
    ``str()`` in help, so ``status --help`` still says ``[default: 10.0]``.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> float:
        from pg_beat import status

        value: float = getattr(status, self.name)
        return value

    def __str__(self) -> str:
        return str(self())


max_stall_option = click.option(
    "--max-stall",
    type=click.FloatRange(min=0, min_open=True),
    default=_StatusDefault("DEFAULT_MAX_STALL"),
    show_default=True,
    help="Seconds without dispatch-loop progress after which the leader counts as stalled.",
)


@contextmanager
def until_ctrl_c() -> Iterator[threading.Event]:
    """Ctrl-C ends a watch at its next pause: exit 0, no traceback, no click "Aborted!".

    The statement under way finishes first (each is bounded by its timeouts, about a
    second), so no query is cancelled half-way; a second Ctrl-C ends the watch at once.
    """
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, handler) if main else None
    try:
        yield stop
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def repeat_until_interrupted(
    env: Env, step: Callable[[Connection], None], every: float, *, listen: bool = False
) -> None:
    """Run ``step`` every ``every`` seconds until Ctrl-C (see :func:`until_ctrl_c`); with
    ``listen``, also at once (after MIN_REDRAW) on a NOTIFY on the schedule channel: a schedule
    edit, or a new leader taking over. Behind a transaction pool there is no LISTEN: timed only.

    When the database goes away the error is said on stderr and the loop reconnects; any
    other error ends the command as usual.
    """
    with until_ctrl_c() as stop:
        while not stop.is_set():
            try:
                with env.connect() as conn, _listener(env, listen) as listener:
                    while not stop.is_set():
                        started = time.monotonic()
                        step(conn)
                        _pause(stop, listener, every - (time.monotonic() - started))
            except driver_errors() as exc:
                problem = database_error(exc, env.url or "")
                if not isinstance(problem, DatabaseUnreachable):
                    raise problem from exc
                _say_unreachable(problem)
            except DatabaseUnreachable as problem:
                _say_unreachable(problem)
            stop.wait(every)


@contextmanager
def _listener(env: Env, listen: bool) -> Iterator[psycopg.Connection[Any] | None]:
    """A connection LISTENing on the schedule channel, or None (not asked for, or pooled)."""
    if not listen:
        yield None
        return
    from pg_beat import store

    conn = store.connections.Connector(env.settings).listen("cli")
    try:
        yield conn
    finally:
        if conn is not None:
            conn.close()


def _pause(stop: threading.Event, listener: psycopg.Connection[Any] | None, left: float) -> None:
    """Wait ``left`` seconds, or until Ctrl-C, or a NOTIFY on ``listener`` (not sooner than
    MIN_REDRAW: a burst of edits redraws a few times a second, not for each)."""
    deadline = time.monotonic() + max(0.0, left)
    if listener is None:
        stop.wait(max(0.0, left))
        return
    stop.wait(min(MIN_REDRAW, max(0.0, left)))
    while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
        # Short slices: Ctrl-C only sets ``stop``, it does not interrupt the wait.
        if list(listener.notifies(timeout=min(remaining, 0.25), stop_after=1)):
            list(listener.notifies(timeout=0))  # the rest of a burst
            return


def _say_unreachable(problem: DatabaseUnreachable) -> None:
    click.echo(f"pg-beat: {problem.format_message()}; retrying", err=True)


@click.command("status")
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
    default=_StatusDefault("DEFAULT_LONG_TRANSACTION"),
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
@click.option(
    "--failing",
    "failing_limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many failing schedules (last_error set) to list; all are counted.",
)
@click.option(
    "--unhealthy",
    "unhealthy_limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many failing or overdue schedules (task outcomes) to list; all are counted.",
)
@overdue_factor_option
@click.option(
    "--show-queries",
    is_flag=True,
    help="Show other sessions' query text in full (default: its first 40 characters).",
)
@click.option(
    "--watch",
    is_flag=True,
    help=(
        "Redraw every --interval seconds, and at once when a leader takes over or a schedule "
        "changes (LISTEN; not behind a transaction pool), until Ctrl-C (exit 0)."
    ),
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between redraws with --watch.",
)
@pass_env
def status_command(
    env: Env,
    as_json: bool,
    max_stall: float,
    next_limit: int,
    long_transaction: float,
    failover_limit: int,
    failing_limit: int,
    unhealthy_limit: int,
    overdue_factor: float,
    show_queries: bool,
    watch: bool,
    interval: float,
) -> None:
    """Verdict, who blocks pg_beat, lease, replicas, lock holder and waiters, blocked
    backends, failovers, failing schedules, task health, next due.

    The verdict is one of: healthy, no leader, leader stale, blocked, unknown (the lease
    could not be read). It is about the scheduler: schedules whose tasks fail or are overdue
    (outcomes from tracking workers) are counted and listed under Task health, and named on a
    line of their own under the verdict, but do not change it (nor the exit status). Each
    part is read with its own ~1 s lock and statement timeout; a part that could not be read
    says why (in JSON: null, and listed under "unreadable"). With --watch the report is
    redrawn until Ctrl-C, which exits 0; with --json as well, one JSON object per line.
    """

    def draw(conn: Connection, *, clear: bool) -> None:
        from pg_beat import status

        found = status.gather(
            conn,
            env.group,
            max_stall=max_stall,
            next_limit=next_limit,
            failover_limit=failover_limit,
            failing_limit=failing_limit,
            unhealthy_limit=unhealthy_limit,
            overdue_factor=overdue_factor,
            long_transaction=long_transaction,
            show_queries=show_queries,
        )
        if as_json:
            click.echo(status.dumps(status.as_json(found), compact=watch))
        else:
            click.echo((CLEAR_SCREEN if clear else "") + status.render(found) + ("\n" * watch))
        if not watch and _unused_group(found):
            warn(
                f"group {env.group!r} has no schedules and no scheduler has run in it: check "
                "--group (or PG_BEAT_GROUP); an app's group is its pg_beat_group, 'default' "
                "unless set"
            )

    if not watch:
        with env.connect() as conn:
            draw(conn, clear=False)
        return
    tty = sys.stdout.isatty() and not as_json
    repeat_until_interrupted(env, lambda conn: draw(conn, clear=tty), interval, listen=True)


@click.command("check")
@json_option
@max_stall_option
@click.option(
    "--self",
    "this_replica",
    is_flag=True,
    help="Judge this container's replica, not the cluster, from its liveness file "
    "(pg_beat_liveness_file): no database needed. For liveness probes.",
)
@click.option(
    "--file",
    "liveness_file",
    envvar="PG_BEAT_LIVENESS_FILE",
    metavar="PATH",
    help="With --self: the replica's liveness file [env PG_BEAT_LIVENESS_FILE].",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="With --self: seconds without a loop run after which the replica counts as dead.",
)
@pass_env
def check_command(
    env: Env,
    as_json: bool,
    max_stall: float,
    this_replica: bool,
    liveness_file: str | None,
    max_age: float,
) -> None:
    """Exit 0 when a leader holds a fresh lease and its loop progresses, else 1.

    For container health checks and Kubernetes readiness probes; prints one line, which names
    what blocks pg_beat when something does. The lease is read with a ~1 s lock and statement
    timeout: a lease that could not be read is unhealthy ("could not read the lease").
    JSON keys: healthy, state, message, lease, unreadable.

    With --self, for liveness probes: exit 0 while this container's replica runs its loop
    (its liveness file is fresh, its process and threads alive), whatever the database does.
    JSON keys: alive, message.
    """
    if this_replica:
        _check_self(liveness_file, max_age, max_stall, as_json)
        return
    from pg_beat import status

    with env.connect() as conn:
        health = status.check(conn, env.group, max_stall=max_stall)
    if as_json:
        print_json(status.check_json(health))
    else:
        click.echo(health.message)
    if not health.healthy:
        click.get_current_context().exit(EXIT_ERROR)


def _check_self(path: str | None, max_age: float, hang: float, as_json: bool) -> None:
    from pg_beat import liveness

    if not path:
        raise CliUsageError(
            "check --self needs the replica's liveness file: --file PATH or "
            "PG_BEAT_LIVENESS_FILE (the replica writes it when pg_beat_liveness_file is set)"
        )
    found = liveness.judge(liveness.read(path), time.time(), max_age, hang)
    if as_json:
        print_json({"alive": found.alive, "message": found.message})
    else:
        click.echo(found.message)
    if not found.alive:
        click.get_current_context().exit(EXIT_ERROR)


def _unused_group(found: Any) -> bool:
    """No lease row, no replica and no schedule due or failing, as read (unreadable proves
    nothing)."""
    read = ("lease", "replicas", "next_due", "failing_schedules")
    if any(name in found.unreadable for name in read):
        return False
    return (
        found.lease is None
        and not found.replicas
        and not found.next_due
        and not found.failing_count
    )
