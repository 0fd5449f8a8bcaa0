"""A real ``celery beat -S pg_beat`` at start: what waiting cannot cure ends it with one line and
a non-zero status; an unreachable server is waited for with one line, and SIGTERM or SIGINT
end the wait within two seconds (a container stop must not wait out its grace period)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from support import blackhole
from support.env import unavailable
from support.pg import free_port
from support.procs import ProcessGroup

pytestmark = pytest.mark.timeout(90)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BEAT = [sys.executable, "-m", "celery", "-A", "e2e_app", "beat", "-l", "info", "-S", "pg_beat"]


def spawn_beat(procs: ProcessGroup, url: str, redis_url: str, tmp_path: Path) -> None:
    env = {
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "E2E_BROKER_URL": redis_url,
        "E2E_QUEUE": f"pg_beat_start_{secrets.token_hex(4)}",
        "E2E_DATABASE_URL": url,
        "PG_BEAT_DATABASE_URL": url,
        "PG_BEAT_REPLICA_NAME": "starting-1",
    }
    procs.spawn("beat", [*BEAT, "-s", str(tmp_path / "schedule")], env=env, cwd=tmp_path)


def wait_for_log(procs: ProcessGroup, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in procs.log("beat"):
        assert procs.is_running("beat"), procs.log("beat")[-3000:]
        assert time.monotonic() < deadline, procs.log("beat")[-3000:]
        time.sleep(0.1)


@pytest.fixture
def black_holed_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose packets the kernel drops: a connect hangs, never refused."""
    try:
        blackhole.require()
    except blackhole.KernelBlackholeUnavailable as exc:
        unavailable(str(exc))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = int(listener.getsockname()[1])
    hole = blackhole.KernelBlackhole.for_port(port)
    hole.engage()
    try:
        yield port
    finally:
        hole.release()
        listener.close()


@pytest.mark.parametrize("what", ["database", "role"])
def test_a_missing_database_or_role_stops_beat_with_one_line(
    pg_admin_url: str, redis_url: str, procs: ProcessGroup, tmp_path: Path, what: str
) -> None:
    admin = make_url(pg_admin_url)
    missing = f"pg_beat_missing_{secrets.token_hex(4)}"
    url = admin.set(database=missing) if what == "database" else admin.set(username=missing)
    spawn_beat(procs, url.render_as_string(hide_password=False), redis_url, tmp_path)
    code = procs.wait("beat", timeout=30)
    log = procs.log("beat")
    assert code == 78, log[-3000:]  # EX_CONFIG: waiting will not cure it
    lines = [line for line in log.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and f'"{missing}" does not exist' in lines[0], log[-3000:]
    assert "Traceback" not in log and "retrying" not in log


@pytest.mark.parametrize("how", ["refused", "black-holed"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_beat_waiting_for_an_unreachable_server_stops_within_two_seconds(
    redis_url: str,
    procs: ProcessGroup,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    how: str,
    sig: signal.Signals,
) -> None:
    port = free_port() if how == "refused" else request.getfixturevalue("black_holed_port")
    spawn_beat(procs, f"postgresql://postgres@127.0.0.1:{port}/nothing", redis_url, tmp_path)
    wait_for_log(procs, "not usable yet")
    time.sleep(1.5)  # inside the back-off, or a connection attempt
    started = time.monotonic()
    procs.signal("beat", sig)
    try:
        procs.wait("beat", timeout=2.0)
    except subprocess.TimeoutExpired:
        pytest.fail(f"beat still running 2 s after {sig.name}:\n{procs.log('beat')[-3000:]}")
    took = time.monotonic() - started
    log = procs.log("beat")
    assert took < 2.0 and "Traceback" not in log, log[-3000:]
    assert log.count("not usable yet") == 1, log[-3000:]  # one line per state, not per retry
