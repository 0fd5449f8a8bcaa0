"""Failover benchmark: pg_beat's HA cluster under injected faults, side by side with RedBeat.

    .venv/bin/python benchmarks/bench_failover.py --quick            # 1 round of 3 kinds, ~3 min
    .venv/bin/python benchmarks/bench_failover.py --json out.json    # 8 rounds x 8 kinds, ~25 min

Three real ``celery beat`` replicas and a worker per fault kind (``examples.cluster.Cluster`` for
pg_beat, the same harness running ``redbeat.RedBeatScheduler`` for RedBeat), three 1-second
schedules, the same fault injected round after round into the leader. Per kind it prints the
failover time (fault to the first tick sent by a new leader), and from the worker's side the
ticks missed, duplicated and re-published, and the replicas that exited when they should not
have. See benchmarks/README.md ("Failover benchmark") for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from support.pg import (  # noqa: E402
    PrivateCluster,
    create_database,
    database_url,
    drop_database,
    libpq_url,
)
from support.proxy import TcpProxy  # noqa: E402

from examples.cluster import Cluster, utcnow  # noqa: E402

PG_KINDS = [
    "sigkill",
    "sigstop",
    "sigterm",
    "terminate_backend",
    "pg_restart",
    "partition",
    "stuck_publish",
    "row_lock",
]
REDBEAT_KINDS = ("sigkill", "sigstop", "sigterm")
QUICK_KINDS = ["sigkill", "sigterm", "sigstop"]
SCHEDULES = [("every-second-a", 1.0), ("every-second-b", 1.0), ("every-second-c", 1.0)]
LOCKED_SCHEDULE = "every-second-a"
REDIS_PORT = 6379
REPLICAS = 3
SETTLE = 1.0  # steady running before each fault
AFTER = 2.0  # steady running after recovery, before the window closes
#: Faults are injected this long before a tick falls due, so that the failover time is how long
#: dispatch was out, not how long the new leader then had nothing due (see the README).
LEAD = 0.1
RESUME_TIMEOUT = 60.0
STEADY_TIMEOUT = 120.0
# Exit codes a replica may show after the fault, per kind (anything else is a crash).
EXPECTED_EXITS: dict[str, dict[str, set[int]]] = {
    "pg_beat": {"sigkill": {-signal.SIGKILL}, "sigterm": {0}, "stuck_publish": {70}},
    "redbeat": {"sigkill": {-signal.SIGKILL}, "sigterm": {0}},
}


# --- options ---------------------------------------------------------------------------------


@dataclass
class Options:
    rounds: int
    kinds: list[str]
    redbeat: bool
    admin_url: str
    redis_db: int
    lease_ttl: float
    heartbeat: float
    hang_timeout: float
    max_loop_interval: float
    workdir: Path
    json_path: str | None
    quick: bool

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{REDIS_PORT}/{self.redis_db}"

    @property
    def tag(self) -> str:
        return f"{os.getpid()}"


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="faults per kind (default 8)")
    parser.add_argument("--kinds", help=f"comma-separated subset of {','.join(PG_KINDS)}")
    parser.add_argument(
        "--quick", action="store_true", help=f"1 round of {','.join(QUICK_KINDS)} (~3 min)"
    )
    parser.add_argument("--json", dest="json_path", help="also write every figure to this file")
    parser.add_argument("--no-redbeat", action="store_true", help="pg_beat only")
    parser.add_argument(
        "--admin-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="server where the benchmark may CREATE DATABASE (127.0.0.1 only)",
    )
    parser.add_argument(
        "--redis-db", type=int, default=12, help="Redis database number (never flushed)"
    )
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--hang-timeout", type=float, default=5.0)
    parser.add_argument(
        "--redbeat-max-loop-interval",
        type=float,
        default=1.0,
        help="beat_max_loop_interval of the RedBeat replicas (default 1)",
    )
    parser.add_argument("--workdir", help="replica logs go here (default: a new temp dir)")
    args = parser.parse_args(argv)
    kinds = QUICK_KINDS if args.quick else PG_KINDS
    if args.kinds:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = sorted(set(kinds) - set(PG_KINDS))
        if unknown:
            parser.error(f"unknown kinds {unknown}; choose from {','.join(PG_KINDS)}")
    if "127.0.0.1" not in args.admin_url and "localhost" not in args.admin_url:
        parser.error("--admin-url must point at 127.0.0.1")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pg_beat_failover_"))
    return Options(
        rounds=1 if args.quick else max(1, args.rounds),
        kinds=kinds,
        redbeat=not args.no_redbeat,
        admin_url=args.admin_url,
        redis_db=args.redis_db,
        lease_ttl=args.lease_ttl,
        heartbeat=args.heartbeat,
        hang_timeout=args.hang_timeout,
        max_loop_interval=args.redbeat_max_loop_interval,
        workdir=workdir,
        json_path=args.json_path,
        quick=args.quick,
    )


# --- results ---------------------------------------------------------------------------------


@dataclass
class Round:
    scheduler: str
    kind: str
    index: int
    leader: str = ""
    #: Seconds from the fault to the first tick sent by a new leader (None: never resumed).
    failover: float | None = None
    #: row_lock only: max lateness (sent - due) of the other schedules while the row was locked.
    lateness: float | None = None
    expected: int = 0
    executed: int = 0
    missed: int = 0
    #: Ticks absent when the window was first checked that ran later (pg_beat re-publishes a
    #: dead epoch's unsent claims only once that epoch's lease has expired): late, not missed.
    late: int = 0
    duplicates: int = 0
    republished: int = 0
    crashes: int = 0
    exits: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def describe(r: Round) -> str:
    what = (
        f"lateness {fmt(r.lateness)}s" if r.kind == "row_lock" else f"failover {fmt(r.failover)}s"
    )
    text = (
        f"{r.scheduler} {r.kind} #{r.index + 1}: leader {r.leader}, {what}, "
        f"{r.executed}/{r.expected} executed, missed {r.missed}, late {r.late}, "
        f"dup {r.duplicates}, "
        f"republished {r.republished}, crashes {r.crashes}"
    )
    if r.exits:
        text += f", exits {r.exits}"
    if r.notes:
        text += f" ({'; '.join(r.notes)})"
    return text


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "never"
    return f"{value:.{digits}f}"


# --- shared helpers --------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A replica may exit between two looks (LookupError): look again.
        with contextlib.suppress(psycopg.Error, LookupError):
            value = predicate()
            if value:
                return value
        time.sleep(step)
    raise TimeoutError(f"{what} not within {timeout:g}s")


def exits_since(cluster: Cluster, before: dict[str, int]) -> list[tuple[str, int]]:
    with cluster._lock:
        return [
            (name, code)
            for name, replica in cluster.replicas.items()
            for code in replica.exits[before.get(name, 0) :]
        ]


def exit_counts(cluster: Cluster) -> dict[str, int]:
    with cluster._lock:
        return {name: len(replica.exits) for name, replica in cluster.replicas.items()}


def classify_exits(r: Round, exits: list[tuple[str, int]], faulted: str) -> None:
    """Count every exit as a crash except one expected exit of the faulted replica."""
    allowed = EXPECTED_EXITS[r.scheduler].get(r.kind, set())
    r.exits = exits
    matched = False
    for name, code in exits:
        if not matched and name == faulted and code in allowed:
            matched = True
            continue
        r.crashes += 1
    if allowed and not matched:
        r.notes.append(f"expected exit {sorted(allowed)} of {faulted} not seen")


def close_round(r: Round, cluster: Cluster, seen: dict[str, int], faulted: str) -> dict[str, int]:
    """Count the round's replica exits and a dead worker; return the exit counts from which
    the next round counts."""
    exits = exits_since(cluster, seen)
    counts = exit_counts(cluster)
    classify_exits(r, exits, faulted)
    if not worker_alive(cluster):
        r.notes.append("the worker died")
    return counts


def running(cluster: Cluster) -> bool:
    with cluster._lock:
        return all(
            r.process is not None and r.process.poll() is None and not r.paused
            for r in cluster.replicas.values()
        )


def worker_alive(cluster: Cluster) -> bool:
    return cluster.worker is not None and cluster.worker.poll() is None


def kombu_keys(queue: str) -> list[str]:
    """Patterns of the Redis keys kombu creates for ``queue`` (the queue and its bindings)."""
    return [queue + "*", f"_kombu.binding.{queue}*", f"_kombu.binding_permanent.{queue}*"]


def delete_redis_keys(broker_url: str, patterns: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        for pattern in patterns:
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


def sleep_until_due(due_in: float) -> None:
    """Sleep until ``LEAD`` seconds before a tick due in ``due_in`` s (or a later one)."""
    every = SCHEDULES[0][1]
    while due_in < LEAD + 0.05:
        due_in += every
    time.sleep(due_in - LEAD)


def summary_stats(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return min(values), statistics.median(values), max(values)


# --- pg_beat ---------------------------------------------------------------------------------


class PgBeatKind:
    """One pg_beat cluster (3 replicas, 1 worker) for one fault kind, reused across rounds."""

    def __init__(self, kind: str, opts: Options, stack: contextlib.ExitStack) -> None:
        self.kind = kind
        self.opts = opts
        self.private: PrivateCluster | None = None
        self.proxies: dict[str, TcpProxy] = {}
        admin = opts.admin_url
        if kind == "pg_restart":
            self.private = PrivateCluster()
            stack.callback(self.private.cleanup)
            self.private.start()
            admin = self.private.url()
        name = f"pg_beat_failover_{opts.tag}_{kind}"
        create_database(admin, name)
        stack.callback(_quietly, drop_database, admin, name)
        url = database_url(admin, name)
        queue = f"pg_beat_failover_{opts.tag}_{kind}"
        stack.callback(_quietly, delete_redis_keys, opts.broker_url, kombu_keys(queue))
        kwargs: dict[str, Any] = {}
        names = [f"beat-{i}" for i in range(1, REPLICAS + 1)]
        if kind == "partition":
            target = make_url(url)
            self.proxies = {n: TcpProxy(target.port or 5432).start() for n in names}
            kwargs["replica_urls"] = {
                n: target.set(port=p.port).render_as_string(hide_password=False)
                for n, p in self.proxies.items()
            }
        elif kind == "stuck_publish":
            self.proxies = {n: TcpProxy(REDIS_PORT).start() for n in names}
            kwargs["replica_brokers"] = {
                n: f"redis://127.0.0.1:{p.port}/{opts.redis_db}" for n, p in self.proxies.items()
            }
        for proxy in self.proxies.values():
            stack.callback(_quietly, proxy.stop)
        self.cluster = Cluster(
            url,
            opts.broker_url,
            replicas=REPLICAS,
            workdir=opts.workdir / f"pg_beat-{kind}",
            queue=queue,
            lease_ttl=opts.lease_ttl,
            heartbeat_interval=opts.heartbeat,
            hang_timeout=opts.hang_timeout,
            restart_delay=1.0,
            **kwargs,
        )
        stack.callback(self.cluster.stop)
        self.cluster.prepare(SCHEDULES)
        self.cluster.start()
        self.exits_seen = exit_counts(self.cluster)
        self.window_start: datetime | None = None

    # --- observation ---

    def steady(self) -> tuple[str, int]:
        """Wait for a fresh leader, all replicas running and registered, executions caught up."""
        cluster = self.cluster

        def check() -> tuple[str, int] | None:
            if not running(cluster):
                return None
            pids = {name: cluster.pid(name) for name in cluster.replicas}
            with cluster._db() as conn:
                lease = conn.execute(
                    "SELECT epoch, holder, pid FROM pg_beat_leases "
                    "WHERE expires_at > clock_timestamp() AND holder IS NOT NULL"
                ).fetchone()
                if lease is None or pids.get(lease[1]) != lease[2]:
                    return None
                fresh = dict(
                    conn.execute(
                        "SELECT name, pid FROM pg_beat_replicas "
                        "WHERE last_seen_at > clock_timestamp() - interval '2.5 seconds'"
                    ).fetchall()
                )
                if any(fresh.get(name) != pid for name, pid in pids.items()):
                    return None
                behind = conn.execute(
                    "SELECT count(*) FROM pg_beat_schedules s WHERE NOT EXISTS ("
                    " SELECT 1 FROM pg_beat_demo_executions e WHERE e.schedule = s.name"
                    " AND e.due_at > clock_timestamp() - interval '2.5 seconds')"
                ).fetchone()
                if behind is None or behind[0]:
                    return None
            return str(lease[1]), int(lease[0])

        return wait_until(check, STEADY_TIMEOUT, f"pg_beat {self.kind}: a steady cluster")

    # --- one round ---

    def round(self, index: int) -> Round:
        cluster = self.cluster
        r = Round("pg_beat", self.kind, index)
        leader, epoch = self.steady()
        start = self.window_start or utcnow()
        time.sleep(SETTLE)
        leader, epoch = self.steady()
        r.leader = leader
        if self.kind == "row_lock":
            self._row_lock(r)
        else:
            self._fail_over(r, leader, epoch)
        self.steady()
        time.sleep(AFTER)
        end = utcnow() - timedelta(seconds=1)
        cluster.wait_executed_until(end, timeout=RESUME_TIMEOUT)
        verdict = cluster.verify(start, end)
        if verdict.missed:
            # A tick claimed by a dead epoch and never sent is re-published once that epoch's
            # lease has expired: give it the TTL (and some) before calling it missed.
            absent = len(verdict.missed)
            deadline = time.monotonic() + self.opts.lease_ttl + 5
            while verdict.missed and time.monotonic() < deadline:
                time.sleep(0.5)
                verdict = cluster.verify(start, end)
            r.late = absent - len(verdict.missed)
        self.window_start = end + timedelta(microseconds=1)
        r.expected, r.executed = verdict.expected, verdict.executed
        r.missed, r.duplicates = len(verdict.missed), len(verdict.duplicates)
        r.republished = len(verdict.republished)
        for label, ticks in (
            ("missed", verdict.missed),
            ("duplicates", verdict.duplicates),
            ("republished", verdict.republished),
        ):
            if ticks:
                r.examples[label] = [f"{s} @ {d.isoformat()}" for s, d in ticks[:10]]
        self.exits_seen = close_round(r, cluster, self.exits_seen, leader)
        return r

    def _fail_over(self, r: Round, leader: str, epoch: int) -> None:
        cluster = self.cluster
        self._align()
        started = time.time()
        self._inject(leader)
        resumed = cluster.first_send_after(epoch, started, timeout=RESUME_TIMEOUT)
        r.failover = math.inf if resumed is None else resumed
        self._recover(r, leader)

    def _align(self) -> None:
        """Sleep until ``LEAD`` seconds before the next tick falls due."""
        with self.cluster._db() as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM min(next_run_at) - clock_timestamp()) "
                "FROM pg_beat_schedules WHERE enabled"
            ).fetchone()
        sleep_until_due(float(row[0]) if row and row[0] is not None else 0.0)

    def _inject(self, leader: str) -> None:
        cluster, kind = self.cluster, self.kind
        if kind == "sigkill":
            cluster.signal(leader, signal.SIGKILL)
        elif kind == "sigstop":
            cluster.signal(leader, signal.SIGSTOP)
        elif kind == "sigterm":
            cluster.signal(leader, signal.SIGTERM)
        elif kind == "terminate_backend":
            cluster.terminate_backends(leader)
        elif kind == "pg_restart":
            assert self.private is not None
            self.private.restart(mode="fast")
        elif kind in ("partition", "stuck_publish"):
            # No FIN, no RST: the leader's packets to PostgreSQL (partition) or to the broker
            # (stuck_publish: its next publish blocks forever) vanish.
            self.proxies[leader].blackhole()
        else:
            raise ValueError(kind)

    def _recover(self, r: Round, leader: str) -> None:
        if self.kind == "sigstop":
            self.cluster.signal(leader, signal.SIGCONT)
        elif self.kind == "partition":
            time.sleep(2)
            self.proxies[leader].cut()  # drop what the partition held, do not deliver it late
            self.proxies[leader].restore()
        elif self.kind == "stuck_publish":
            self.proxies[leader].cut()
            self.proxies[leader].restore()
            if "dispatch loop stuck" not in self.cluster.log(leader):
                r.notes.append("no 'dispatch loop stuck' report in the leader's log")

    def _row_lock(self, r: Round) -> None:
        """An admin's open transaction on one schedule row; the others must stay on time."""
        url = libpq_url(self.cluster.database_url)
        locked_at = utcnow()
        with psycopg.connect(url) as admin:
            admin.execute(
                "SELECT * FROM pg_beat_schedules WHERE name = %s FOR UPDATE", (LOCKED_SCHEDULE,)
            )
            time.sleep(self.opts.lease_ttl)
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT max(extract(epoch FROM sent_at - due_at)) FROM pg_beat_runs "
                    "WHERE schedule_name <> %s AND due_at > %s AND due_at <= clock_timestamp()",
                    (LOCKED_SCHEDULE, locked_at),
                ).fetchone()
            admin.rollback()
        r.lateness = math.inf if row is None or row[0] is None else float(row[0])


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log(f"cleanup: {getattr(fn, '__name__', fn)} failed: {exc}")


