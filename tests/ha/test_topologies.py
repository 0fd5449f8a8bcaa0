"""Three real ``celery beat`` replicas where production runs them: behind a real PgBouncer with
its default settings (both pool modes), on a primary that fails over to its synchronous standby
(a libpq multi-host URL), and behind a link that black-holes for a minute. From the worker's
side every tick runs exactly once; leadership does not flap; each fault costs a few log lines.
"""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime

import psycopg
import pytest
from sqlalchemy.engine import make_url
from support import blackhole
from support.env import unavailable
from support.ha import STEADY, ClusterFactory, assert_every_tick_once, settle
from support.pgbouncer import PgBouncer, PgBouncerUnavailable
from support.proxy import TcpProxy
from support.replication import ReplicatedPair

from examples.cluster import Cluster, utcnow
from pg_beat.urls import libpq_url

pytestmark = [pytest.mark.ha, pytest.mark.timeout(300)]

NAMES = ["beat-1", "beat-2", "beat-3"]
TTL = 5.0  # the clusters' lease TTL (the Cluster default)
LINES_PER_FAULT = 20  # log records a replica may write for one fault
LOG_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+: ", re.MULTILINE)


def records(cluster: Cluster, name: str) -> int:
    """Log records replica ``name`` has written so far, but for the banner and the INFO line
    per tick sent (steady output, not what a fault causes)."""
    return sum(
        1
        for line in cluster.log(name).splitlines()
        if LOG_RECORD.match(line) and "] sent " not in line
    )


def terms(cluster: Cluster) -> int:
    with psycopg.connect(libpq_url(cluster.database_url)) as conn:
        row = conn.execute("SELECT count(*) FROM pg_beat_leader_terms").fetchone()
    assert row is not None
    return int(row[0])


def resumed_after(cluster: Cluster, epoch: int, since: float, bound: float) -> float:
    resumed = cluster.first_send_after(epoch, since, timeout=bound + 30)
    assert resumed is not None, "dispatch never resumed"
    assert resumed < bound, f"dispatch resumed after {resumed:.2f}s (bound {bound}s)"
    return resumed


def assert_quiet(cluster: Cluster, before: dict[str, int], faults: int) -> None:
    for name in NAMES:
        written = records(cluster, name) - before[name]
        assert written < LINES_PER_FAULT * faults, (name, written, cluster.log(name)[-4000:])
        assert "Traceback" not in cluster.log(name), cluster.log(name)[-4000:]


# --- PgBouncer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_behind_pgbouncer_with_its_default_settings(
    make_cluster: ClusterFactory, db_url: str, pool_mode: str
) -> None:
    """Behind a session pool the replicas run in session mode (asked for: ``auto`` takes the
    mode that is safe behind any pooler); behind a transaction pool ``auto`` takes the
    transaction-pooling mode: the lease row alone, takeover on expiry, edits polled."""
    target = make_url(db_url)
    try:
        bouncer = PgBouncer(
            target_port=target.port or 5432,
            pool_mode=pool_mode,
            # Session pooling needs a server session per client session: 3 replicas x 3.
            default_pool_size=20 if pool_mode == "session" else 3,
        ).start()
    except PgBouncerUnavailable as exc:
        unavailable(str(exc))
    try:
        url = bouncer.url(target.database or "postgres")
        cluster = make_cluster(
            replica_urls=dict.fromkeys(NAMES, url),
            extra_env={"PG_BEAT_POOL_MODE": "session"} if pool_mode == "session" else {},
        )
        leader, epoch = settle(cluster)
        expected_mode = "session mode" if pool_mode == "session" else "transaction mode"
        assert expected_mode in cluster.log(leader)
        start, before = utcnow(), {n: records(cluster, n) for n in NAMES}
        # SIGKILL: behind a transaction pool nothing tells the holder is gone: takeover on
        # expiry, about a TTL.
        bound = 5.0 if pool_mode == "session" else TTL + 5
        killed_at = time.time()
        cluster.signal(leader, signal.SIGKILL)
        second, epoch2 = cluster.wait_for_leader(timeout=bound + 30, after_epoch=epoch)
        resumed_after(cluster, epoch, killed_at, bound)
        time.sleep(STEADY)
        # SIGSTOP of the new leader, past its lease, then SIGCONT: it wakes deposed.
        stopped_at = time.time()
        cluster.signal(second, signal.SIGSTOP)
        cluster.wait_for_leader(timeout=TTL + 30, other_than=second, after_epoch=epoch2)
        resumed_after(cluster, epoch2, stopped_at, TTL + 10)
        cluster.signal(second, signal.SIGCONT)
        assert_every_tick_once(cluster, start)
        assert terms(cluster) == 3  # two faults, two takeovers: no flapping
        assert_quiet(cluster, before, faults=2)
        assert "prepared statement" not in bouncer.log()
    finally:
        bouncer.stop()


