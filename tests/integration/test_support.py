"""The test tooling itself: databases, the private cluster, the TCP proxy, child processes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from support import pg
from support.procs import ProcessGroup
from support.proxy import TcpProxy

pytestmark = pytest.mark.timeout(60)


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("connect_timeout", 3)
    return psycopg.connect(pg.libpq_url(url), autocommit=True, **kwargs)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``fn`` in a daemon thread; the dict gets "result" or "error" when it ends."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


# -- databases ----------------------------------------------------------------------------------


def table_names(url: str) -> set[str]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return {row[0] for row in rows}


def database_exists(admin_url: str, name: str) -> bool:
    with connect(admin_url) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def test_empty_db_url_is_an_empty_database(empty_db_url: str) -> None:
    assert make_url(empty_db_url).drivername == "postgresql+psycopg"
    assert table_names(empty_db_url) == set()


def test_db_url_is_a_clone_of_the_migrated_template(
    db_url: str, pg_admin_url: str, migrated_template: str
) -> None:
    tables = table_names(db_url)
    assert tables, "the template should hold the migrated schema"
    assert tables == table_names(pg.database_url(pg_admin_url, migrated_template))
    # The template must stay free of sessions, or the next clone fails.
    pg.terminate_connections(pg_admin_url, migrated_template)


def test_drop_database_forces_out_connected_sessions(pg_admin_url: str) -> None:
    name = "pg_beat_t_dropme"
    pg.drop_database(pg_admin_url, name)
    pg.create_database(pg_admin_url, name)
    conn = connect(pg.database_url(pg_admin_url, name))
    try:
        pg.drop_database(pg_admin_url, name)
        assert not database_exists(pg_admin_url, name)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
        pg.drop_database(pg_admin_url, name)


def test_redis_url_names_a_numbered_database(redis_url: str) -> None:
    parsed = make_url(redis_url)
    assert (parsed.host, parsed.port) == ("127.0.0.1", 6379)
    assert 1 <= int(parsed.database or 0) <= 15


# -- private cluster ----------------------------------------------------------------------------


def test_private_cluster_survives_kill_and_restart(private_cluster: pg.PrivateCluster) -> None:
    port = private_cluster.port
    conn = connect(private_cluster.url())
    assert conn.execute("SELECT 1").fetchone() == (1,)

    private_cluster.kill()
    assert not private_cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        connect(private_cluster.url(), connect_timeout=1)

    private_cluster.start()  # crash recovery, same port
    assert private_cluster.is_running()
    assert private_cluster.port == port
    with connect(private_cluster.url()) as again:
        assert again.execute("SELECT 2").fetchone() == (2,)
        again.execute("CREATE DATABASE survives_restart")

    private_cluster.restart()
    assert private_cluster.port == port
    with connect(private_cluster.url("survives_restart")) as after:
        assert after.execute("SELECT 3").fetchone() == (3,)


def test_private_cluster_cleanup_removes_everything() -> None:
    with pg.PrivateCluster() as cluster:
        base, pid = cluster.base, cluster.pid
        assert base is not None and pid is not None and base.exists()
        assert "database system is ready" in cluster.log()
    assert not pg.pid_alive(pid)
    assert not base.exists()


# -- TCP proxy ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[pg.PrivateCluster]:
    # Our own server: a blackholed connection leaves a backend behind until the test ends.
    with pg.PrivateCluster() as started:
        yield started


@pytest.fixture
def proxy(cluster: pg.PrivateCluster) -> Iterator[TcpProxy]:
    assert cluster.port is not None
    with TcpProxy(cluster.port) as started:
        yield started


def via(proxy: TcpProxy) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/postgres"


def test_proxy_forwards_then_cut_breaks_and_refuses(proxy: TcpProxy) -> None:
    conn = connect(via(proxy))
    assert conn.execute("SELECT repeat('x', 200000)").fetchone() == ("x" * 200000,)
    assert proxy.connections == 1

    proxy.cut()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        connect(via(proxy))
    assert time.monotonic() - started < 2

    proxy.restore()
    with connect(via(proxy)) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_cut_ends_the_server_side_session(proxy: TcpProxy, cluster: pg.PrivateCluster) -> None:
    conn = connect(via(proxy))
    backend = conn.info.backend_pid
    proxy.cut()
    with connect(cluster.url()) as direct:

        def gone() -> bool:
            row = direct.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)
            ).fetchone()
            return row == (0,)

        wait_for(gone)
    conn.close()


def test_blackhole_hangs_queries_but_keeps_sockets_open(
    proxy: TcpProxy, cluster: pg.PrivateCluster
) -> None:
    conn = connect(via(proxy))
    backend = conn.info.backend_pid
    proxy.blackhole()

    thread, outcome = run_in_thread(lambda: conn.execute("SELECT 42").fetchone())
    thread.join(1.0)
    assert thread.is_alive(), f"query returned during a partition: {outcome}"
    assert proxy.connections == 1
    with connect(cluster.url()) as direct:  # the server still sees its client
        row = direct.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)
        ).fetchone()
        assert row == (1,)

    # New connections are accepted, then nothing answers them.
    with pytest.raises(psycopg.OperationalError):
        connect(via(proxy), connect_timeout=1)

    proxy.restore()  # the partition heals: the held query completes
    thread.join(5.0)
    assert outcome == {"result": (42,)}
    with connect(via(proxy)) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)
    conn.close()


def test_proxy_only_targets_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        TcpProxy(5432, target_host="10.0.0.1")


# -- processes ----------------------------------------------------------------------------------

SLEEPER = "import time; print('up', flush=True); time.sleep(60)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('up', flush=True); time.sleep(60)"
)


def wait_for_output(group: ProcessGroup, name: str, text: str) -> None:
    wait_for(lambda: text in group.log(name))


def test_process_group_stops_what_it_started(tmp_path: Path) -> None:
    with ProcessGroup(log_dir=tmp_path) as group:
        group.spawn("polite", [sys.executable, "-c", SLEEPER])
        group.spawn("stubborn", [sys.executable, "-c", STUBBORN])
        group.spawn("paused", [sys.executable, "-c", SLEEPER], env={"PAUSED": "1"})
        for name in group.names():
            wait_for_output(group, name, "up")
        pids = {name: group.pid(name) for name in group.names()}
        group.signal("paused", signal.SIGSTOP)

        assert group.stop("polite") == -signal.SIGTERM
        assert group.stop("stubborn", timeout=0.5) == -signal.SIGKILL
        assert group.stop("paused") == -signal.SIGTERM
        assert not any(pg.pid_alive(pid) for pid in pids.values())

        # A stopped name can be spawned again; its log keeps both runs.
        group.spawn("polite", [sys.executable, "-c", SLEEPER])
        wait_for(lambda: group.log("polite").count("up") == 2)
        assert group.pid("polite") != pids["polite"]
    assert not group.is_running("polite")


def test_procs_fixture_runs_in_its_own_session(procs: ProcessGroup) -> None:
    proc = procs.spawn("sleeper", [sys.executable, "-c", SLEEPER])
    wait_for_output(procs, "sleeper", "up")
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    with pytest.raises(ValueError, match="still running"):
        procs.spawn("sleeper", [sys.executable, "-c", SLEEPER])
