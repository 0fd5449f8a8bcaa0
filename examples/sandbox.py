"""A throwaway environment for a local HA cluster: database, broker, processes, all removed.

Shared by the demo (``examples.demo``) and ``examples.supervised_cluster``:

- PostgreSQL: the server of ``$PG_BEAT_DATABASE_URL`` when set, else the local one on
  127.0.0.1:5432 (as ``postgres`` or the current OS user), else a throwaway cluster when
  ``initdb`` is found (``--private-postgres`` forces that). A database ``pg_beat_demo_<random>``
  is created there and dropped at exit; no other database is touched.
- Broker: Redis on 127.0.0.1:6379 when it answers PING (db 15, a queue of its own whose keys
  are deleted at exit), else Celery's filesystem transport in a temporary directory.
  ``--broker filesystem`` or ``--broker redis://host:port/db`` choose.
- :func:`run_with_cleanup` undoes everything registered on its ``ExitStack`` on every way out:
  normal exit, an error, Ctrl-C or SIGTERM. Processes are stopped by the PIDs started.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from examples.cluster import ROOT, Cluster
from pg_beat.exceptions import PgBeatError
from pg_beat.urls import describe, libpq_url, redact_url

SCHEDULES = [
    ("demo-every-second-a", 1.0),
    ("demo-every-second-b", 1.0),
    ("demo-every-second-c", 1.0),
]
LOCAL_PORT = 5432
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 15
EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2

_print_lock = threading.Lock()


def say(*lines: str) -> None:
    """Print whole lines at once (the live monitor prints from its own thread), unbuffered."""
    with _print_lock:
        for line in lines:
            print(line, flush=True)


class DemoError(Exception):
    """Setup failed in a way the user can fix (no PostgreSQL, no permission): one line."""


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: unwind through every cleanup, then exit 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def _quietly(what: str, action: Callable[[], object]) -> Callable[[], None]:
    """A cleanup step that reports its failure instead of skipping the steps after it."""

    def run() -> None:
        try:
            action()
        except Exception as exc:
            say(f"cleanup: {what} failed: {exc}")

    return run


def run_with_cleanup(body: Callable[[contextlib.ExitStack], int]) -> int:
    """Run ``body(stack)``; whatever it registered on ``stack`` is undone on every way out.

    SIGINT and SIGTERM interrupt the body, then are ignored while cleaning up, so a second
    Ctrl-C cannot leave processes or a database behind.
    """
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = contextlib.ExitStack()
    try:
        return body(stack)
    except Stopped as exc:
        say("", f"{exc}: stopping and cleaning up ...")
        return 128 + exc.signum
    except DemoError as exc:
        say(f"demo: error: {exc}")
        return EXIT_SETUP
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            stack.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# --- PostgreSQL ----------------------------------------------------------------------------------


def _server_url(url: str, dbname: str) -> str:
    return (
        make_url(url)
        .set(drivername="postgresql+psycopg", database=dbname)
        .render_as_string(hide_password=False)
    )


def _create_database(server: str, name: str) -> None:
    with psycopg.connect(libpq_url(server), autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop_database(server: str, name: str) -> None:
    with psycopg.connect(libpq_url(server), autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    say(f"dropped database {name}")


def _local_servers() -> list[str]:
    users = ["postgres"]
    with contextlib.suppress(Exception):
        if getpass.getuser() not in users:
            users.append(getpass.getuser())
    return [f"postgresql+psycopg://{user}@127.0.0.1:{LOCAL_PORT}/postgres" for user in users]


def _start_private_cluster(stack: contextlib.ExitStack) -> str:
    # The test suite's throwaway cluster (initdb, a free port, trust auth, runs as the
    # ``postgres`` OS user when we are root); shared rather than written twice.
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from support.pg import NoPostgresAvailable, PrivateCluster

    cluster = PrivateCluster()
    stack.callback(_quietly("removing the private PostgreSQL", cluster.cleanup))
    stack.callback(lambda: say("removing the private PostgreSQL ..."))
    say("starting a throwaway PostgreSQL cluster (initdb) ...")
    try:
        cluster.start()
    except (NoPostgresAvailable, RuntimeError, OSError) as exc:
        raise DemoError(
            f"cannot start a private PostgreSQL: {exc}. Start PostgreSQL on 127.0.0.1:5432, "
            "install it (initdb), or set PG_BEAT_DATABASE_URL to a server where you may "
            "CREATE DATABASE"
        ) from exc
    say(f"started private PostgreSQL pid {cluster.pid} in {cluster.base} on port {cluster.port}")
    return cluster.url()


def provision_database(stack: contextlib.ExitStack, private: bool) -> str:
    """Create the demo's database (dropped by ``stack``); its ``postgresql+psycopg`` URL."""
    name = f"pg_beat_demo_{secrets.token_hex(4)}"
    from_env = os.environ.get("PG_BEAT_DATABASE_URL")
    if private:
        servers = [_start_private_cluster(stack)]
    elif from_env:
        servers = [from_env]
    else:
        servers = _local_servers()
    problems = []
    for server in servers:
        try:
            _create_database(server, name)
        except (psycopg.Error, PgBeatError) as exc:  # PgBeatError: a malformed URL
            problems.append(f"{redact_url(server)}: {str(exc).strip().splitlines()[0]}")
            continue
        drop = functools.partial(_drop_database, server, name)
        stack.callback(_quietly(f"dropping database {name}", drop))
        url = _server_url(server, name)
        say(f"database  {describe(url)} (created for the demo, dropped at exit)")
        return url
    if from_env and not private:
        raise DemoError(
            "the demo creates and drops a database of its own on the server of "
            f"$PG_BEAT_DATABASE_URL and could not: {'; '.join(problems)}"
        )
    if not private:
        say(f"no local PostgreSQL on 127.0.0.1:{LOCAL_PORT} ({'; '.join(problems)})")
        return provision_database(stack, private=True)
    raise DemoError(f"cannot create a database: {'; '.join(problems)}")


