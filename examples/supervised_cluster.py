"""An HA cluster to poke at by hand: N ``celery beat`` replicas and a worker under a supervisor.

The supervisor restarts a replica that exits, a second later, as systemd (``Restart=always``),
Kubernetes or ``docker compose`` (``restart: unless-stopped``) would. It runs until Ctrl-C,
printing who leads once a second; from another terminal, with the PIDs and URL it prints::

    kill -KILL <pid>    # the leader dies: a standby takes over at once, the supervisor restarts it
    kill -STOP <pid>    # the leader hangs: a standby takes over after the lease TTL
    kill -CONT <pid>    # it wakes up deposed, sends nothing and stands by
    PG_BEAT_DATABASE_URL=<url> pg-beat status

    python -m examples.supervised_cluster [--replicas 3] [--ttl 5] [--duration SECONDS]

Where it runs (database, broker) and the cleanup at exit: see :mod:`examples.sandbox`, shared
with the demo. :class:`examples.cluster.Cluster` does the supervising.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from examples import sandbox
from examples.demo import watch
from pg_beat.urls import redact_url


def supervise(stack: contextlib.ExitStack, args: argparse.Namespace) -> int:
    cluster = sandbox.start_cluster(stack, args)
    monitor = watch(stack, cluster)
    try:
        leader, epoch = cluster.wait_for_leader(timeout=60)
    except TimeoutError:
        raise sandbox.DemoError("no replica became the leader within 60 s") from None
    pids = " ".join(f"{name}={cluster.pid(name)}" for name in cluster.replicas)
    sandbox.say(
        f">>> {leader} leads (epoch {epoch}). Replicas: {pids}",
        "    try: kill -KILL <pid>, kill -STOP <pid> then kill -CONT <pid>, and",
        f"    PG_BEAT_DATABASE_URL={redact_url(cluster.database_url)!r} pg-beat status",
        "    Ctrl-C stops everything and removes what was created.",
    )
    monitor.interval = args.interval
    monitor.start()
    deadline = None if args.duration is None else time.monotonic() + args.duration
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.2)
    return sandbox.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.supervised_cluster",
        description="Run beat replicas and a worker under a supervisor until Ctrl-C.",
    )
    sandbox.add_cluster_options(parser)
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between status lines (default 1)"
    )
    parser.add_argument(
        "--duration", type=float, help="stop by itself after this many seconds (default: never)"
    )
    args = parser.parse_args(argv)
    sandbox.check_cluster_options(parser, args)
    return sandbox.run_with_cleanup(lambda stack: supervise(stack, args))


if __name__ == "__main__":
    sys.exit(main())