# --- RedBeat ---------------------------------------------------------------------------------


class RedBeatCluster(Cluster):
    """The same harness (supervisor, PIDs, logs), running ``redbeat.RedBeatScheduler``."""

    APP = "benchmarks.redbeat_app"
    SCHEDULER = "redbeat.RedBeatScheduler"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for replica in self.replicas.values():
            replica.env["REDBEAT_BENCH_REPLICA"] = replica.name


class RedBeatKind:
    """One RedBeat cluster (3 replicas, 1 worker) for one fault kind, reused across rounds."""

    def __init__(self, kind: str, opts: Options, stack: contextlib.ExitStack) -> None:
        self.kind = kind
        self.opts = opts
        name = f"pg_beat_failover_{opts.tag}_redbeat_{kind}"
        create_database(opts.admin_url, name)
        stack.callback(_quietly, drop_database, opts.admin_url, name)
        self.record_url = libpq_url(database_url(opts.admin_url, name))
        queue = f"redbeat_failover_{opts.tag}_{kind}"
        prefix = self.prefix = f"redbeat_failover_{opts.tag}_{kind}:"
        stack.callback(
            _quietly,
            delete_redis_keys,
            opts.broker_url,
            [*kombu_keys(queue), prefix + "*"],
        )
        with psycopg.connect(self.record_url, autocommit=True) as conn:
            from redbeat_app import EXECUTIONS_DDL

            conn.execute(EXECUTIONS_DDL)
        self.cluster = RedBeatCluster(
            database_url(opts.admin_url, name),
            opts.broker_url,
            replicas=REPLICAS,
            workdir=opts.workdir / f"redbeat-{kind}",
            queue=queue,
            restart_delay=1.0,
            extra_env={
                "REDBEAT_BENCH_QUEUE": queue,
                "REDBEAT_BENCH_KEY_PREFIX": prefix,
                "REDBEAT_BENCH_RECORD_URL": self.record_url,
                "REDBEAT_BENCH_LOCK_TIMEOUT": f"{opts.lease_ttl:g}",
                "REDBEAT_BENCH_MAX_LOOP_INTERVAL": f"{opts.max_loop_interval:g}",
            },
        )
        stack.callback(self.cluster.stop)
        self._save_schedules()
        self.cluster.start()
        self.exits_seen = exit_counts(self.cluster)
        self.window_start: float | None = None

    def _save_schedules(self) -> None:
        """``RedBeatSchedulerEntry(...).save()`` per schedule, in a process with the app's env."""
        names = [name for name, _ in SCHEDULES]
        code = (
            "from benchmarks.redbeat_app import save_schedules; "
            f"save_schedules({names!r}, {SCHEDULES[0][1]!r})"
        )
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, **self.cluster.base_env},
            cwd=ROOT,
            check=True,
            timeout=60,
        )

    # --- observation ---

    def _db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.record_url, autocommit=True, connect_timeout=3)

    def _starts(self, name: str) -> int:
        return self.cluster.log(name).count("beat: Starting...")

    def steady(self) -> str:
        """All replicas started (waiting on the lock or leading) and the leader sending."""
        cluster = self.cluster

        def check() -> str | None:
            if not running(cluster):
                return None
            with cluster._lock:
                started = all(
                    self._starts(name) >= replica.restarts + 1
                    for name, replica in cluster.replicas.items()
                )
            if not started:
                return None
            pids = {cluster.pid(name): name for name in cluster.replicas}
            with self._db() as conn:
                rows = conn.execute(
                    "SELECT schedule, max(sent_at) FROM redbeat_bench_executions GROUP BY 1"
                ).fetchall()
                last = conn.execute(
                    "SELECT beat_pid FROM redbeat_bench_executions ORDER BY sent_at DESC LIMIT 1"
                ).fetchone()
            now = time.time()
            if len(rows) < len(SCHEDULES) or any(t is None or now - t > 2.5 for _, t in rows):
                return None
            if last is None or last[0] not in pids:
                return None
            return pids[last[0]]

        return str(wait_until(check, STEADY_TIMEOUT, f"redbeat {self.kind}: a steady cluster"))

    def _align(self) -> None:
        """Sleep until ``LEAD`` seconds before RedBeat's next due entry (its zset's score)."""
        import redis

        client = redis.Redis.from_url(self.opts.broker_url)
        try:
            first = client.zrange(f"{self.prefix}:schedule", 0, 0, withscores=True)
        finally:
            client.close()
        sleep_until_due(float(first[0][1]) - time.time() if first else 0.0)

    def first_send_by_other(self, pid: int, since: float) -> float | None:
        def check() -> float | None:
            with self._db() as conn:
                row = conn.execute(
                    "SELECT min(sent_at) FROM redbeat_bench_executions "
                    "WHERE sent_at > %s AND beat_pid <> %s",
                    (since, pid),
                ).fetchone()
            return None if row is None or row[0] is None else max(1e-9, row[0] - since)

        try:
            return float(wait_until(check, RESUME_TIMEOUT, "a send by another replica", 0.05))
        except TimeoutError:
            return None

    def wait_sent_until(self, end: float) -> None:
        def check() -> bool:
            with self._db() as conn:
                row = conn.execute(
                    "SELECT count(DISTINCT schedule) FROM redbeat_bench_executions "
                    "WHERE sent_at >= %s",
                    (end,),
                ).fetchone()
            return row is not None and row[0] >= len(SCHEDULES)

        wait_until(check, RESUME_TIMEOUT, "RedBeat sends past the window")

    def verdict(self, r: Round, start: float, end: float) -> None:
        """Gaps between consecutive publishes of each schedule (see the README)."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT schedule, sent_at FROM redbeat_bench_executions "
                "WHERE sent_at IS NOT NULL AND sent_at >= %s ORDER BY schedule, sent_at",
                (start - 60,),
            ).fetchall()
        by_schedule: dict[str, list[float]] = {}
        for schedule, sent in rows:
            by_schedule.setdefault(schedule, []).append(float(sent))
        for name, every in SCHEDULES:
            times = by_schedule.get(name, [])
            r.executed += sum(1 for t in times if start <= t < end)
            for a, b in itertools.pairwise(times):
                if not start <= a < end:
                    continue
                gap = b - a
                if gap < every / 2:
                    r.duplicates += 1
                    r.examples.setdefault("duplicates", []).append(f"{name} @ {b:.3f}")
                else:
                    # RedBeat runs an overdue entry once: of the due times inside the gap, one
                    # ran late (at b), the others were lost.
                    lost = max(0, math.floor(gap / every) - 1)
                    r.missed += lost
                    if lost:
                        r.examples.setdefault("missed", []).append(
                            f"{name}: {lost} in a gap of {gap:.2f}s after {a:.3f}"
                        )
        # No grid to count against: the due times in the window are the ticks that ran in it plus
        # the ones lost in its gaps.
        r.expected = r.executed + r.missed

    # --- one round ---

    def round(self, index: int) -> Round:
        cluster = self.cluster
        r = Round("redbeat", self.kind, index)
        self.steady()
        start = self.window_start or time.time()
        time.sleep(SETTLE)
        leader = self.steady()
        r.leader = leader
        pid = cluster.pid(leader)
        self._align()
        started = time.time()
        sig = {"sigkill": signal.SIGKILL, "sigstop": signal.SIGSTOP, "sigterm": signal.SIGTERM}
        cluster.signal(leader, sig[self.kind])
        resumed = self.first_send_by_other(pid, started)
        r.failover = math.inf if resumed is None else resumed
        if self.kind == "sigstop":
            cluster.signal(leader, signal.SIGCONT)
        self.steady()
        time.sleep(AFTER)
        end = time.time() - 1
        self.wait_sent_until(end)
        self.verdict(r, start, end)
        self.window_start = end
        self.exits_seen = close_round(r, cluster, self.exits_seen, leader)
        return r


# --- the run ---------------------------------------------------------------------------------


def run_kind(
    scheduler: str, kind: str, opts: Options, results: list[Round], factory: Callable[..., Any]
) -> None:
    log(f"{scheduler} {kind}: starting a cluster of {REPLICAS} replicas and a worker")
    stack = contextlib.ExitStack()
    try:
        runner = factory(kind, opts, stack)
        for index in range(opts.rounds):
            try:
                r = runner.round(index)
            except Exception as exc:  # a broken round is reported, and ends this kind
                r = Round(scheduler, kind, index)
                if kind == "row_lock":
                    r.lateness = math.inf
                else:
                    r.failover = math.inf
                r.notes.append(f"round aborted: {type(exc).__name__}: {exc}")
                log(describe(r))
                results.append(r)
                break
            log(describe(r))
            results.append(r)
        log(f"{scheduler} {kind}: stopping; logs in {opts.workdir / f'{scheduler}-{kind}'}")
    finally:
        with _INTERRUPTS.deferred():
            stack.close()


def run(opts: Options, results: list[Round]) -> None:
    for kind in opts.kinds:
        run_kind("pg_beat", kind, opts, results, PgBeatKind)
        if opts.redbeat and kind in REDBEAT_KINDS:
            run_kind("redbeat", kind, opts, results, RedBeatKind)


# --- the report ------------------------------------------------------------------------------


@dataclass
class KindSummary:
    rounds: int = 0
    failover: tuple[float | None, float | None, float | None] = (None, None, None)
    lateness: tuple[float | None, float | None, float | None] = (None, None, None)
    missed: int = 0
    late: int = 0
    duplicates: int = 0
    republished: int = 0
    crashes: int = 0


def summarize(results: list[Round], scheduler: str, kind: str) -> KindSummary | None:
    rounds = [r for r in results if r.scheduler == scheduler and r.kind == kind]
    if not rounds:
        return None
    failovers = [r.failover for r in rounds if r.failover is not None]
    latenesses = [r.lateness for r in rounds if r.lateness is not None]
    return KindSummary(
        rounds=len(rounds),
        failover=summary_stats(failovers),
        lateness=summary_stats(latenesses),
        missed=sum(r.missed for r in rounds),
        late=sum(r.late for r in rounds),
        duplicates=sum(r.duplicates for r in rounds),
        republished=sum(r.republished for r in rounds),
        crashes=sum(r.crashes for r in rounds),
    )


def table(results: list[Round], opts: Options) -> str:
    header = [
        "fault kind",
        "n",
        "pg_beat failover min/med/max s",
        "missed",
        "dup",
        "repub",
        "crashes",
        "|",
        "n",
        "RedBeat failover med/max s",
        "missed",
        "dup",
        "crashes",
    ]
    rows = [header]
    for kind in opts.kinds:
        pg = summarize(results, "pg_beat", kind)
        rb = summarize(results, "redbeat", kind)
        row = [kind]
        if pg is None:
            row += ["0", "-", "-", "-", "-", "-"]
        else:
            stats, mark = (pg.lateness, " †") if kind == "row_lock" else (pg.failover, "")
            row += [
                str(pg.rounds),
                "/".join(fmt(v) for v in stats) + mark,
                str(pg.missed),
                str(pg.duplicates),
                str(pg.republished),
                str(pg.crashes),
            ]
        row.append("|")
        if rb is None:
            na = "n/a" if kind not in REDBEAT_KINDS else "-"
            row += ["-", na, na, na, na]
        else:
            row += [
                str(rb.rounds),
                f"{fmt(rb.failover[1])}/{fmt(rb.failover[2])}",
                str(rb.missed),
                str(rb.duplicates),
                str(rb.crashes),
            ]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if "row_lock" in opts.kinds:
        lines.append(
            "† row_lock is not a failover: max lateness (sent - due) of the other schedules "
            f"while one schedule's row was locked for {opts.lease_ttl:g} s, min/med/max over rounds"
        )
    late = {k: s.late for k in opts.kinds if (s := summarize(results, "pg_beat", k)) and s.late}
    if late:
        lines.append(
            "late, not missed (pg_beat ran them after the window was first checked, once the dead "
            "epoch's lease had expired): " + ", ".join(f"{k} {n}" for k, n in late.items())
        )
    lines.append(
        "failover: fault -> first tick sent by a new leader (pg_beat: a later epoch; RedBeat: "
        "another process). missed/dup/repub counted on the worker's side; crashes = exits other "
        "than the one the fault calls for."
    )
    return "\n".join(lines)


def targets(results: list[Round], opts: Options) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL/n/a) for each target of the issue, from pg_beat's figures."""
    pg = [r for r in results if r.scheduler == "pg_beat"]

    def failovers(*kinds: str) -> list[float]:
        return [r.failover for r in pg if r.kind in kinds and r.failover is not None]

    def check(values: list[float], reducer: Callable[[list[float]], float], bound: float) -> tuple:
        if not values:
            return "-", "n/a"
        value = reducer(values)
        return f"{fmt(value)} s", "PASS" if value <= bound else "FAIL"

    hang_bound = opts.lease_ttl + 2
    out = [
        ("SIGKILL: median failover <= 1 s", *check(failovers("sigkill"), statistics.median, 1.0)),
        ("SIGKILL: max failover <= 2 s", *check(failovers("sigkill"), max, 2.0)),
        ("SIGTERM: max failover <= 0.5 s", *check(failovers("sigterm"), max, 0.5)),
        (
            f"Hang (sigstop, stuck_publish): max failover <= TTL + 2 = {hang_bound:g} s",
            *check(failovers("sigstop", "stuck_publish"), max, hang_bound),
        ),
    ]
    faults = len(pg)
    for label, attr in (
        ("missed ticks", "missed"),
        ("replica crashes", "crashes"),
        ("duplicate executions (same epoch)", "duplicates"),
        ("re-published after a crash (counted apart, target 0)", "republished"),
    ):
        total = sum(getattr(r, attr) for r in pg)
        out.append((f"0 {label}", str(total), "PASS" if faults and total == 0 else "FAIL"))
    out.append(("at least 50 injected faults", str(faults), "PASS" if faults >= 50 else "FAIL"))
    return out