# --- a primary that fails over to its standby --------------------------------------------------


def test_primary_fails_over_to_its_synchronous_standby(make_cluster: ClusterFactory) -> None:
    """One libpq multi-host URL (target_session_attrs=read-write) for every connection; the
    primary stops hard, the standby is promoted: dispatch resumes within TTL + 2 s."""
    try:
        pair = ReplicatedPair().start()
    except Exception as exc:  # initdb / pg_basebackup missing, or no user to run them as
        unavailable(f"cannot start a primary with a standby: {exc}")
    try:
        with psycopg.connect(libpq_url(pair.primary.url()), autocommit=True) as admin:
            admin.execute("CREATE DATABASE pg_beat_ha")
        url = pair.multi_host_url("pg_beat_ha", connect_timeout="2")
        cluster = make_cluster(database_url=url)
        _, epoch = settle(cluster)
        start, before = utcnow(), {n: records(cluster, n) for n in NAMES}
        pair.wait_replayed()
        stopped_at = time.time()
        pair.stop_primary("immediate")
        pair.promote_standby()
        cluster.wait_for_leader(timeout=60, after_epoch=epoch)
        resumed_after(cluster, epoch, stopped_at, TTL + 2)
        assert_every_tick_once(cluster, start)
        assert all(not r.exits for r in cluster.replicas.values())  # no crash, no restart
        assert_quiet(cluster, before, faults=1)
    finally:
        pair.cleanup()


# --- a link that black-holes ----------------------------------------------------------------------


def test_a_link_black_holed_for_a_minute(make_cluster: ClusterFactory, db_url: str) -> None:
    """No FIN, no RST, the sockets stay open: a standby leads within TTL + 2 s, the cut-off
    leader notices within TTL + 5 s (keepalives, tcp_user_timeout) and rejoins afterwards."""
    try:
        blackhole.require()
    except blackhole.KernelBlackholeUnavailable as exc:
        unavailable(str(exc))
    target = make_url(db_url)
    proxies = {name: TcpProxy(target.port or 5432).start() for name in NAMES}
    try:
        urls = {
            name: target.set(port=proxy.port).render_as_string(hide_password=False)
            for name, proxy in proxies.items()
        }
        cluster = make_cluster(replica_urls=urls)
        leader, epoch = settle(cluster)
        start, before = utcnow(), {n: records(cluster, n) for n in NAMES}
        holed_at = time.time()
        proxies[leader].blackhole(kernel=True)
        cluster.wait_for_leader(timeout=TTL + 30, other_than=leader, after_epoch=epoch)
        took = time.time() - holed_at
        assert took < TTL + 2, took
        noticed = wait_for_line(cluster, leader, "no longer the leader", holed_at, TTL + 30)
        assert noticed - holed_at < TTL + 5, noticed - holed_at
        time.sleep(max(0.0, holed_at + 60 - time.time()))
        proxies[leader].restore()
        wait_for_line(cluster, leader, "watchdog: connected to the database", holed_at, 60)
        assert_every_tick_once(cluster, start)
        assert cluster.replicas[leader].exits == []  # it stayed up, and rejoined
        assert terms(cluster) == 2
        assert_quiet(cluster, before, faults=1)
    finally:
        for proxy in proxies.values():
            proxy.stop()


def wait_for_line(cluster: Cluster, name: str, text: str, since: float, timeout: float) -> float:
    """The UNIX time of the first log record of ``name`` after ``since`` that contains
    ``text``, waiting up to ``timeout`` s for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in cluster.log(name).splitlines():
            match = re.match(r"^\[(\d{4}-\d\d-\d\d [\d:]+),(\d{3}): ", line)
            if match is None or text not in line:
                continue
            at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(match[2]) / 1e3
            if at >= since:
                return at
        time.sleep(0.2)
    raise AssertionError(f"{name} never logged {text!r}:\n{cluster.log(name)[-4000:]}")
