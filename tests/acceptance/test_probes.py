"""Probes that do not restart a whole cluster at once: ``pg-beat check --self`` (liveness, this
replica only, no database) stays green through a database outage while ``pg-beat check``
(readiness, the cluster) goes red; a replica whose loop stops goes red on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from support.pg import PrivateCluster, libpq_url
from support.procs import ProcessGroup

from pg_beat import migrate

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def pg_beat(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "pg-beat"), *args],
        env={**os.environ, "PG_BEAT_DATABASE_URL": url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).strip()


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_liveness_stays_green_through_a_database_outage_readiness_does_not(
    private_cluster: PrivateCluster, redis_url: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    with psycopg.connect(libpq_url(private_cluster.url()), autocommit=True) as admin:
        admin.execute("CREATE DATABASE probes")
    url = private_cluster.url("probes")
    migrate.upgrade(url)
    alive = tmp_path / "alive.json"
    env = {
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "E2E_BROKER_URL": redis_url,
        "E2E_QUEUE": "pg_beat_probes",
        "E2E_DATABASE_URL": libpq_url(url),
        "PG_BEAT_DATABASE_URL": url,
        "PG_BEAT_REPLICA_NAME": "probed-1",
        "PG_BEAT_LIVENESS_FILE": str(alive),
    }
    procs.spawn(
        "beat",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "e2e_app",
            "beat",
            "-l",
            "info",
            "-S",
            "pg_beat",
            "-s",
            str(tmp_path / "s"),
        ],
        env=env,
        cwd=tmp_path,
    )
    live = {"PG_BEAT_LIVENESS_FILE": str(alive)}
    wait_until(lambda: pg_beat(url, "check")[0] == 0, 30, "a healthy cluster")
    assert pg_beat(url, "check", "--self", env=live)[0] == 0
    # The lease is won by the watchdog thread; the file says so after the loop's next turn.
    wait_until(lambda: json.loads(alive.read_text())["role"] == "leader", 10, "role leader")
    state = json.loads(alive.read_text())
    assert (state["replica"], state["watchdog_alive"]) == ("probed-1", True)

    private_cluster.stop("immediate")  # the database goes away
    try:
        time.sleep(8)  # longer than the lease and the loop's back-off
        code, out = pg_beat(url, "check", "--self", "--max-age", "5", env=live)
        assert code == 0 and out.startswith("alive:"), out  # liveness: keep the container
        code, out = pg_beat(url, "check")
        assert code == 3, out  # readiness: the cluster cannot dispatch
    finally:
        private_cluster.start()
    wait_until(lambda: pg_beat(url, "check")[0] == 0, 30, "healthy again")

    procs.signal("beat", signal.SIGSTOP)  # this replica's loop stops
    try:
        time.sleep(3)
        code, out = pg_beat(url, "check", "--self", "--max-age", "2", env=live)
        assert code == 1 and "has not run its loop" in out, out
    finally:
        procs.signal("beat", signal.SIGCONT)
    assert "Traceback" not in procs.log("beat")


def test_check_self_without_a_file_says_what_it_needs(tmp_path: Path) -> None:
    code, out = pg_beat("postgresql://unused/x", "check", "--self")
    assert code == 2 and "PG_BEAT_LIVENESS_FILE" in out, out
    code, out = pg_beat(
        "postgresql://unused/x", "check", "--self", "--file", str(tmp_path / "none.json")
    )
    assert code == 1 and out == "dead: no liveness file (has the replica started?)", out
