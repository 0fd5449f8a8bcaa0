"""The test tooling itself: databases, the private cluster, the TCP proxy (and its kernel black
hole), PgBouncer, a replicated pair, child processes."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from support import blackhole, env, pg
from support.pgbouncer import PgBouncer, PgBouncerUnavailable
from support.procs import ProcessGroup
from support.proxy import TcpProxy
from support.replication import ReplicatedPair
from support.waiting import connect, wait_for

pytestmark = pytest.mark.timeout(60)


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
    try:
        with pg.PrivateCluster() as started:
            yield started
    except pg.NoPostgresAvailable as exc:
        env.unavailable(f"cannot start a private PostgreSQL cluster: {exc}")


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


def test_userspace_blackhole_holds_bytes_then_delivers_them(echo_proxy: TcpProxy) -> None:
    client = echo_client(echo_proxy, user_timeout_ms=1500)
    with client:
        echo_proxy.blackhole()
        client.sendall(b"held")
        # Longer than the user timeout: the proxy's kernel ACKs, so the client never times out.
        time.sleep(2.0)
        assert not readable(client)
        echo_proxy.restore()
        assert read_exactly(client, 4) == b"held"


# -- kernel black hole --------------------------------------------------------------------------


@pytest.fixture
def no_leftover_rules() -> Iterator[None]:
    """Skip (fail under CI) without iptables; after the test, assert no rule of ours is left."""
    reason = blackhole.problem()
    if reason is not None:
        env.unavailable(f"kernel black hole unavailable: {reason}")
    yield
    assert blackhole.rules_of_this_process() == []
    listing = subprocess.run(
        [blackhole.require(), "-S", "INPUT"], capture_output=True, text=True, check=True
    ).stdout
    assert "pg_beat tests" not in listing, listing


# Set by the echo server when it receives b"slow", which it echoes half a second later.
SLOW_RECEIVED = threading.Event()


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                if data == b"slow":
                    SLOW_RECEIVED.set()
                    time.sleep(0.5)
                self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


@pytest.fixture
def echo_proxy() -> Iterator[TcpProxy]:
    """A TcpProxy in front of an echo server on 127.0.0.1 (raw bytes, no protocol)."""
    with _EchoServer(("127.0.0.1", 0), _Echo) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
        thread.start()
        try:
            with TcpProxy(server.server_address[1]) as started:
                yield started
        finally:
            server.shutdown()
            thread.join(5)


def echo_client(proxy: TcpProxy, user_timeout_ms: int | None = None) -> socket.socket:
    """A socket connected through ``proxy`` to the echo server, round trip checked."""
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=3)
    if user_timeout_ms is not None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    client.sendall(b"ping")
    assert read_exactly(client, 4) == b"ping"
    return client


def readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has bytes (or an EOF or error) to read right now."""
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


