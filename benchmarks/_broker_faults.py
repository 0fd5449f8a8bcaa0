"""The broker faults of ``bench_failover.py``: a broker of the benchmark's own that goes away and
comes back, and the RedBeat side's reading of an outage.

An outage kind gets a private broker per cluster, on a free port of 127.0.0.1, started and
stopped by the PID this process got (never the machine's Redis or RabbitMQ):

- ``redis_kill``: a redis-server with ``appendfsync always`` (every acknowledged push is on disk
  before the reply), SIGKILLed, then started again on the same port and data directory;
- ``redis_stop``: the same redis-server SIGSTOPped, then SIGCONTinued;
- ``rabbitmq_restart``: a RabbitMQ node of its own (``tests/support/rabbitmq.py``) stopped as a
  service manager stops it (SIGTERM, graceful), then started again.

``broker_partition`` needs no broker of its own: each replica reaches the machine's Redis through
its own TCP proxy, and the fault black-holes the leader's proxy in the kernel (iptables), as
``tests/ha/test_failover.py`` does. It is set up by ``bench_failover.PgBeatKind``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import shutil
import tempfile
from pathlib import Path

from support import blackhole as kernel_blackhole
from support.procs import ProcessGroup
from support.rabbitmq import PrivateRabbitMQ, RabbitMQUnavailable, server_path
from support.redis_server import PrivateRedis, RedisUnavailable

#: The broker goes away for a while and comes back; the leader must ride it out.
OUTAGE_KINDS = ["redis_kill", "redis_stop", "rabbitmq_restart"]
#: The leader alone loses the broker; it must hand the lease over to a standby that has one.
PARTITION_KIND = "broker_partition"
BROKER_KINDS = [*OUTAGE_KINDS, PARTITION_KIND]
#: RedBeat keeps its schedule and its lock in the broker's Redis: only the Redis outages apply.
REDBEAT_BROKER_KINDS = ("redis_kill", "redis_stop")
#: ``PG_BEAT_BROKER_HANDOVER_AFTER`` of the partition's cluster (seconds; the default is 30).
HANDOVER_AFTER = 3.0
HANDED_OVER = "handing the lease over"
#: What a standby logs when its probe finds the broker gone, and again, and how long to wait
#: for the second after the broker's return (pg_beat.publish.brokerhealth probes every 10 s).
UNREACHABLE = "broker: not reachable"
REACHABLE = "broker: reachable again"
PROBE_WAIT = 15.0
#: Bounds of invariant 15, as tests/ha/test_broker_outage.py asserts them (its first-publish
#: bound is a generous 10 s; 2 s is the benchmark's: the publisher's back-off is capped at 1 s).
RECORDS_PER_OUTAGE = 5
FIRST_PUBLISH_BOUND = 2.0
#: Celery's INFO record of each entry stock beat (RedBeat) sends: its per-tick trace, the
#: counterpart of pg_beat's "] sent " records, left out of the log counts the same way.
REDBEAT_SENT = "Scheduler: Sending due task"
START_TIMEOUT = 15.0


class BrokerUnavailable(RuntimeError):
    """No redis-server (or rabbitmq-server) on this machine, or it did not start."""


def missing_tool(kind: str) -> str | None:
    """Why broker ``kind`` cannot run on this machine, or None."""
    if kind in ("redis_kill", "redis_stop") and shutil.which("redis-server") is None:
        return "redis-server not found (Debian package redis-server)"
    if kind == "rabbitmq_restart":
        try:
            server_path()
        except RabbitMQUnavailable as exc:
            return f"{exc} not found"
    if kind == PARTITION_KIND:
        return kernel_blackhole.problem()
    return None


class Outage:
    """A private broker for one cluster: ``url``, ``fail()``, then ``restore()``, which returns
    once the broker answers again."""

    def __init__(self, kind: str, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.kind = kind
        # The data directory goes once the broker has stopped (the stack unwinds in reverse).
        data = Path(tempfile.mkdtemp(prefix="pg_beat_broker_"))
        stack.callback(shutil.rmtree, data, True)
        self.procs = ProcessGroup(log_dir=workdir / "broker")
        stack.callback(self.procs.stop_all, 60)
        self.redis: PrivateRedis | None = None
        self.rabbit: PrivateRabbitMQ | None = None
        if kind == "rabbitmq_restart":
            self.rabbit = PrivateRabbitMQ(self.procs, data)
            self.rabbit.start()
        elif kind in ("redis_kill", "redis_stop"):
            try:
                self.redis = PrivateRedis(self.procs, data)
                self.redis.start()
            except RedisUnavailable as exc:
                raise BrokerUnavailable(str(exc)) from exc
        else:
            raise ValueError(kind)

    def url(self, db: int = 0) -> str:
        if self.rabbit is not None:
            return self.rabbit.url
        assert self.redis is not None
        return self.redis.url(db)

    def fail(self) -> None:
        if self.rabbit is not None:
            self.rabbit.stop()
        elif self.kind == "redis_kill":
            assert self.redis is not None
            self.redis.kill()
        else:
            assert self.redis is not None
            self.redis.pause()

    def restore(self) -> None:
        if self.rabbit is not None:
            self.rabbit.start()
        elif self.kind == "redis_kill":
            assert self.redis is not None
            self.redis.start()
        else:
            assert self.redis is not None
            self.redis.resume()


def redbeat_outage(
    sends: dict[str, list[float]], every: float, fault: float, back: float
) -> tuple[int, int, int, list[str]]:
    """RedBeat's ticks due while the broker was away, lost, and sent twice: (due, missed,
    duplicated, examples).

    ``sends`` holds each schedule's publish times, sorted. RedBeat has no grid: an entry falls
    due ``every`` after its last run. After a publish at ``a``, the next at ``b``: the due times
    are ``a + k * every`` for k = 1 .. floor((b - a) / every); the first ran (late, at ``b``),
    the others were lost. Due times in [fault, back] count; a gap under half the interval
    after the fault is a duplicate."""
    due = missed = duplicated = 0
    examples: list[str] = []
    for name, times in sends.items():
        for a, b in itertools.pairwise(times):
            if b <= fault:
                continue
            if b - a < every / 2:
                duplicated += 1
                examples.append(f"{name}: sent twice, at {a:.3f} and {b:.3f}")
                continue
            steps = max(1, math.floor((b - a) / every))
            inside = [k for k in range(1, steps + 1) if fault <= a + k * every <= back]
            lost = sum(1 for k in inside if k > 1)
            due += len(inside)
            missed += lost
            if lost:
                examples.append(f"{name}: {lost} lost in a gap of {b - a:.2f}s after {a:.3f}")
    return due, missed, duplicated, examples
