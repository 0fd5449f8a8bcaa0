"""Three real ``celery beat`` replicas, a real worker, faults injected: every tick runs once.

Each case runs three 1-second ``catch_up`` schedules, injects one fault into the leader, and
asserts from the worker's side that every tick due in the observed window ran exactly once
(re-publications after a crash included) and that dispatch resumed within a generous bound.
Exact failover figures are measured by ``benchmarks/bench_failover.py``, not here.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.pg import PrivateCluster, libpq_url
from support.proxy import TcpProxy

from examples.cluster import Cluster, utcnow

pytestmark = [pytest.mark.ha, pytest.mark.timeout(240)]

SCHEDULES = [("every-second-a", 1.0), ("every-second-b", 1.0), ("every-second-c", 1.0)]
STEADY = 3.0  # seconds of normal running before and after each fault


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def make_cluster(
    db_url: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ClusterFactory]:
    clusters: list[Cluster] = []

    def make(**kwargs: Any) -> Cluster:
        kwargs.setdefault("workdir", tmp_path / f"cluster{len(clusters)}")
        database = kwargs.pop("database_url", db_url)
        cluster = Cluster(database, kwargs.pop("broker_url", redis_url), **kwargs)
        clusters.append(cluster)
        cluster.prepare(SCHEDULES)
        return cluster

    yield make
    failed = getattr(request.node, "rep_call", None)
    for cluster in clusters:
        cluster.stop()
        if failed is not None and failed.failed:
            for name in [*cluster.replicas, "worker"]:
                print(f"----- {name} -----\n{cluster.log(name)[-6000:]}")


def settle(cluster: Cluster) -> tuple[str, int]:
    cluster.start()
    leader, epoch = cluster.wait_for_leader(timeout=60)
    time.sleep(STEADY)
    return leader, epoch


def assert_every_tick_once(cluster: Cluster, start: Any) -> None:
    time.sleep(2 * STEADY)
    end = utcnow() - timedelta(seconds=1)
    cluster.wait_executed_until(end, timeout=60)
    verdict = cluster.verify(start, end)
    assert verdict.expected >= 3 * 4, verdict.summary()
    assert verdict.ok, (
        verdict.summary(),
        verdict.missed[:5],
        verdict.duplicates[:5],
        verdict.republished[:5],
    )


def fail_over(
    cluster: Cluster, leader: str, epoch: int, inject: Callable[[], None], bound: float
) -> tuple[str, int, float]:
    """Inject the fault; return the new leader and seconds until a later epoch sent a tick."""
    started = time.time()
    inject()
    new_leader, new_epoch = cluster.wait_for_leader(
        timeout=bound + 30, other_than=leader, after_epoch=epoch
    )
    resumed = cluster.first_send_after(epoch, started, timeout=bound + 30)
    assert resumed is not None, "dispatch never resumed"
    assert resumed < bound, f"dispatch resumed after {resumed:.2f}s (bound {bound}s)"
    return new_leader, new_epoch, resumed


def test_leader_sigkill(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster()
    leader, epoch = settle(cluster)
    start = utcnow()
    fail_over(cluster, leader, epoch, lambda: cluster.signal(leader, signal.SIGKILL), bound=5)
    assert_every_tick_once(cluster, start)
    assert cluster.replicas[leader].exits == [-signal.SIGKILL]


def test_leader_sigstop_then_sigcont_sends_nothing_when_it_wakes(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster()
    leader, epoch = settle(cluster)
    start = utcnow()
    fail_over(cluster, leader, epoch, lambda: cluster.signal(leader, signal.SIGSTOP), bound=5 + 5)
    cluster.signal(leader, signal.SIGCONT)
    assert_every_tick_once(cluster, start)
    # The woken ex-leader did not claim anything under its old epoch after the takeover.
    with psycopg.connect(libpq_url(cluster.database_url)) as conn:
        late_claims = conn.execute(
            "SELECT count(*) FROM pg_beat_runs r JOIN pg_beat_leader_terms t "
            "ON t.epoch = r.epoch + 1 WHERE r.epoch = %s AND r.claimed_at > t.acquired_at",
            (epoch,),
        ).fetchone()
    assert late_claims == (0,)
    # And it is alive, as a standby: losing leadership is not a crash.
    assert cluster.replicas[leader].exits == []


def test_leader_sigterm_hands_over_at_once(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster()
    leader, epoch = settle(cluster)
    start = utcnow()
    fail_over(cluster, leader, epoch, lambda: cluster.signal(leader, signal.SIGTERM), bound=3)
    assert_every_tick_once(cluster, start)
    assert cluster.replicas[leader].exits == [0]
    assert "Traceback" not in cluster.log(leader)


def test_leader_backends_terminated(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster()
    leader, epoch = settle(cluster)
    start = utcnow()
    fail_over(cluster, leader, epoch, lambda: cluster.terminate_backends(leader), bound=5)
    assert_every_tick_once(cluster, start)
    assert cluster.replicas[leader].exits == []  # it stays, as a standby


def test_postgres_restarted_under_the_cluster(
    make_cluster: ClusterFactory, private_cluster: PrivateCluster
) -> None:
    admin = private_cluster.url()
    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        conn.execute("CREATE DATABASE pg_beat_ha")
    cluster = make_cluster(database_url=private_cluster.url("pg_beat_ha"))
    _, epoch = settle(cluster)
    start = utcnow()
    started = time.time()
    private_cluster.restart(mode="fast")
    cluster.wait_for_leader(timeout=60, after_epoch=epoch)
    resumed = cluster.first_send_after(epoch, started, timeout=60)
    assert resumed is not None and resumed < 20, resumed
    assert_every_tick_once(cluster, start)
    assert all(not r.exits for r in cluster.replicas.values())


def test_leader_partitioned_from_postgres(
    make_cluster: ClusterFactory, pg_admin_url: str, db_url: str
) -> None:
    from sqlalchemy.engine import make_url

    target = make_url(db_url)
    proxies = {f"beat-{i}": TcpProxy(target.port or 5432).start() for i in (1, 2, 3)}
    try:
        urls = {
            name: target.set(port=proxy.port).render_as_string(hide_password=False)
            for name, proxy in proxies.items()
        }
        cluster = make_cluster(replica_urls=urls)
        leader, epoch = settle(cluster)
        start = utcnow()
        # No FIN, no RST: the leader's packets vanish. Only a standby's watchdog can tell.
        fail_over(cluster, leader, epoch, proxies[leader].blackhole, bound=5 + 10)
        time.sleep(2)
        proxies[leader].cut()  # drop what the partition held instead of delivering it late
        proxies[leader].restore()
        assert_every_tick_once(cluster, start)
    finally:
        for proxy in proxies.values():
            proxy.stop()


def test_dispatch_stuck_in_a_blocked_publish(make_cluster: ClusterFactory, redis_url: str) -> None:
    redis_db = redis_url.rsplit("/", 1)[1]
    proxies = {f"beat-{i}": TcpProxy(6379).start() for i in (1, 2, 3)}
    try:
        cluster = make_cluster(
            replica_brokers={
                name: f"redis://127.0.0.1:{proxy.port}/{redis_db}"
                for name, proxy in proxies.items()
            },
            hang_timeout=3.0,
        )
        leader, epoch = settle(cluster)
        start = utcnow()
        # The broker stops answering the leader: its next publish blocks forever.
        fail_over(cluster, leader, epoch, proxies[leader].blackhole, bound=3 + 5 + 5)
        assert "dispatch loop stuck" in cluster.log(leader)
        proxies[leader].cut()
        proxies[leader].restore()
        assert_every_tick_once(cluster, start)
        assert 70 in cluster.replicas[leader].exits  # on_hang=exit: the supervisor restarts it
    finally:
        for proxy in proxies.values():
            proxy.stop()


def test_row_lock_held_by_another_session(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster()
    settle(cluster)
    start = utcnow()
    with psycopg.connect(libpq_url(cluster.database_url)) as admin:
        admin.execute("SELECT * FROM pg_beat_schedules WHERE name = 'every-second-a' FOR UPDATE")
        time.sleep(5)  # an admin forgot an open transaction in psql
        with psycopg.connect(libpq_url(cluster.database_url)) as conn:
            lateness = conn.execute(
                "SELECT max(extract(epoch FROM sent_at - due_at)) FROM pg_beat_runs "
                "WHERE schedule_name <> 'every-second-a' AND due_at > %s",
                (start,),
            ).fetchone()
        admin.rollback()
    assert lateness is not None and lateness[0] is not None and lateness[0] < 1.0, lateness
    assert_every_tick_once(cluster, start)