def report(results: list[Round], opts: Options) -> str:
    lines = [
        "",
        f"Failover benchmark: {REPLICAS} replicas, TTL {opts.lease_ttl:g} s, heartbeat "
        f"{opts.heartbeat:g} s, hang timeout {opts.hang_timeout:g} s; {len(SCHEDULES)} schedules "
        f"every {SCHEDULES[0][1]:g} s (pg_beat: catch_up); RedBeat: redbeat_lock_timeout "
        f"{opts.lease_ttl:g} s, beat_max_loop_interval {opts.max_loop_interval:g} s",
        "",
        table(results, opts),
        "",
        "Targets (issue 3, pg_beat):",
    ]
    rows = targets(results, opts)
    width = max(len(t) for t, _, _ in rows)
    lines += [f"  {t.ljust(width)}  {m:>8}  {v}" for t, m, v in rows]
    lines.append(f"\nreplica logs: {opts.workdir}")
    return "\n".join(lines)


def write_json(results: list[Round], opts: Options, path: str) -> None:
    data = {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "rounds": [
            {
                k: (None if isinstance(v, float) and math.isinf(v) else v)
                for k, v in asdict(r).items()
            }
            for r in results
        ],
        "targets": [
            {"target": t, "measured": m, "verdict": v} for t, m, v in targets(results, opts)
        ],
    }
    Path(path).write_text(json.dumps(data, indent=2, default=str))


# --- main ------------------------------------------------------------------------------------


class Interrupts:
    """Ctrl-C, SIGTERM and SIGHUP raise KeyboardInterrupt, except while cleaning up: then the
    signal is remembered and raised once the cleanup is done, so no process is left behind."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.deferring = 0
        self.pending: int | None = None

    def handler(self, signum: int, frame: Any) -> None:
        if self.deferring:
            self.pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {s: signal.signal(s, self.handler) for s in self.SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
        if not self.deferring and self.pending is not None:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(f"signal {signum}")


_INTERRUPTS = Interrupts()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    log(
        f"failover benchmark: kinds {','.join(opts.kinds)}, {opts.rounds} round(s) each, "
        f"RedBeat {'on' if opts.redbeat else 'off'}, workdir {opts.workdir}"
    )
    results: list[Round] = []
    status = 0
    with _INTERRUPTS.installed():
        try:
            run(opts, results)
        except KeyboardInterrupt:
            log("interrupted: processes stopped, databases dropped; partial results follow")
            status = 130
    print(report(results, opts), flush=True)
    if opts.json_path:
        write_json(results, opts, opts.json_path)
        log(f"wrote {opts.json_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