def read_exactly(sock: socket.socket, size: int, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    return data


@pytest.mark.usefixtures("no_leftover_rules")
def test_kernel_blackhole_times_out_unacknowledged_data(echo_proxy: TcpProxy) -> None:
    with echo_client(echo_proxy, user_timeout_ms=1500) as client:
        echo_proxy.blackhole(kernel=True)
        assert echo_proxy.kernel_blackhole and echo_proxy.mode == "blackhole"
        assert len(blackhole.rules_of_this_process()) == 2
        started = time.monotonic()
        client.sendall(b"lost")
        with pytest.raises(OSError) as raised:
            read_exactly(client, 4, timeout=10)
        assert raised.value.errno == errno.ETIMEDOUT, raised.value
        assert time.monotonic() - started < 5

        # New connections get no SYN-ACK.
        with pytest.raises(TimeoutError):
            socket.create_connection(("127.0.0.1", echo_proxy.port), timeout=0.5).close()

    echo_proxy.restore()
    assert not echo_proxy.kernel_blackhole
    assert blackhole.rules_of_this_process() == []
    with echo_client(echo_proxy):
        pass


@pytest.mark.usefixtures("no_leftover_rules")
def test_kernel_blackhole_delivers_held_bytes_late(echo_proxy: TcpProxy) -> None:
    with echo_client(echo_proxy) as client:
        SLOW_RECEIVED.clear()
        client.sendall(b"slow")
        assert SLOW_RECEIVED.wait(5)
        echo_proxy.blackhole(kernel=True)
        # The proxy sends b"slow" back during the black hole, we send b"late": both held.
        client.sendall(b"late")
        time.sleep(1.0)
        assert not readable(client)
        held = time.monotonic()
        echo_proxy.restore()
        # Both retransmitted by TCP, in order; b"late" echoed on arrival.
        assert read_exactly(client, 8, timeout=10) == b"slowlate"
        assert time.monotonic() - held < 5


@pytest.mark.usefixtures("no_leftover_rules")
def test_cut_lifts_the_kernel_blackhole_so_the_client_sees_the_close(
    echo_proxy: TcpProxy,
) -> None:
    with echo_client(echo_proxy) as client:
        echo_proxy.blackhole(kernel=True)
        echo_proxy.cut()
        assert not echo_proxy.kernel_blackhole
        assert blackhole.rules_of_this_process() == []
        client.settimeout(3)
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(64) == b""


KEEPALIVES = {
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 2,
    "tcp_user_timeout": 2000,
}


@pytest.mark.usefixtures("no_leftover_rules")
def test_kernel_blackhole_breaks_a_psycopg_connection_with_keepalives(proxy: TcpProxy) -> None:
    conn = connect(via(proxy), **KEEPALIVES)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.blackhole(kernel=True)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT pg_sleep(0)")
        assert time.monotonic() - started < 5
    finally:
        conn.close()
    proxy.restore()
    with connect(via(proxy), **KEEPALIVES) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.usefixtures("no_leftover_rules")
def test_kernel_blackhole_upstream_lets_the_server_notice(
    proxy: TcpProxy, cluster: pg.PrivateCluster
) -> None:
    conn = connect(via(proxy))
    try:
        backend = conn.info.backend_pid
        # Keepalives for an idle socket, the user timeout for unacknowledged data (a reply
        # whose delayed ACK the black hole swallowed is retransmitted, not probed).
        conn.execute("SET tcp_keepalives_idle = 1")
        conn.execute("SET tcp_keepalives_interval = 1")
        conn.execute("SET tcp_keepalives_count = 2")
        conn.execute("SET tcp_user_timeout = 2000")
        proxy.blackhole(kernel=True, upstream=True)
        assert len(blackhole.rules_of_this_process()) == 4
        with connect(cluster.url()) as direct:

            def gone() -> bool:
                row = direct.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)
                ).fetchone()
                return row == (0,)

            wait_for(gone, timeout=6)
        proxy.restore()
    finally:
        conn.close()


# -- PgBouncer ----------------------------------------------------------------------------------


@contextlib.contextmanager
def bouncer(cluster: pg.PrivateCluster, **kwargs: Any) -> Iterator[PgBouncer]:
    assert cluster.port is not None
    try:
        with PgBouncer("127.0.0.1", cluster.port, **kwargs) as started:
            yield started
    except PgBouncerUnavailable as exc:
        env.unavailable(str(exc))


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_pgbouncer_session_mode_keeps_one_backend_with_defaults(
    cluster: pg.PrivateCluster,
) -> None:
    with bouncer(cluster) as pgb:
        assert make_url(pgb.url("postgres")).drivername == "postgresql+psycopg"
        with connect(pgb.url()) as conn:
            first = backend_pid(conn)
            with conn.transaction():
                assert backend_pid(conn) == first
            assert backend_pid(conn) == first
            pools = [row for row in pgb.admin("SHOW POOLS") if row["database"] == "postgres"]
            assert [(row["pool_mode"], row["sv_active"]) for row in pools] == [("session", 1)]
        config = {row["key"]: row["value"] for row in pgb.admin("SHOW CONFIG")}
        assert config["ignore_startup_parameters"] == ""
        assert (config["default_pool_size"], config["max_client_conn"]) == ("3", "200")


