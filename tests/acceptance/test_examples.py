"""The runnable examples, run as their docstrings say: managing schedules from Python and from
the CLI, and the supervised cluster restarting a replica killed from outside."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from support.pg import libpq_url, pid_alive
from support.procs import ProcessGroup

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_NAMES = {"example-heartbeat", "example-tidy-berlin", "example-once"}


def schedule_names(db_url: str) -> set[str]:
    with psycopg.connect(libpq_url(db_url)) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM pg_beat_schedules")}


def run(argv: list[str], db_url: str) -> subprocess.CompletedProcess[str]:
    bindir = str(Path(sys.executable).parent)  # pg-beat, as the venv puts it on PATH
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={
            **os.environ,
            "PG_BEAT_DATABASE_URL": db_url,
            "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]),
        },
        capture_output=True,
        text=True,
        timeout=150,  # the CLI script runs pg-beat about 25 times
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_manage_schedules_from_python(db_url: str) -> None:
    result = run([sys.executable, "-m", "examples.manage_schedules", "--keep"], db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused: schedule 'example-bad': crontab: minute '61' is invalid" in result.stdout
    assert "refused: schedule 'example-no-such': not found" in result.stdout
    assert schedule_names(db_url) == EXAMPLE_NAMES
    # Run again (it starts from what --keep left), this time removing its schedules.
    result = run([sys.executable, "-m", "examples.manage_schedules"], db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert schedule_names(db_url) == set()


@pytest.mark.timeout(180)
def test_manage_schedules_from_the_cli(db_url: str) -> None:
    result = run(["bash", str(ROOT / "examples" / "manage_schedules.sh")], db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("(exit code 1)") == 3, result.stdout
    assert "pg-beat: error: schedule 'example-bad'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert schedule_names(db_url) == set()


def test_supervised_cluster_restarts_a_replica_killed_from_outside(
    procs: ProcessGroup, pg_admin_url: str
) -> None:
    procs.spawn(
        "cluster",
        [sys.executable, "-m", "examples.supervised_cluster", "--duration", "12"],
        env={"PG_BEAT_DATABASE_URL": pg_admin_url},
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while "leads (epoch" not in procs.log("cluster"):
        assert procs.is_running("cluster") and time.monotonic() < deadline, procs.log("cluster")
        time.sleep(0.2)
    output = procs.log("cluster")
    leader = re.search(r"^>>> (beat-\d) leads", output, re.MULTILINE)
    assert leader is not None
    standby = next(n for n in ("beat-1", "beat-2", "beat-3") if n != leader[1])
    pid = re.search(rf"^started {standby} pid (\d+)$", output, re.MULTILINE)
    assert pid is not None, output
    os.kill(int(pid[1]), signal.SIGKILL)  # as a user would, from another terminal

    assert procs.wait("cluster", timeout=60) == 0, procs.log("cluster")
    output = procs.log("cluster")
    assert re.search(
        rf"^started {standby} pid \d+ \(restarted by the supervisor; it was killed by SIGKILL\)",
        output,
        re.MULTILINE,
    ), output
    pids = [int(p) for p in re.findall(r"^started .* pid (\d+)", output, re.MULTILINE)]
    assert len(pids) == 5 and not [p for p in pids if pid_alive(p)]
    assert re.search(r"^dropped database pg_beat_demo_\w+$", output, re.MULTILINE)
