"""``pg-beat status`` and ``pg-beat check``: the cluster as the database sees it."""

from __future__ import annotations

import click

from pg_beat.cli.context import Env, json_option, pass_env, print_json
from pg_beat.cli.errors import EXIT_ERROR


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
    from pg_beat import status

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
        print_json(status.as_json(found))
    else:
        click.echo(status.render(found))


@click.command("check")
@json_option
@max_stall_option
@pass_env
def check_command(env: Env, as_json: bool, max_stall: float) -> None:
    """Exit 0 when a leader holds a fresh lease and its loop progresses, else 1.

    For container health checks and Kubernetes probes; prints one line.
    JSON keys: healthy, state, message, lease.
    """
    from pg_beat import status, store

    with env.connect() as conn:
        lease = store.read_lease(conn, env.group)
        now = lease["db_now"] if lease is not None else store.db_now(conn)
        backends = status.gather_leader_backends(conn, lease, now, max_stall)
    found = status.verdict(lease, now, leader_backends=backends, max_stall=max_stall)
    healthy = found.state == status.HEALTHY
    message = found.message if healthy else f"unhealthy: {found.message}"
    if as_json:
        print_json(
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
