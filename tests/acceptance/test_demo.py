"""The one-command demo, run as a user runs it: ``python -m examples.demo --short``.

It must end with both failovers and every tick run exactly once, and leave nothing behind
(processes, database, private cluster, temporary directory) whether it finishes or is
interrupted by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import psycopg
import pytest
from support.env import unavailable
from support.pg import libpq_url, pid_alive
from support.procs import ProcessGroup

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "examples.demo", "--short"]

# Throwaway cluster and filesystem broker: the path of a machine without PostgreSQL or Redis.
PRIVATE = ("--private-postgres", "--broker", "filesystem")


def spawn_demo(procs: ProcessGroup, admin_url: str, *options: str) -> None:
    # The demo creates its database on the server the suite uses, so the test can look for it.
    procs.spawn("demo", [*DEMO, *options], env={"PG_BEAT_DATABASE_URL": admin_url}, cwd=ROOT)


def wait_for_output(procs: ProcessGroup, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = procs.log("demo")
        if re.search(pattern, output, re.MULTILINE):
            return output
        if not procs.is_running("demo"):
            break
        time.sleep(0.2)
    pytest.fail(f"the demo never printed {pattern!r}:\n{procs.log('demo')[-4000:]}")


def assert_nothing_left(output: str, admin_url: str) -> None:
    """Every PID the demo announced is gone; its database, cluster and directory too."""
    pids = [int(p) for p in re.findall(r"^started .* pid (\d+)", output, re.MULTILINE)]
    assert len(pids) >= 4, output  # three replicas and a worker, at least
    assert [p for p in pids if pid_alive(p)] == []
    database = re.search(r"^database .*/(pg_beat_demo_\w+) ", output, re.MULTILINE)
    assert database is not None, output
    private = re.search(r"^started private PostgreSQL pid (\d+) in (\S+)", output, re.MULTILINE)
    if private is None:
        with psycopg.connect(libpq_url(admin_url)) as conn:
            found = conn.execute(
                "SELECT count(*) FROM pg_database WHERE datname = %s", (database[1],)
            ).fetchone()
        assert found == (0,), f"database {database[1]} was not dropped"
    else:
        assert not pid_alive(int(private[1])), "the private PostgreSQL still runs"
        assert not Path(private[2]).exists()
    workdir = re.search(r"^workdir +(\S+)", output, re.MULTILINE)
    assert workdir is not None and not Path(workdir[1]).exists()


def skip_without_private_cluster(output: str) -> None:
    """Locally, no initdb skips; under CI=true it fails (as a missing service does)."""
    if "cannot start a private PostgreSQL" in output:
        unavailable(output.strip().splitlines()[-1])


@pytest.mark.parametrize("options", [(), PRIVATE], ids=["default", "private-filesystem"])
def test_demo_reports_both_failovers_without_duplicates_or_missed_ticks(
    procs: ProcessGroup, pg_admin_url: str, options: tuple[str, ...]
) -> None:
    spawn_demo(procs, pg_admin_url, *options)
    code = procs.wait("demo", timeout=120)
    output = procs.log("demo")
    skip_without_private_cluster(output)
    assert code == 0, output[-6000:]
    for number, fault in ((1, "SIGKILL"), (2, "SIGSTOP")):
        line = re.search(
            rf"^failover {number} +{fault} (\S+) -> (\S+) .*dispatch resumed after ([\d.]+) s$",
            output,
            re.MULTILINE,
        )
        assert line is not None, output[-3000:]
        assert line[1] != line[2]
        assert float(line[3]) < 5 + 10  # the TTL, plus a generous margin for a slow machine
        elected = re.search(rf"^failover {number} .*new leader after ([\d.]+) s", output, re.M)
        assert elected is not None and float(elected[1]) <= float(line[3])
    assert re.search(r"^duplicated +0$", output, re.MULTILINE), output[-3000:]
    assert re.search(r"^missed +0$", output, re.MULTILINE), output[-3000:]
    checked = re.search(
        r"^checked +the (\d{2,}) of them due .*: (\d+) executions$", output, re.MULTILINE
    )
    assert checked is not None and checked[1] == checked[2], output[-3000:]
    assert re.search(r"^result +OK", output, re.MULTILINE)
    assert "$ pg-beat status" in output or "pg-beat status skipped" in output
    assert "Traceback" not in output
    assert_nothing_left(output, pg_admin_url)


@pytest.mark.parametrize(
    ("sig", "options", "when"),
    [
        # Ctrl-C while the cluster runs steadily.
        (signal.SIGINT, (), r"^ +\d+\.\ds +sent"),
        # SIGTERM just after a replica was restarted by the supervisor, mid-failover.
        (signal.SIGTERM, PRIVATE, r"^started beat-\d pid \d+ \(restarted"),
    ],
    ids=["sigint", "sigterm-private-filesystem"],
)
def test_interrupted_demo_cleans_up_everything(
    procs: ProcessGroup, pg_admin_url: str, sig: signal.Signals, options: tuple[str, ...], when: str
) -> None:
    spawn_demo(procs, pg_admin_url, *options)
    skip_without_private_cluster(wait_for_output(procs, rf"{when}|^demo: error", timeout=90))
    procs.signal("demo", sig)
    code = procs.wait("demo", timeout=40)
    output = procs.log("demo")
    assert code == 128 + sig, output[-4000:]
    assert f"{sig.name}: stopping and cleaning up" in output
    assert "summary" not in output
    assert_nothing_left(output, pg_admin_url)
