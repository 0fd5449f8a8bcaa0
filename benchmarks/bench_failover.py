"""Failover benchmark: pg_beat's HA cluster under injected faults, side by side with RedBeat.

    .venv/bin/python benchmarks/bench_failover.py --quick            # 1 round of 5 kinds, ~2 min
    .venv/bin/python benchmarks/bench_failover.py --quick --kinds broker  # broker kinds, ~5 min
    .venv/bin/python benchmarks/bench_failover.py --json out.json    # all 17 kinds, ~35 min (est.)

Three real ``celery beat`` replicas and a worker per fault kind (``examples.cluster.Cluster`` for
pg_beat, the same harness running ``redbeat.RedBeatScheduler`` for RedBeat), three 1-second
schedules, the same fault injected round after round into the leader. Besides the direct
connection, pg_beat runs where production runs it: behind a real PgBouncer (session and
transaction pooling), on a primary that fails over to its promoted standby (a libpq multi-host
URL), and behind a link that the kernel black-holes. Per kind it prints the failover time (fault
to the first tick sent by a new leader), and from the worker's side the ticks missed, duplicated,
re-published and unexpected, the replicas that exited when they should not have, the log records
a replica wrote for the fault and the leader terms the fault opened.

The broker kinds (``_broker_faults.py``) take the broker away instead: a Redis of the run's own
killed or stopped for ``--outage`` seconds, a RabbitMQ of its own restarted, and the leader alone
cut from Redis. They print, per scheduler, the exits, leader terms and log records of the
outage, the ticks due during it that ran 0 times or more than once, and how soon after the
broker's return the first tick went out. See benchmarks/README.md ("Failover benchmark") for
what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import _broker_faults as brokerfaults  # noqa: E402
from _common import revision  # noqa: E402
from support import blackhole as kernel_blackhole  # noqa: E402
from support.pg import (  # noqa: E402
    NoPostgresAvailable,
    PrivateCluster,
    create_database,
    database_url,
    drop_database,
    libpq_url,
)
from support.pgbouncer import SESSION, TRANSACTION, PgBouncer, PgBouncerUnavailable  # noqa: E402
from support.pgbouncer import find_binary as find_pgbouncer  # noqa: E402
from support.proxy import TcpProxy  # noqa: E402
from support.rabbitmq import RabbitMQUnavailable  # noqa: E402
from support.replication import ReplicatedPair  # noqa: E402

from examples.cluster import Cluster, utcnow  # noqa: E402

#: Kinds on a direct connection (and pg_restart's private server).
DIRECT_KINDS = [
    "sigkill",
    "sigstop",
    "sigterm",
    "terminate_backend",
    "pg_restart",
    "partition",
    "row_lock",
]
#: Kinds where production runs pg_beat: behind PgBouncer, on a promoted standby, behind a
#: black-holed link.
TOPOLOGY_KINDS = [
    "pgbouncer_session_sigkill",
    "pgbouncer_session_sigstop",
    "pgbouncer_transaction_sigkill",
    "pgbouncer_transaction_sigstop",
    "promotion",
    "blackhole",
]
#: The broker goes away (a Redis of its own killed or stopped, a RabbitMQ of its own restarted)
#: or the leader alone loses it (broker_partition). See _broker_faults.py.
BROKER_KINDS = brokerfaults.BROKER_KINDS
PG_KINDS = DIRECT_KINDS + TOPOLOGY_KINDS + BROKER_KINDS
REDBEAT_KINDS = ("sigkill", "sigstop", "sigterm", *brokerfaults.REDBEAT_BROKER_KINDS)
#: ``--kinds`` may name these groups.
KIND_GROUPS = {"direct": DIRECT_KINDS, "topology": TOPOLOGY_KINDS, "broker": BROKER_KINDS}
QUICK_KINDS = ["sigkill", "sigterm", "sigstop", "pgbouncer_transaction_sigkill", "blackhole"]
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
#: PgBouncer's ``default_pool_size``: a session pool needs a server session per client session
#: (3 replicas, each with a few connections); the transaction pool keeps PgBouncer's small
#: pool of the tests, so one client visibly gets different server sessions.
POOL_SIZE = {SESSION: 20, TRANSACTION: 3}
# Exit codes a replica may show after the fault, per kind (anything else is a crash).
EXPECTED_EXITS: dict[str, dict[str, set[int]]] = {
    "pg_beat": {
        "sigkill": {-signal.SIGKILL},
        "sigterm": {0},
        "pgbouncer_session_sigkill": {-signal.SIGKILL},
        "pgbouncer_transaction_sigkill": {-signal.SIGKILL},
    },
    "redbeat": {"sigkill": {-signal.SIGKILL}, "sigterm": {0}},
}
#: A log record of a replica (Celery's format), not a banner line or a traceback's.
LOG_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+: ", re.MULTILINE)
#: In pg_beat's INFO record of a tick sent (or of the ticks folded into one line per second):
#: the normal trace of dispatch, as many as the ticks in the window, whatever the fault.
#: tests/ha/test_topologies.py leaves these out by the same test.
SENT = "] sent "
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d [\d:]+),(\d{3}): ")
STEPPED_DOWN = "no longer the leader"
RECONNECTED = "watchdog: connected to the database"
#: What tests/ha/test_topologies.py allows a replica to log for one fault.
RECORDS_PER_FAULT = 20


def fault_signal(kind: str) -> signal.Signals | None:
    """The signal a kind sends the leader (its name ends with it), or None."""
    for name in ("sigkill", "sigstop", "sigterm"):
        if kind == name or kind.endswith("_" + name):
            return signal.Signals[name.upper()]
    return None


def pool_mode(kind: str) -> str | None:
    """PgBouncer's pool mode of a ``pgbouncer_<mode>_<signal>`` kind, else None."""
    if not kind.startswith("pgbouncer_"):
        return None
    return SESSION if kind.startswith("pgbouncer_session_") else TRANSACTION


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
    #: blackhole: how long the leader's link stays black-holed per round.
    hole: float
    #: Broker kinds: seconds from the fault until the broker is brought back (the partition:
    #: until the leader's link is restored), and how many rounds each.
    outage: float
    broker_rounds: int
    workdir: Path
    json_path: str | None
    quick: bool

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{REDIS_PORT}/{self.redis_db}"

    @property
    def tag(self) -> str:
        return f"{os.getpid()}"

    def rounds_for(self, kind: str) -> int:
        return self.broker_rounds if kind in BROKER_KINDS else self.rounds


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="faults per kind (default 8)")
    parser.add_argument(
        "--kinds",
        help=f"comma-separated subset of {','.join(PG_KINDS)}, or the groups "
        f"{','.join(KIND_GROUPS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"1 round of {','.join(QUICK_KINDS)}, a 5 s black hole (~2 min)",
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
    parser.add_argument(
        "--blackhole-seconds",
        type=float,
        help="blackhole: how long the leader's link is cut per round (default 10, --quick 5)",
    )
    parser.add_argument(
        "--outage",
        type=float,
        default=30.0,
        help="broker kinds: seconds the broker is away (the partition: the leader's link is cut) "
        "per round (default 30: the point of these kinds; shorten only for a check)",
    )
    parser.add_argument(
        "--broker-rounds",
        type=int,
        default=3,
        help="rounds of each broker kind (default 3, --quick 1)",
    )
    parser.add_argument("--workdir", help="replica logs go here (default: a new temp dir)")
    args = parser.parse_args(argv)
    kinds = QUICK_KINDS if args.quick else PG_KINDS
    if args.kinds:
        named = [k.strip() for k in args.kinds.split(",") if k.strip()]
        kinds = [k for name in named for k in KIND_GROUPS.get(name, [name])]
        unknown = sorted(set(kinds) - set(PG_KINDS))
        if unknown:
            parser.error(f"unknown kinds {unknown}; choose from {','.join(PG_KINDS)}")
    if args.outage <= 0:
        parser.error("--outage must be positive")
    if "127.0.0.1" not in args.admin_url and "localhost" not in args.admin_url:
        parser.error("--admin-url must point at 127.0.0.1")
    hole = args.blackhole_seconds or (5.0 if args.quick else 10.0)
    if hole <= 0:
        parser.error("--blackhole-seconds must be positive")
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
        hole=hole,
        outage=args.outage,
        broker_rounds=1 if args.quick else max(1, args.broker_rounds),
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
    #: Executions that match no due tick of the grid (Cluster.verify's ``unexpected``).
    unexpected: int = 0
    crashes: int = 0
    #: Log records each replica wrote from the fault to the end of the round (pg_beat), not
    #: counting the per-tick send records; ``records_all`` counts those too.
    records: dict[str, int] = field(default_factory=dict)
    records_all: dict[str, int] = field(default_factory=dict)
    #: Rows the round added to pg_beat_leader_terms: 1 is one takeover, more is flapping.
    terms: int | None = None
    #: blackhole: seconds from the fault to the cut-off leader's "no longer the leader" record.
    noticed: float | None = None
    #: blackhole: seconds from restore() to its watchdog's "connected to the database" record;
    #: broker_partition: to its "broker: reachable again" record (its next probe).
    rejoined: float | None = None
    #: Broker kinds: seconds from the fault until the broker answered again (the partition:
    #: until the leader's link was restored).
    away: float | None = None
    #: Broker outages: seconds from the broker's return to the first tick published after it
    #: (pg_beat: ``pg_beat_runs.sent_at``; RedBeat: its send stamp). The partition: from the
    #: fault to the first tick sent by the new leader (the failover time).
    first_publish: float | None = None
    #: Broker kinds: ticks due while the broker was away (RedBeat has no grid: see
    #: brokerfaults.redbeat_outage), of them run 0 times, and more than once (pg_beat: by one
    #: epoch or by two), from the worker's side.
    due_away: int | None = None
    missed_away: int = 0
    duplicated_away: int = 0
    #: broker_partition: whether the cut-off leader logged "handing the lease over".
    handed_over: bool | None = None
    exits: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def max_records(self) -> int | None:
        """Log records of the replica that wrote most for this fault."""
        return max(self.records.values()) if self.records else None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def describe(r: Round) -> str:
    what = (
        f"lateness {fmt(r.lateness)}s" if r.kind == "row_lock" else f"failover {fmt(r.failover)}s"
    )
    if r.kind in brokerfaults.OUTAGE_KINDS:
        what = "an outage, not a failover"
    text = (
        f"{r.scheduler} {r.kind} #{r.index + 1}: leader {r.leader}, {what}, "
        f"{r.executed}/{r.expected} executed, missed {r.missed}, late {r.late}, "
        f"dup {r.duplicates}, republished {r.republished}, unexpected {r.unexpected}, "
        f"crashes {r.crashes}"
    )
    if r.records:
        text += f", log records {r.records} ({r.records_all} with sends)"
    if r.terms is not None:
        text += f", terms {r.terms}"
    if r.kind == "blackhole":
        text += f", noticed {fmt(r.noticed)}s, rejoined {fmt(r.rejoined)}s after restore"
    if r.kind in BROKER_KINDS:
        text += (
            f", broker away {fmt(r.away)}s, first publish {fmt(r.first_publish)}s, "
            f"{r.due_away} due while away: missed {r.missed_away}, "
            f"duplicated {r.duplicated_away}"
        )
    if r.handed_over is not None:
        text += f", handed over {r.handed_over}, broker reachable {fmt(r.rejoined)}s after restore"
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


Stats = tuple[float | None, float | None, float | None, float | None]


def nearest_rank(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summary_stats(values: list[float]) -> Stats:
    """min, median, p90 (nearest rank: the max below 10 values) and max."""
    if not values:
        return None, None, None, None
    return min(values), statistics.median(values), nearest_rank(values, 90), max(values)


# --- replica logs, leader terms, missing tools ----------------------------------------------


def log_records(cluster: Cluster, name: str) -> tuple[int, int]:
    """Log records (not banner lines, not traceback lines) ``name`` has written so far:
    (all but the per-tick send records, all). The send records are pg_beat's "] sent " and
    stock beat's "Sending due task" (RedBeat)."""
    lines = [line for line in cluster.log(name).splitlines() if LOG_RECORD.match(line)]
    quiet = [line for line in lines if SENT not in line and brokerfaults.REDBEAT_SENT not in line]
    return len(quiet), len(lines)


def first_record(cluster: Cluster, name: str, text: str, since: float) -> float | None:
    """UNIX time of ``name``'s first log record at or after ``since`` that contains ``text``.

    Celery stamps records with the local time to the millisecond; so does this process."""
    for line in cluster.log(name).splitlines():
        match = LOG_TIME.match(line)
        if match is None or text not in line:
            continue
        at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(match[2]) / 1e3
        if at >= since:
            return at
    return None


def wait_for_record(
    cluster: Cluster, name: str, text: str, since: float, timeout: float
) -> float | None:
    """:func:`first_record`, waiting up to ``timeout`` s for it (None: not logged)."""
    deadline = time.monotonic() + timeout
    while True:
        found = first_record(cluster, name, text, since)
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def first_sent_since(cluster: Cluster, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` (time.time()) to the first tick pg_beat recorded sent at or after
    it (``pg_beat_runs.sent_at``), waiting up to ``timeout`` s; None: none was sent."""

    def check() -> float | None:
        with cluster._db() as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM min(sent_at)) FROM pg_beat_runs "
                "WHERE sent_at >= to_timestamp(%s)",
                (since,),
            ).fetchone()
        return None if row is None or row[0] is None else max(1e-9, float(row[0]) - since)

    try:
        return float(wait_until(check, timeout, "a tick sent", 0.05))
    except TimeoutError:
        return None


def leader_terms(cluster: Cluster) -> int:
    with cluster._db() as conn:
        row = conn.execute("SELECT count(*) FROM pg_beat_leader_terms").fetchone()
    return int(row[0]) if row else 0


def server_tool(name: str) -> str | None:
    """Path of a PostgreSQL server program (PATH, then /usr/lib/postgresql/*/bin), or None."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def missing_tool(kind: str) -> str | None:
    """Why ``kind`` cannot run on this machine (a tool it needs is missing), or None."""
    if kind in BROKER_KINDS:
        return brokerfaults.missing_tool(kind)
    if pool_mode(kind) is not None and find_pgbouncer() is None:
        return "pgbouncer not found on PATH nor at /usr/sbin/pgbouncer"
    if kind == "blackhole":
        return kernel_blackhole.problem()
    needs = {"pg_restart": ("initdb", "pg_ctl"), "promotion": ("initdb", "pg_ctl", "pg_basebackup")}
    absent = [tool for tool in needs.get(kind, ()) if server_tool(tool) is None]
    if absent:
        return f"{', '.join(absent)} not found (PostgreSQL server binaries)"
    return None


#: What the test-support helpers raise when a tool or an OS user is missing.
UNAVAILABLE = (
    PgBouncerUnavailable,
    kernel_blackhole.KernelBlackholeUnavailable,
    NoPostgresAvailable,
    brokerfaults.BrokerUnavailable,
    RabbitMQUnavailable,
)


# --- pg_beat ---------------------------------------------------------------------------------


class PgBeatKind:
    """One pg_beat cluster (3 replicas, 1 worker) for one fault kind, reused across rounds
    (promotion: one per round, see :class:`PromotionKind`)."""

    def __init__(
        self, kind: str, opts: Options, stack: contextlib.ExitStack, label: str = ""
    ) -> None:
        self.kind = kind
        self.opts = opts
        self.private: PrivateCluster | None = None
        self.pair: ReplicatedPair | None = None
        self.bouncer: PgBouncer | None = None
        self.proxies: dict[str, TcpProxy] = {}
        name = f"pg_beat_failover_{opts.tag}_{kind}"
        names = [f"beat-{i}" for i in range(1, REPLICAS + 1)]
        kwargs: dict[str, Any] = {}
        extra_env: dict[str, str] = {}
        if kind == "promotion":
            # Every connection (replicas, worker, this script) names both servers and lands on
            # whichever accepts writes. The pair and its database go away with the round.
            self.pair = ReplicatedPair()
            stack.callback(self.pair.cleanup)
            self.pair.start()
            create_database(self.pair.primary.url(), name)
            url = self.pair.multi_host_url(name, connect_timeout="2")
        else:
            admin = opts.admin_url
            if kind == "pg_restart":
                self.private = PrivateCluster()
                stack.callback(self.private.cleanup)
                self.private.start()
                admin = self.private.url()
            create_database(admin, name)
            stack.callback(_quietly, drop_database, admin, name)
            url = database_url(admin, name)
        queue = f"pg_beat_failover_{opts.tag}_{kind}"
        broker_url = opts.broker_url
        #: Broker outages: the cluster's broker, of this kind's own.
        self.outage: brokerfaults.Outage | None = None
        if kind in brokerfaults.OUTAGE_KINDS:
            self.outage = brokerfaults.Outage(kind, opts.workdir / f"pg_beat-{kind}", stack)
            broker_url = self.outage.url()
        else:
            stack.callback(_quietly, delete_redis_keys, opts.broker_url, kombu_keys(queue))
        mode = pool_mode(kind)
        if mode is not None:
            # Only the replicas go through PgBouncer; the worker and this script connect
            # directly, so what they record and read is no part of the fault.
            target = make_url(url)
            self.bouncer = PgBouncer(
                target_port=target.port or 5432, pool_mode=mode, default_pool_size=POOL_SIZE[mode]
            )
            stack.callback(self.bouncer.cleanup)
            self.bouncer.start()
            kwargs["replica_urls"] = dict.fromkeys(names, self.bouncer.url(target.database or ""))
            if mode == SESSION:
                # ``auto`` takes the mode that is safe behind any pooler (transaction pooling):
                # a session pool must be named.
                extra_env["PG_BEAT_POOL_MODE"] = "session"
        elif kind in ("partition", "blackhole"):
            target = make_url(url)
            self.proxies = {n: TcpProxy(target.port or 5432).start() for n in names}
            kwargs["replica_urls"] = {
                n: target.set(port=p.port).render_as_string(hide_password=False)
                for n, p in self.proxies.items()
            }
        elif kind == brokerfaults.PARTITION_KIND:
            # Each replica reaches Redis through a proxy of its own; the leader's is black-holed
            # in the kernel, so its publishes time out (an outage, not a hang), while the
            # standbys' probes find a working broker: the leader must hand the lease over.
            self.proxies = {n: TcpProxy(REDIS_PORT).start() for n in names}
            kwargs["replica_brokers"] = {
                n: f"redis://127.0.0.1:{p.port}/{opts.redis_db}" for n, p in self.proxies.items()
            }
            extra_env["PG_BEAT_BROKER_HANDOVER_AFTER"] = f"{brokerfaults.HANDOVER_AFTER:g}"
        for proxy in self.proxies.values():
            stack.callback(_quietly, proxy.stop)
        workdir = opts.workdir / f"pg_beat-{kind}"
        self.cluster = Cluster(
            url,
            broker_url,
            replicas=REPLICAS,
            workdir=workdir / label if label else workdir,
            queue=queue,
            lease_ttl=opts.lease_ttl,
            heartbeat_interval=opts.heartbeat,
            hang_timeout=opts.hang_timeout,
            restart_delay=1.0,
            extra_env=extra_env,
            **kwargs,
        )
        stack.callback(self.cluster.stop)
        self.cluster.prepare(SCHEDULES)
        self.cluster.start()
        self.exits_seen = exit_counts(self.cluster)
        self.window_start: datetime | None = None
        self.mode_checked = False
        self._records: dict[str, tuple[int, int]] = {}
        self._terms = 0
        #: Broker kinds: from the fault until the broker (or the leader's link) was back.
        self._away: tuple[datetime, datetime] | None = None

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

    def _check_mode(self, r: Round, leader: str) -> None:
        """Behind PgBouncer, note a replica that did not take the pool mode it should."""
        mode = pool_mode(self.kind)
        if mode is None or self.mode_checked:
            return
        self.mode_checked = True
        expected = "transaction mode" if mode == TRANSACTION else "session mode"
        if expected not in self.cluster.log(leader):
            r.notes.append(f"the leader's log does not say {expected!r}")

    # --- one round ---

    def round(self, index: int) -> Round:
        cluster = self.cluster
        r = Round("pg_beat", self.kind, index)
        leader, epoch = self.steady()
        start = self.window_start or utcnow()
        time.sleep(SETTLE)
        leader, epoch = self.steady()
        r.leader = leader
        self._check_mode(r, leader)
        if self.kind == "row_lock":
            self._mark()
            self._row_lock(r)
        elif self.outage is not None:
            self._ride_out(r)
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
        self._count_away(r)
        r.expected, r.executed = verdict.expected, verdict.executed
        r.missed, r.duplicates = len(verdict.missed), len(verdict.duplicates)
        r.republished = len(verdict.republished)
        r.unexpected = len(verdict.unexpected)
        for label, ticks in (
            ("missed", verdict.missed),
            ("duplicates", verdict.duplicates),
            ("republished", verdict.republished),
        ):
            if ticks:
                r.examples[label] = [f"{s} @ {d.isoformat()}" for s, d in ticks[:10]]
        if verdict.unexpected:
            r.examples["unexpected"] = [
                f"{s} @ {d.isoformat() if d else None} ({t})" for s, d, t in verdict.unexpected[:10]
            ]
        # The fault's cost in log records and leader terms: from just before it to now.
        for n in cluster.replicas:
            written, written_all = log_records(cluster, n)
            before, before_all = self._records.get(n, (0, 0))
            r.records[n], r.records_all[n] = written - before, written_all - before_all
        r.terms = leader_terms(cluster) - self._terms
        self.exits_seen = close_round(r, cluster, self.exits_seen, leader)
        return r

    def _count_away(self, r: Round) -> None:
        """Broker kinds: the ticks due while the broker (the leader's link) was away, from the
        worker's side: how many, run 0 times, run more than once."""
        if self._away is None:
            return
        away = self.cluster.verify(*self._away)
        r.due_away = away.expected
        r.missed_away = len(away.missed)
        r.duplicated_away = len(away.duplicates) + len(away.republished)
        for label, ticks in (
            ("missed while away", away.missed),
            ("duplicated while away", away.duplicates + away.republished),
        ):
            if ticks:
                r.examples[label] = [f"{s} @ {d.isoformat()}" for s, d in ticks[:10]]
        self._away = None

    def _ride_out(self, r: Round) -> None:
        """A broker outage: the broker goes for ``--outage`` s and comes back. The leader keeps
        its lease and publishes what fell due meanwhile as soon as the broker answers."""
        assert self.outage is not None
        self._mark()
        fault = utcnow()
        began = time.monotonic()
        self.outage.fail()
        # The outage's length is the point: nothing to wait for.
        time.sleep(max(0.0, self.opts.outage - (time.monotonic() - began)))
        self.outage.restore()
        back = utcnow()
        self._away = (fault, back)
        r.away = (back - fault).total_seconds()
        first = first_sent_since(self.cluster, back.timestamp(), RESUME_TIMEOUT)
        r.first_publish = math.inf if first is None else first
        self._wait_probes(r, fault.timestamp(), back.timestamp())

    def _wait_probes(self, r: Round, fault: float, back: float) -> None:
        """A standby that logged its broker down during the outage logs it up again on its next
        probe (every 10 s): wait for that record, so that the round counts both."""
        for name in self.cluster.replicas:
            if first_record(self.cluster, name, brokerfaults.UNREACHABLE, fault) is None:
                continue
            left = back + brokerfaults.PROBE_WAIT - time.time()
            if wait_for_record(self.cluster, name, brokerfaults.REACHABLE, back, left) is None:
                r.notes.append(f"{name} logged no {brokerfaults.REACHABLE!r} after the return")

    def _mark(self) -> None:
        """Remember the log records and leader terms so far, just before the fault."""
        self._records = {n: log_records(self.cluster, n) for n in self.cluster.replicas}
        self._terms = leader_terms(self.cluster)

    def _fail_over(self, r: Round, leader: str, epoch: int) -> None:
        cluster = self.cluster
        if self.pair is not None:
            # Nothing the primary acknowledged is missing on the standby (replication is
            # synchronous); waiting for the replay keeps the harness's reads there consistent.
            self.pair.wait_replayed()
        self._align()
        self._mark()
        started = time.time()
        self._inject(leader)
        if self.kind == "blackhole":
            self._black_hole(r, leader, epoch, started)
            return
        resumed = cluster.first_send_after(epoch, started, timeout=RESUME_TIMEOUT)
        r.failover = math.inf if resumed is None else resumed
        if self.kind == brokerfaults.PARTITION_KIND:
            self._hand_over(r, leader, started)
            return
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
        sig = fault_signal(kind)
        if sig is not None:
            cluster.signal(leader, sig)
        elif kind == "terminate_backend":
            cluster.terminate_backends(leader)
        elif kind == "pg_restart":
            assert self.private is not None
            self.private.restart(mode="fast")
        elif kind == "promotion":
            assert self.pair is not None
            self.pair.stop_primary("immediate")
            self.pair.promote_standby()
        elif kind == "partition":
            # No FIN, no RST: the leader's packets to PostgreSQL vanish.
            self.proxies[leader].blackhole()
        elif kind in ("blackhole", brokerfaults.PARTITION_KIND):
            # A real partition: the kernel drops every packet between the leader and its proxy
            # (to PostgreSQL, or to Redis), so its keepalives and timeouts can fire (see
            # support/proxy.py).
            self.proxies[leader].blackhole(kernel=True)
        else:
            raise ValueError(kind)

    def _recover(self, r: Round, leader: str) -> None:
        if fault_signal(self.kind) == signal.SIGSTOP:
            self.cluster.signal(leader, signal.SIGCONT)
        elif self.kind == "partition":
            time.sleep(2)
            self.proxies[leader].cut()  # drop what the partition held, do not deliver it late
            self.proxies[leader].restore()

    def _hand_over(self, r: Round, leader: str, started: float) -> None:
        """broker_partition: the cut-off leader hands the lease over (no hang report, no exit),
        and must not win it back while its link stays cut for ``--outage`` s from the fault.
        Then ``restore()``: what TCP still retransmits arrives late, and a publish that began
        before the handover must not land a second copy (push-once, pg_beat.publish.dedup)."""
        proxy = self.proxies[leader]
        try:
            time.sleep(max(0.0, started + self.opts.outage - time.time()))
        finally:
            restored = time.time()
            proxy.restore()
        cut = datetime.fromtimestamp(started, timezone.utc)
        self._away = (cut, datetime.fromtimestamp(restored, timezone.utc))
        r.away = restored - started
        r.first_publish = r.failover
        handed = first_record(self.cluster, leader, brokerfaults.HANDED_OVER, started)
        r.handed_over = handed is not None
        # The ex-leader's next probe (every 10 s) must find the broker again: then it is a
        # standby the cluster may hand over to in turn.
        back = wait_for_record(
            self.cluster, leader, brokerfaults.REACHABLE, restored, brokerfaults.PROBE_WAIT
        )
        r.rejoined = None if back is None else back - restored
        if first_record(self.cluster, leader, "dispatch loop stuck", started) is not None:
            r.notes.append("the cut-off leader reported a hang")

    def _black_hole(self, r: Round, leader: str, epoch: int, started: float) -> None:
        """The hole stays for ``--blackhole-seconds`` whatever happens meanwhile; then
        ``restore()`` delivers what TCP still retransmits, and the ex-leader must rejoin."""
        cluster, proxy = self.cluster, self.proxies[leader]
        restore_at = started + self.opts.hole
        try:
            resumed = cluster.first_send_after(epoch, started, timeout=restore_at - time.time())
            noticed = wait_for_record(
                cluster, leader, STEPPED_DOWN, started, max(0.0, restore_at - time.time())
            )
            time.sleep(max(0.0, restore_at - time.time()))
        finally:
            restored = time.time()
            proxy.restore()
        if resumed is None:
            resumed = cluster.first_send_after(epoch, started, timeout=RESUME_TIMEOUT)
        r.failover = math.inf if resumed is None else resumed
        if noticed is None:  # not during the hole: perhaps once the link was back
            noticed = wait_for_record(
                cluster, leader, STEPPED_DOWN, started, self.opts.lease_ttl + 10
            )
            if noticed is not None:
                r.notes.append("the leader noticed only after restore()")
        r.noticed = None if noticed is None else noticed - started
        back = wait_for_record(cluster, leader, RECONNECTED, started, self.opts.lease_ttl + 30)
        r.rejoined = None if back is None else back - restored
        if back is None:
            r.notes.append(f"no {RECONNECTED!r} record after the fault")
        elif back < restored:
            r.notes.append("reconnected during the black hole")

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


class PromotionKind:
    """promotion: a fresh primary/standby pair, database and cluster for every round.

    A promoted standby has no standby of its own; making the old primary one again means a new
    base backup (or pg_rewind) into a server on another port, which the replicas' multi-host
    URL does not name. A fresh pair per round costs about as much and starts every round from
    the same state."""

    def __init__(self, kind: str, opts: Options, stack: contextlib.ExitStack) -> None:
        self.kind = kind
        self.opts = opts

    def round(self, index: int) -> Round:
        stack = contextlib.ExitStack()
        try:
            runner = PgBeatKind(self.kind, self.opts, stack, label=f"round-{index + 1}")
            return runner.round(index)
        finally:
            with _INTERRUPTS.deferred():
                stack.close()


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
        #: Broker outages: a Redis of this kind's own, RedBeat's store as well as the broker.
        self.outage: brokerfaults.Outage | None = None
        self.broker_url = opts.broker_url
        if kind in brokerfaults.OUTAGE_KINDS:
            self.outage = brokerfaults.Outage(kind, opts.workdir / f"redbeat-{kind}", stack)
            self.broker_url = self.outage.url()
        else:
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
            self.broker_url,
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

        client = redis.Redis.from_url(self.broker_url)
        try:
            first = client.zrange(f"{self.prefix}:schedule", 0, 0, withscores=True)
        finally:
            client.close()
        sleep_until_due(float(first[0][1]) - time.time() if first else 0.0)

    def first_send_by_other(self, pid: int | None, since: float) -> float | None:
        """Seconds from ``since`` to the first send stamped after it by a process other than
        ``pid`` (None: by any), waiting up to RESUME_TIMEOUT; None: no such send."""

        def check() -> float | None:
            with self._db() as conn:
                row = conn.execute(
                    "SELECT min(sent_at) FROM redbeat_bench_executions "
                    "WHERE sent_at > %s AND beat_pid IS DISTINCT FROM %s",
                    (since, pid),
                ).fetchone()
            return None if row is None or row[0] is None else max(1e-9, row[0] - since)

        try:
            return float(wait_until(check, RESUME_TIMEOUT, "a send by another replica", 0.05))
        except TimeoutError:
            return None

    def _ride_out(self, r: Round) -> tuple[float, float]:
        """A Redis outage of ``--outage`` s: (fault, back) as time.time(). RedBeat's lock and
        schedule live in that Redis too."""
        assert self.outage is not None
        fault = time.time()
        began = time.monotonic()
        self.outage.fail()
        time.sleep(max(0.0, self.opts.outage - (time.monotonic() - began)))
        self.outage.restore()
        back = time.time()
        r.away = back - fault
        first = self.first_send_by_other(None, back)
        r.first_publish = math.inf if first is None else first
        return fault, back

    def _count_away(self, r: Round, fault: float, back: float) -> None:
        """The ticks due, lost and sent twice while Redis was away
        (``brokerfaults.redbeat_outage``), and how often the sending process changed since the
        last send before the fault (RedBeat's leader changes, in ``terms``)."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT schedule, sent_at, beat_pid FROM redbeat_bench_executions "
                "WHERE sent_at IS NOT NULL AND sent_at >= %s ORDER BY sent_at",
                (fault - 5 * SCHEDULES[0][1],),
            ).fetchall()
        sends: dict[str, list[float]] = {}
        for schedule, sent, _ in rows:
            sends.setdefault(schedule, []).append(float(sent))
        r.due_away, r.missed_away, r.duplicated_away, examples = brokerfaults.redbeat_outage(
            sends, SCHEDULES[0][1], fault, back
        )
        if examples:
            r.examples["around the outage"] = examples[:10]
        last_before = [pid for _, sent, pid in rows if sent < fault][-1:]
        pids = last_before + [pid for _, sent, pid in rows if sent >= fault]
        r.terms = sum(1 for a, b in itertools.pairwise(pids) if a != b)

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
        if self.outage is not None:
            marks = {n: log_records(cluster, n) for n in cluster.replicas}
            fault, back = self._ride_out(r)
        else:
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
        if self.outage is not None:
            self._count_away(r, fault, back)
            for n in cluster.replicas:
                written, written_all = log_records(cluster, n)
                r.records[n] = written - marks[n][0]
                r.records_all[n] = written_all - marks[n][1]
        self.window_start = end
        self.exits_seen = close_round(r, cluster, self.exits_seen, leader)
        return r


# --- the run ---------------------------------------------------------------------------------


def run_kind(
    scheduler: str,
    kind: str,
    opts: Options,
    results: list[Round],
    skipped: dict[str, str],
    factory: Callable[..., Any],
) -> None:
    why = missing_tool(kind)
    if why is not None:
        skipped[kind] = why
        log(f"{scheduler} {kind}: skipped: {why}")
        return
    log(f"{scheduler} {kind}: starting a cluster of {REPLICAS} replicas and a worker")
    stack = contextlib.ExitStack()
    try:
        try:
            runner = factory(kind, opts, stack)
        except UNAVAILABLE as exc:  # a tool is there, but cannot be used here
            skipped[kind] = str(exc).splitlines()[0]
            log(f"{scheduler} {kind}: skipped: {skipped[kind]}")
            return
        for index in range(opts.rounds_for(kind)):
            try:
                r = runner.round(index)
            except UNAVAILABLE as exc:
                skipped[kind] = str(exc).splitlines()[0]
                log(f"{scheduler} {kind}: skipped: {skipped[kind]}")
                break
            except Exception as exc:  # a broken round is reported, and ends this kind
                r = Round(scheduler, kind, index)
                if kind == "row_lock":
                    r.lateness = math.inf
                elif kind in brokerfaults.OUTAGE_KINDS:
                    r.first_publish = math.inf
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


def run(opts: Options, results: list[Round], skipped: dict[str, str], meta: dict[str, Any]) -> None:
    seen = meta["digest"]
    for kind in opts.kinds:
        digest = source_digest()
        if digest != seen:
            # Replicas import pg_beat when they start (and restart): this kind runs other code
            # than the kinds before, and a replica starting during an edit may crash.
            seen = digest
            meta.setdefault("changed_before", []).append(kind)
            log(f"pg_beat's source changed (before {kind})")
        factory = PromotionKind if kind == "promotion" else PgBeatKind
        run_kind("pg_beat", kind, opts, results, skipped, factory)
        if opts.redbeat and kind in REDBEAT_KINDS:
            run_kind("redbeat", kind, opts, results, skipped, RedBeatKind)


# --- the report ------------------------------------------------------------------------------


@dataclass
class KindSummary:
    rounds: int = 0
    failover: Stats = (None, None, None, None)
    lateness: Stats = (None, None, None, None)
    missed: int = 0
    late: int = 0
    duplicates: int = 0
    republished: int = 0
    unexpected: int = 0
    crashes: int = 0
    records: Stats = (None, None, None, None)
    terms: Stats = (None, None, None, None)


def summarize(results: list[Round], scheduler: str, kind: str) -> KindSummary | None:
    rounds = [r for r in results if r.scheduler == scheduler and r.kind == kind]
    if not rounds:
        return None
    failovers = [r.failover for r in rounds if r.failover is not None]
    latenesses = [r.lateness for r in rounds if r.lateness is not None]
    records = [float(r.max_records) for r in rounds if r.max_records is not None]
    terms = [float(r.terms) for r in rounds if r.terms is not None]
    return KindSummary(
        rounds=len(rounds),
        failover=summary_stats(failovers),
        lateness=summary_stats(latenesses),
        missed=sum(r.missed for r in rounds),
        late=sum(r.late for r in rounds),
        duplicates=sum(r.duplicates for r in rounds),
        republished=sum(r.republished for r in rounds),
        unexpected=sum(r.unexpected for r in rounds),
        crashes=sum(r.crashes for r in rounds),
        records=summary_stats(records),
        terms=summary_stats(terms),
    )


def fmt_count(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def table(results: list[Round], opts: Options, skipped: dict[str, str]) -> str:
    header = [
        "fault kind",
        "n",
        "pg_beat failover min/med/p90/max s",
        "missed",
        "dup",
        "repub",
        "unexp",
        "crashes",
        "log/fault med/max",
        "terms/fault med/max",
        "|",
        "n",
        "RedBeat failover med/p90/max s",
        "missed",
        "dup",
        "crashes",
    ]
    rows = [header]
    skipped_rows: dict[int, str] = {}
    for kind in opts.kinds:
        if kind in BROKER_KINDS:
            continue  # their own table: broker_table()
        pg = summarize(results, "pg_beat", kind)
        rb = summarize(results, "redbeat", kind)
        if pg is None and kind in skipped:
            skipped_rows[len(rows)] = f"skipped: {skipped[kind]}"
            rows.append([kind])
            continue
        row = [kind]
        if pg is None:
            row += ["0", "-", "-", "-", "-", "-", "-", "-", "-"]
        else:
            stats, mark = (pg.lateness, " †") if kind == "row_lock" else (pg.failover, "")
            row += [
                str(pg.rounds),
                "/".join(fmt(v) for v in stats) + mark,
                str(pg.missed),
                str(pg.duplicates),
                str(pg.republished),
                str(pg.unexpected),
                str(pg.crashes),
                f"{fmt_count(pg.records[1])}/{fmt_count(pg.records[3])}",
                f"{fmt_count(pg.terms[1])}/{fmt_count(pg.terms[3])}",
            ]
        row.append("|")
        if rb is None:
            na = "n/a" if kind not in REDBEAT_KINDS else "-"
            row += ["-", na, na, na, na]
        else:
            row += [
                str(rb.rounds),
                "/".join(fmt(v) for v in rb.failover[1:]),
                str(rb.missed),
                str(rb.duplicates),
                str(rb.crashes),
            ]
        rows.append(row)
    if len(rows) == 1:
        return ""
    return "\n".join(render(rows, skipped_rows) + notes(results, opts))


def render(rows: list[list[str]], skipped_rows: dict[int, str]) -> list[str]:
    """The lines of a table: the header row, a rule, then the rows (a skipped row: its first
    cell and why)."""
    widths = [
        max(len(row[i]) for n, row in enumerate(rows) if i == 0 or n not in skipped_rows)
        for i in range(len(rows[0]))
    ]
    lines = []
    for n, row in enumerate(rows):
        if n in skipped_rows:
            lines.append(f"{row[0].ljust(widths[0])}  {skipped_rows[n]}")
            continue
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def broker_cells(rounds: list[Round]) -> list[str]:
    """One scheduler's cells of a broker kind: rounds, exits, terms (max), log records (max),
    ticks due while away, of them missed and duplicated, first publish (median/max)."""
    if not rounds:
        return ["-"] * 8
    records = [float(r.max_records) for r in rounds if r.max_records is not None]
    terms = [float(r.terms) for r in rounds if r.terms is not None]
    first = [r.first_publish for r in rounds if r.first_publish is not None]
    stats = summary_stats(first)
    return [
        str(len(rounds)),
        str(sum(len(r.exits) for r in rounds)),
        fmt_count(max(terms)) if terms else "-",
        fmt_count(max(records)) if records else "-",
        str(sum(r.due_away or 0 for r in rounds)),
        str(sum(r.missed_away for r in rounds)),
        str(sum(r.duplicated_away for r in rounds)),
        f"{fmt(stats[1])}/{fmt(stats[3])}",
    ]


def broker_table(results: list[Round], opts: Options, skipped: dict[str, str]) -> str:
    """The broker kinds, pg_beat and RedBeat side by side."""
    kinds = [k for k in opts.kinds if k in BROKER_KINDS]
    if not kinds:
        return ""
    scheduler_cells = ["n", "exits", "terms", "log/fault", "due", "missed", "dup", "first publish"]
    header = ["broker fault", "away s", *scheduler_cells, "|", *scheduler_cells]
    header[3] = "pg_beat exits"
    header[12] = "RedBeat exits"
    header[13] = "leader changes"
    header[9] = header[18] = "first publish med/max s"
    rows = [header]
    skipped_rows: dict[int, str] = {}
    for kind in kinds:
        pg = [r for r in results if r.scheduler == "pg_beat" and r.kind == kind]
        rb = [r for r in results if r.scheduler == "redbeat" and r.kind == kind]
        if not pg and kind in skipped:
            skipped_rows[len(rows)] = f"skipped: {skipped[kind]}"
            rows.append([kind])
            continue
        away = [r.away for r in pg + rb if r.away is not None]
        row = [kind, fmt(statistics.median(away), 1) if away else "-", *broker_cells(pg)]
        if kind == brokerfaults.PARTITION_KIND:
            row[-1] += " ‡"
        row.append("|")
        if rb or kind in REDBEAT_KINDS:
            row += broker_cells(rb)
        else:
            row += ["-", *["n/a"] * 7]
        rows.append(row)
    lines = render(rows, skipped_rows)
    partitions = [r for r in results if r.kind == brokerfaults.PARTITION_KIND]
    if partitions:
        handed = sum(1 for r in partitions if r.handed_over)
        back = [r.rejoined for r in partitions if r.rejoined is not None]
        lines.append(
            f"‡ broker_partition (PG_BEAT_BROKER_HANDOVER_AFTER={brokerfaults.HANDOVER_AFTER:g}): "
            "fault -> first tick sent by the new leader; the cut-off leader logged "
            f"'{brokerfaults.HANDED_OVER}' in {handed}/{len(partitions)} rounds, and "
            f"'{brokerfaults.REACHABLE}' in {len(back)}/{len(partitions)}, "
            f"{'/'.join(fmt(v) for v in summary_stats(back))} s (min/med/p90/max) after restore()"
        )
    lines.append(
        f"away: fault -> broker answering again ({opts.outage:g} s asked; a RabbitMQ takes a few "
        "s more to start). first publish: broker back -> first tick published after it "
        "(pg_beat: pg_beat_runs.sent_at; RedBeat: its send stamp). exits: all replica exits "
        "(none is expected). terms: rows added to pg_beat_leader_terms (RedBeat: leader "
        "changes, times the sending process changed). log/fault: records of the replica that "
        "wrote most, per-tick send records left out. due/missed/dup: ticks due while away, run "
        "0 times, run more than once (worker's side; RedBeat has no grid: its due times follow "
        "each send by the interval, and those inside a gap after the first are lost)."
    )
    return "\n".join(lines)


def notes(results: list[Round], opts: Options) -> list[str]:
    """The lines under the table: what the marks mean, and the black hole's own figures."""
    lines = []
    if "row_lock" in opts.kinds:
        lines.append(
            "† row_lock is not a failover: max lateness (sent - due) of the other schedules "
            f"while one schedule's row was locked for {opts.lease_ttl:g} s, over rounds"
        )
    holes = [r for r in results if r.scheduler == "pg_beat" and r.kind == "blackhole"]
    if holes:
        noticed = [r.noticed for r in holes if r.noticed is not None]
        rejoined = [r.rejoined for r in holes if r.rejoined is not None]
        lines.append(
            f"blackhole ({opts.hole:g} s per round): the cut-off leader logged "
            f"'{STEPPED_DOWN}' in {len(noticed)}/{len(holes)} rounds, "
            f"{'/'.join(fmt(v) for v in summary_stats(noticed))} s (min/med/p90/max) after the "
            f"fault; it rejoined ('{RECONNECTED}') in {len(rejoined)}/{len(holes)} rounds, "
            f"{'/'.join(fmt(v) for v in summary_stats(rejoined))} s after restore()"
        )
    late = {k: s.late for k in opts.kinds if (s := summarize(results, "pg_beat", k)) and s.late}
    if late:
        lines.append(
            "late, not missed (pg_beat ran them after the window was first checked, once the dead "
            "epoch's lease had expired): " + ", ".join(f"{k} {n}" for k, n in late.items())
        )
    lines.append(
        "failover: fault -> first tick sent by a new leader (pg_beat: a later epoch; RedBeat: "
        "another process); p90 is nearest-rank (the max below 10 rounds). missed/dup/repub/unexp "
        "counted on the worker's side; crashes = exits other than the one the fault calls for; "
        "log/fault = log records of the replica that wrote most, from the fault to the end of "
        "the round, the per-tick 'sent ...' records left out; terms/fault = rows added to "
        "pg_beat_leader_terms (1: one takeover)."
    )
    return lines


Target = tuple[str, str, str]


def _check(values: list[float], reducer: Callable[[list[float]], float], bound: float) -> tuple:
    """(measured, PASS/FAIL) of ``reducer(values) <= bound``; ("-", "n/a") without values."""
    if not values:
        return "-", "n/a"
    value = reducer(values)
    return f"{fmt(value)} s", "PASS" if value <= bound else "FAIL"


def targets(results: list[Round], opts: Options) -> list[Target]:
    """(target, measured, PASS/FAIL/n/a) for each target of the issue, from pg_beat's figures."""
    pg = [r for r in results if r.scheduler == "pg_beat"]

    def failovers(*kinds: str) -> list[float]:
        return [r.failover for r in pg if r.kind in kinds and r.failover is not None]

    hang_bound = opts.lease_ttl + 2
    out = [
        ("SIGKILL: median failover <= 1 s", *_check(failovers("sigkill"), statistics.median, 1.0)),
        ("SIGKILL: max failover <= 2 s", *_check(failovers("sigkill"), max, 2.0)),
        ("SIGTERM: max failover <= 0.5 s", *_check(failovers("sigterm"), max, 0.5)),
        (
            f"Hang (sigstop): max failover <= TTL + 2 = {hang_bound:g} s",
            *_check(failovers("sigstop"), max, hang_bound),
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


def topology_targets(results: list[Round], opts: Options) -> list[Target]:
    """The bounds tests/ha/test_topologies.py asserts, checked on every round of the new kinds."""
    pg = [r for r in results if r.scheduler == "pg_beat" and r.kind in TOPOLOGY_KINDS]

    def failovers(*kinds: str) -> list[float]:
        return [r.failover for r in pg if r.kind in kinds and r.failover is not None]

    ttl = opts.lease_ttl
    out = [
        (
            "PgBouncer session pool, SIGKILL: max failover <= 5 s",
            *_check(failovers("pgbouncer_session_sigkill"), max, 5.0),
        ),
        (
            f"PgBouncer transaction pool, SIGKILL: max failover <= TTL + 5 = {ttl + 5:g} s",
            *_check(failovers("pgbouncer_transaction_sigkill"), max, ttl + 5),
        ),
        (
            f"PgBouncer, SIGSTOP: max failover <= TTL + 10 = {ttl + 10:g} s",
            *_check(
                failovers("pgbouncer_session_sigstop", "pgbouncer_transaction_sigstop"),
                max,
                ttl + 10,
            ),
        ),
        (
            f"promotion: max failover <= TTL + 2 = {ttl + 2:g} s",
            *_check(failovers("promotion"), max, ttl + 2),
        ),
        (
            f"blackhole: max failover <= TTL + 2 = {ttl + 2:g} s",
            *_check(failovers("blackhole"), max, ttl + 2),
        ),
    ]
    holes = [r for r in pg if r.kind == "blackhole"]
    noticed = [math.inf if r.noticed is None else r.noticed for r in holes]
    out.append(
        (
            f"blackhole: cut-off leader steps down <= TTL + 5 = {ttl + 5:g} s",
            *_check(noticed, max, ttl + 5),
        )
    )
    back = sum(1 for r in holes if r.rejoined is not None)
    out.append(
        (
            "blackhole: the ex-leader rejoins after restore(), every round",
            f"{back}/{len(holes)}",
            ("PASS" if back == len(holes) else "FAIL") if holes else "n/a",
        )
    )
    if not pg:
        return out
    bad = sum(1 for r in pg if r.missed or r.duplicates or r.republished or r.unexpected)
    out.append(
        (
            "every tick once (0 missed, dup, repub, unexp), every round",
            f"{len(pg) - bad}/{len(pg)}",
            "PASS" if not bad else "FAIL",
        )
    )
    crashes = sum(r.crashes for r in pg)
    out.append(("0 replica crashes", str(crashes), "PASS" if not crashes else "FAIL"))
    terms = [r.terms for r in pg]
    flapping = sum(1 for t in terms if t != 1)
    out.append(
        (
            "1 leader term per fault (no flapping), every round",
            f"{len(terms) - flapping}/{len(terms)}",
            "PASS" if not flapping else "FAIL",
        )
    )
    most = max((r.max_records or 0 for r in pg), default=0)
    out.append(
        (
            f"< {RECORDS_PER_FAULT} log records per replica per fault",
            str(most),
            "PASS" if most < RECORDS_PER_FAULT else "FAIL",
        )
    )
    return out


def _every_round(label: str, rounds: list[Round], ok: Callable[[Round], bool]) -> Target:
    good = sum(1 for r in rounds if ok(r))
    verdict = ("PASS" if good == len(rounds) else "FAIL") if rounds else "n/a"
    return label, f"{good}/{len(rounds)}", verdict


def _once(r: Round) -> bool:
    """Every tick of the round's window ran exactly once (worker's side)."""
    return not (r.missed or r.duplicates or r.republished or r.unexpected)


def broker_targets(results: list[Round], opts: Options) -> list[Target]:
    """The bounds of invariant 15 (tests/ha/test_broker_outage.py, test_failover.py's handover
    case), checked on every pg_beat round of the broker kinds."""
    pg = [r for r in results if r.scheduler == "pg_beat"]
    outages = [r for r in pg if r.kind in brokerfaults.OUTAGE_KINDS]
    parts = [r for r in pg if r.kind == brokerfaults.PARTITION_KIND]
    first = [math.inf if r.first_publish is None else r.first_publish for r in outages]
    bound = brokerfaults.HANDOVER_AFTER + opts.lease_ttl
    most = brokerfaults.RECORDS_PER_OUTAGE
    return [
        _every_round("outage: 0 replica exits, every round", outages, lambda r: not r.exits),
        _every_round("outage: 0 new leader terms, every round", outages, lambda r: r.terms == 0),
        _every_round(
            f"outage: <= {most} log records per replica, every round",
            outages,
            lambda r: (r.max_records or 0) <= most,
        ),
        _every_round(
            "outage: 0 ticks due while away missed or duplicated, every round",
            outages,
            lambda r: r.due_away is not None and not r.missed_away and not r.duplicated_away,
        ),
        _every_round("outage: every tick of the round once, every round", outages, _once),
        (
            f"outage: first publish <= {brokerfaults.FIRST_PUBLISH_BOUND:g} s after the "
            "broker's return (max)",
            *_check(first, max, brokerfaults.FIRST_PUBLISH_BOUND),
        ),
        _every_round(
            "broker_partition: handed over, 0 exits, 1 leader term, every round",
            parts,
            lambda r: bool(r.handed_over) and not r.exits and r.terms == 1,
        ),
        (
            f"broker_partition: max failover <= handover after + TTL = {bound:g} s",
            *_check([r.failover for r in parts if r.failover is not None], max, bound),
        ),
        _every_round("broker_partition: every tick once, every round", parts, _once),
        _every_round(
            "broker_partition: the ex-leader finds its broker again after restore(), every round",
            parts,
            lambda r: r.rejoined is not None,
        ),
        _every_round(
            f"broker_partition: < {RECORDS_PER_FAULT} log records per replica, every round",
            parts,
            lambda r: (r.max_records or 0) < RECORDS_PER_FAULT,
        ),
    ]


def source_digest() -> str:
    """SHA-1 of every file under pg_beat/ and migrations/, to notice edits during a run."""
    digest = hashlib.sha1()
    for top in ("pg_beat", "migrations"):
        for path in sorted((ROOT / top).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            with contextlib.suppress(OSError):
                digest.update(path.read_bytes())
    return digest.hexdigest()


def report(
    results: list[Round], opts: Options, skipped: dict[str, str], meta: dict[str, Any]
) -> str:
    lines = [
        "",
        f"Failover benchmark: {REPLICAS} replicas, TTL {opts.lease_ttl:g} s, heartbeat "
        f"{opts.heartbeat:g} s, hang timeout {opts.hang_timeout:g} s; {len(SCHEDULES)} schedules "
        f"every {SCHEDULES[0][1]:g} s (pg_beat: catch_up); RedBeat: redbeat_lock_timeout "
        f"{opts.lease_ttl:g} s, beat_max_loop_interval {opts.max_loop_interval:g} s",
    ]
    for part in (table(results, opts, skipped), broker_table(results, opts, skipped)):
        if part:
            lines += ["", part]
    lines += ["", "Targets (issue 3, pg_beat):"]
    rows = targets(results, opts)
    topology = (
        topology_targets(results, opts) if any(k in TOPOLOGY_KINDS for k in opts.kinds) else []
    )
    broker = broker_targets(results, opts) if any(k in BROKER_KINDS for k in opts.kinds) else []
    width = max(len(t) for t, _, _ in rows + topology + broker)
    lines += [f"  {t.ljust(width)}  {m:>8}  {v}" for t, m, v in rows]
    if topology:
        lines.append(
            "Bounds of tests/ha/test_topologies.py (pg_beat, PgBouncer/promotion/blackhole):"
        )
        lines += [f"  {t.ljust(width)}  {m:>8}  {v}" for t, m, v in topology]
    if broker:
        lines.append(
            f"Broker bounds, invariant 15 (pg_beat; outage: the broker away {opts.outage:g} s):"
        )
        lines += [f"  {t.ljust(width)}  {m:>8}  {v}" for t, m, v in broker]
    load = meta.get("load_before", (0, 0, 0)), os.getloadavg()
    lines.append(
        f"\npg_beat {meta.get('revision', 'unknown')}; wall time "
        f"{(time.monotonic() - meta.get('started', time.monotonic())) / 60:.1f} min; load average "
        + " -> ".join("/".join(f"{v:.2f}" for v in avg) for avg in load)
    )
    changed = meta.get("changed_before") or (
        ["the end"] if source_digest() != meta.get("digest") else []
    )
    if changed:
        lines.append(
            "WARNING: pg_beat's source (pg_beat/, migrations/) changed during the run, first seen "
            f"before {changed[0]}: the kinds ran different code"
        )
    lines.append(f"replica logs: {opts.workdir}")
    return "\n".join(lines)


def write_json(
    results: list[Round], opts: Options, skipped: dict[str, str], meta: dict[str, Any], path: str
) -> None:
    data = {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "revision": meta.get("revision"),
        "source_changed_before": meta.get("changed_before", []),
        "skipped": skipped,
        "rounds": [
            {
                k: (None if isinstance(v, float) and math.isinf(v) else v)
                for k, v in asdict(r).items()
            }
            for r in results
        ],
        "targets": [
            {"target": t, "measured": m, "verdict": v}
            for t, m, v in targets(results, opts)
            + topology_targets(results, opts)
            + broker_targets(results, opts)
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
    meta: dict[str, Any] = {
        "revision": revision(),
        "digest": source_digest(),
        "started": time.monotonic(),
        "load_before": os.getloadavg(),
    }
    log(
        f"failover benchmark: kinds {','.join(opts.kinds)}, {opts.rounds} round(s) each "
        f"({opts.broker_rounds} of a broker kind, the broker away {opts.outage:g} s), "
        f"RedBeat {'on' if opts.redbeat else 'off'}, workdir {opts.workdir}"
    )
    results: list[Round] = []
    skipped: dict[str, str] = {}
    status = 0
    with _INTERRUPTS.installed():
        try:
            run(opts, results, skipped, meta)
        except KeyboardInterrupt:
            log("interrupted: processes stopped, databases dropped; partial results follow")
            status = 130
    print(report(results, opts, skipped, meta), flush=True)
    if opts.json_path:
        write_json(results, opts, skipped, meta, opts.json_path)
        log(f"wrote {opts.json_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