# --- broker --------------------------------------------------------------------------------------


def redis_answers(host: str = REDIS_HOST, port: int = REDIS_PORT, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _delete_redis_keys(url: str, queue: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3)
    try:
        # The queue's list and kombu's binding set: names only this demo run uses.
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def provision_broker(
    stack: contextlib.ExitStack, choice: str, workdir: Path, queue: str
) -> tuple[str, dict[str, str]]:
    """The broker URL and the environment the cluster needs for it."""
    if choice == "auto":
        has_client = importlib.util.find_spec("redis") is not None
        choice = "redis" if has_client and redis_answers() else "filesystem"
    if choice == "filesystem":
        folder = workdir / "broker"
        folder.mkdir()
        say(f"broker    Celery's filesystem transport in {folder}")
        return "filesystem://", {"PG_BEAT_DEMO_BROKER_DIR": str(folder)}
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}" if choice == "redis" else choice
    if not url.startswith(("redis://", "rediss://")):
        raise DemoError(f"--broker {choice!r}: expected auto, filesystem, redis or a redis:// URL")
    if importlib.util.find_spec("redis") is None:
        raise DemoError("the Redis broker needs the redis package: pip install 'pg-beat[redis]'")
    stack.callback(
        _quietly("deleting the demo's Redis keys", lambda: _delete_redis_keys(url, queue))
    )
    say(f"broker    {redact_url(url)}, queue {queue} (its keys are deleted at exit)")
    return url, {}


# --- the cluster ---------------------------------------------------------------------------------


def start_cluster(stack: contextlib.ExitStack, args: argparse.Namespace) -> Cluster:
    """Database, broker, schedules, replicas and worker, each undone by ``stack``."""
    workdir = Path(tempfile.mkdtemp(prefix="pg_beat_demo_"))
    stack.callback(_quietly(f"removing {workdir}", lambda: shutil.rmtree(workdir)))
    stack.callback(lambda: say(f"removed {workdir}"))
    say(f"workdir   {workdir} (logs; removed at exit)")
    database_url = provision_database(stack, args.private_postgres)
    queue = f"pg_beat_demo_{secrets.token_hex(4)}"
    broker_url, broker_env = provision_broker(stack, args.broker, workdir, queue)
    cluster = Cluster(
        database_url,
        broker_url,
        replicas=args.replicas,
        workdir=workdir / "logs",
        queue=queue,
        lease_ttl=args.ttl,
        heartbeat_interval=min(1.0, args.ttl / 3),
        extra_env=broker_env,
    )
    cluster.prepare(SCHEDULES)
    say(
        f"migrated; schedules {', '.join(n for n, _ in SCHEDULES)}: every 1 s, misfire catch_up",
        f"starting {args.replicas} x `celery -A examples.ha_app beat -S pg_beat:Scheduler` "
        f"(lease TTL {args.ttl:g} s) and a worker",
    )

    def stop_processes() -> None:
        say("stopping the replicas and the worker ...")
        cluster.stop()
        say("stopped every process the demo started")

    stack.callback(_quietly("stopping the cluster", stop_processes))
    cluster.start()
    return cluster


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``examples.supervised_cluster``."""
    parser.add_argument("--replicas", type=int, default=3, help="beat replicas (>= 2; default 3)")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease TTL in seconds (default 5)")
    parser.add_argument(
        "--broker",
        default="auto",
        metavar="auto|redis|filesystem|URL",
        help="auto (default): Redis on 127.0.0.1:6379 if it answers, else the filesystem",
    )
    parser.add_argument(
        "--private-postgres",
        action="store_true",
        help="run a throwaway PostgreSQL cluster (initdb) even if another server is available",
    )


def check_cluster_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.replicas < 2:
        parser.error("--replicas must be at least 2 (a failover needs somebody to fail over to)")
    if args.ttl < 1:
        parser.error("--ttl must be at least 1 second")