def test_pgbouncer_transaction_mode_moves_a_client_between_backends(
    cluster: pg.PrivateCluster,
) -> None:
    with bouncer(cluster, pool_mode="transaction") as pgb:
        with (
            connect(pgb.url()) as client,
            psycopg.connect(pgb.libpq_url(), connect_timeout=3) as other,
        ):
            first = backend_pid(client)
            # Server connections are reused last-in first-out: the other client's open
            # transaction now holds the one ours just released.
            assert backend_pid(other) == first
            second = backend_pid(client)
            assert second != first
            other.rollback()
            pools = [row for row in pgb.admin("SHOW POOLS") if row["database"] == "postgres"]
            assert pools[0]["pool_mode"] == "transaction"


def test_pgbouncer_defaults_refuse_the_options_startup_parameter(
    cluster: pg.PrivateCluster,
) -> None:
    with bouncer(cluster) as pgb:
        with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
            connect(pgb.url(), options="-c statement_timeout=1000")
        with connect(pgb.url(), "tracked") as conn:
            row = conn.execute("SELECT current_setting('application_name')").fetchone()
            assert row == ("tracked",)
    # The usual production override accepts `options`, and silently drops it.
    with bouncer(cluster, default_settings=False) as lenient:
        with connect(lenient.url(), options="-c statement_timeout=1000") as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_pgbouncer_stops_by_pid_and_restarts_on_its_port(cluster: pg.PrivateCluster) -> None:
    with bouncer(cluster) as pgb:
        pid, port, base = pgb.pid, pgb.port, pgb.base
        assert pid is not None and pg.pid_alive(pid) and base is not None
        conn = connect(pgb.url())
        assert pgb.stop() == 1  # PgBouncer 1.18: "got SIGTERM, fast exit", status 1
        assert pgb.pid is None and not pg.pid_alive(pid)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
        with pytest.raises(psycopg.OperationalError, match="refused"):
            connect(pgb.url(), connect_timeout=1)

        pgb.start()
        assert pgb.port == port and pgb.pid not in (None, pid)
        with connect(pgb.url()) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)
        second = pgb.pid
        assert "process up" in pgb.log()
    assert second is not None and not pg.pid_alive(second)
    assert not base.exists()


# -- replicated pair ----------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[ReplicatedPair]:
    try:
        with ReplicatedPair() as started:
            yield started
    except pg.NoPostgresAvailable as exc:
        env.unavailable(f"cannot start a replicated PostgreSQL pair: {exc}")


def postgres_pids(*clusters: pg.PrivateCluster) -> list[int]:
    """Each running cluster's postmaster and every process it forked."""
    pids = []
    for cluster in clusters:
        assert cluster.pid is not None
        pids += [cluster.pid, *pg.children(cluster.pid)]
    return pids


def test_replicated_pair_replicates_synchronously_and_fails_over(pair: ReplicatedPair) -> None:
    with connect(pair.primary.url()) as conn:
        conn.execute("CREATE TABLE ticks (n int)")
        conn.execute("INSERT INTO ticks VALUES (1)")
    pair.wait_replayed()
    with connect(pair.standby.url()) as standby:
        assert standby.execute("SELECT n FROM ticks").fetchall() == [(1,)]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            standby.execute("INSERT INTO ticks VALUES (0)")

    url = pair.multi_host_url(connect_timeout="2")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.info.port == pair.primary.port
        conn.execute("INSERT INTO ticks VALUES (2)")  # acknowledged: flushed on the standby too
    pair.stop_primary("immediate")
    pair.promote_standby()

    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.info.port == pair.standby.port
        conn.execute("INSERT INTO ticks VALUES (3)")
        assert conn.execute("SELECT n FROM ticks ORDER BY n").fetchall() == [(1,), (2,), (3,)]


def test_replicated_pair_cleans_up_every_process_and_directory() -> None:
    try:
        with ReplicatedPair() as started:
            pids = postgres_pids(started.primary, started.standby)
            dirs = [started.primary.base, started.standby.base]
            assert len(pids) > 4  # two postmasters, their walsender/walreceiver and helpers
    except pg.NoPostgresAvailable as exc:
        env.unavailable(f"cannot start a replicated PostgreSQL pair: {exc}")
    assert [pid for pid in pids if pg.pid_alive(pid)] == []
    assert not any(d is not None and d.exists() for d in dirs)


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
