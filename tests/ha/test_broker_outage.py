"""A broker outage is an outage, not a hang (invariant 15): three real replicas, a real worker,
and a Redis of the test's own that goes away for 30 s, as a managed Redis failover does.

Each case asserts, for the whole outage: no replica exits, the leader keeps its term, at most
five log lines per replica (the line per tick sent after the recovery aside), every tick due
during the outage runs once after it (catch_up), and the first publish follows the broker's
return within a generous bound (the figure itself is measured by benchmarks/bench_failover.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from support import pg
from support.env import unavailable
from support.ha import ClusterFactory, assert_every_tick_once, settle
from support.procs import ProcessGroup
from support.rabbitmq import PrivateRabbitMQ, RabbitMQUnavailable
from support.redis_server import PrivateRedis, RedisUnavailable

from examples.cluster import Cluster, utcnow

pytestmark = [pytest.mark.ha, pytest.mark.timeout(240)]

OUTAGE = 30.0  # seconds: a managed Redis failover takes 30-60 s
PG_BEAT = str(Path(sys.executable).with_name("pg-beat"))
LINES_PER_REPLICA = 5
FIRST_PUBLISH_BOUND = 10.0  # seconds after the broker answers again; generous, see the module


@pytest.fixture
def private_redis(procs: ProcessGroup, tmp_path: Path) -> Iterator[PrivateRedis]:
    datadir = tmp_path / "redis"
    datadir.mkdir()
    try:
        server = PrivateRedis(procs, datadir)
        server.start()
    except RedisUnavailable as exc:
        unavailable(f"a Redis of the test's own: {exc}")
    yield server


def first_sent_at_or_after(cluster: Cluster, since: float, timeout: float = 60.0) -> float:
    """Seconds from ``since`` (time.time()) to the first tick recorded sent at or after it."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(pg.libpq_url(cluster.database_url), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT extract(epoch FROM min(sent_at)) FROM pg_beat_runs "
                "WHERE sent_at >= to_timestamp(%s)",
                (since,),
            ).fetchone()
            if row is not None and row[0] is not None:
                return float(row[0]) - since
            time.sleep(0.05)
    raise TimeoutError("nothing was sent after the broker came back")


def quiet_lines(cluster: Cluster, name: str, skip: int) -> list[str]:
    """The lines ``name`` logged after its first ``skip``, without the line per tick sent."""
    lines = cluster.log(name).splitlines()[skip:]
    return [line for line in lines if "] sent " not in line]


def ride_out(
    cluster: Cluster,
    stop_broker: Callable[[], None],
    resume_broker: Callable[[], None],
    outage: float = OUTAGE,
) -> None:
    """Run the cluster through one outage and assert everything the module promises."""
    liveness = {name: cluster.workdir / f"{name}.alive.json" for name in cluster.replicas}
    for name, path in liveness.items():
        cluster.replicas[name].env["PG_BEAT_LIVENESS_FILE"] = str(path)
    leader, epoch = settle(cluster)
    start = utcnow()
    before = {name: cluster.log_lines(name) for name in cluster.replicas}
    stop_broker()
    time.sleep(max(0.0, outage - 3))  # the fault's length is the point: nothing to wait for
    # Deep in the outage, every replica's liveness probe is green: nothing restarts them.
    for name, path in liveness.items():
        probe = subprocess.run(
            [PG_BEAT, "check", "--self", "--file", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.returncode == 0, (name, probe.stdout, probe.stderr)
    time.sleep(min(outage, 3))
    resume_broker()
    back = time.time()
    waited = first_sent_at_or_after(cluster, back)
    assert waited < FIRST_PUBLISH_BOUND, f"first publish {waited:.2f}s after the broker returned"
    assert_every_tick_once(cluster, start)
    lease = cluster.lease()
    assert lease is not None and (lease["holder"], lease["epoch"]) == (leader, epoch)
    for name, replica in cluster.replicas.items():
        assert replica.exits == [], (name, replica.exits)
        lines = quiet_lines(cluster, name, before[name])
        assert len(lines) <= LINES_PER_REPLICA, (name, lines)


def test_redis_killed_for_30s_then_restarted(
    make_cluster: ClusterFactory, private_redis: PrivateRedis
) -> None:
    cluster = make_cluster(broker_url=private_redis.url())
    ride_out(cluster, private_redis.kill, private_redis.start)


def test_redis_stopped_for_30s(make_cluster: ClusterFactory, private_redis: PrivateRedis) -> None:
    cluster = make_cluster(broker_url=private_redis.url())
    ride_out(
        cluster,
        private_redis.pause,
        private_redis.resume,
    )


def test_rabbitmq_restarted(
    make_cluster: ClusterFactory, procs: ProcessGroup, tmp_path: Path
) -> None:
    """A RabbitMQ of the test's own stopped as a service manager stops it, then started again
    (about 15 s without a broker): the AMQP connection is made anew and every tick goes out."""
    try:
        rabbit = PrivateRabbitMQ(procs, tmp_path / "rabbitmq")
        rabbit.start()
    except RabbitMQUnavailable as exc:
        unavailable(f"a RabbitMQ of the test's own: {exc}")
    cluster = make_cluster(broker_url=rabbit.url)
    ride_out(cluster, rabbit.stop, rabbit.start, outage=2.0)
