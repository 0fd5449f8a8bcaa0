"""The worker side under faults, with real ``celery worker`` processes:

- run once: a worker SIGKILLed mid-task under ``acks_late`` (RabbitMQ redelivers at once to
  a second worker, idle beside it); the redelivery waits until the first is known gone, runs, the
  first execution is recorded ``lost`` and the run ends ``success``;
- PostgreSQL stopped under a busy worker: no task fails or waits, one warning line for the
  outage, the drop counter rises (the recovery line reports it), and recording resumes.
"""

from __future__ import annotations

import re
import secrets
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
from support import pg, worker_side
from support.env import unavailable
from support.procs import ProcessGroup
from support.waiting import wait_for

from pg_beat import migrate

pytestmark = [pytest.mark.ha, pytest.mark.timeout(180)]

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
FAST_HEARTBEAT = {"PG_BEAT_WORKER_HEARTBEAT_INTERVAL": "0.5", "PG_BEAT_WORKER_GONE_AFTER": "2"}


@pytest.fixture
def rabbitmq_url() -> str:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        unavailable(f"RabbitMQ at 127.0.0.1:5672: {exc}")
    return RABBITMQ_URL


def ran(effects: Path, task_id: str, what: str) -> int:
    return sum(1 for line in worker_side.effects(effects) if line[0] == task_id and line[2] == what)


def test_sigkilled_mid_task_runs_again_on_redelivery(
    db_url: str, rabbitmq_url: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    queue, effects = f"wt-{secrets.token_hex(4)}", tmp_path / "effects"
    schedule_id = worker_side.make_schedule(db_url, "killed", "wt.ok")
    due = worker_side.due()
    task_id = worker_side.make_run(db_url, schedule_id, "killed", due)
    env = {"WORKER_ACKS_LATE": "1", "PG_BEAT_RUN_ONCE": "true", **FAST_HEARTBEAT}
    common = {"broker_url": rabbitmq_url, "queue": queue, "database_url": db_url}
    worker_side.start_worker(procs, "w1", effects=effects, env=env, **common)
    wait_for(lambda: worker_side.wait_ready(procs, "w1"), 30, "w1 ready")
    app = worker_side.sender(rabbitmq_url)
    worker_side.send_tick(app, queue, "wt.ok", task_id, "killed", due, args=(3.0,))
    wait_for(lambda: ran(effects, task_id, "start") == 1, 30, "first execution started")
    first = worker_side.run_row(db_url, task_id)["worker"]
    # A second worker is up and idle: RabbitMQ hands it the message the moment w1's connection
    # dies, long before anyone can know w1 is gone. It must wait for that, not call the
    # redelivery a duplicate.
    worker_side.start_worker(procs, "w2", effects=effects, env=env, **common)
    wait_for(lambda: worker_side.wait_ready(procs, "w2"), 30, "w2 ready")
    procs.signal("w1", signal.SIGKILL)
    procs.wait("w1", 10)
    wait_for(
        lambda: worker_side.run_row(db_url, task_id)["outcome"] == "success", 60, "redelivery ran"
    )
    assert ran(effects, task_id, "start") == 2 and ran(effects, task_id, "ran") == 1
    executions = worker_side.executions(db_url, task_id)
    assert [(e["delivery"], e["outcome"]) for e in executions] == [
        ("first", "lost"),
        ("redelivery", "success"),
    ]
    assert executions[0]["worker"] == first and executions[1]["worker"] != first
    row = worker_side.run_row(db_url, task_id)
    assert row["attempts"] == 2 and row["worker"] == executions[1]["worker"]


def test_postgres_stopped_under_a_busy_worker(
    private_cluster: pg.PrivateCluster, redis_url: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    url = private_cluster.url()
    migrate.upgrade(url)
    queue, effects = f"wt-{secrets.token_hex(4)}", tmp_path / "effects"
    schedule_id = worker_side.make_schedule(url, "busy", "wt.ok")
    worker_side.start_worker(
        procs,
        "w1",
        broker_url=redis_url,
        queue=queue,
        database_url=url,
        effects=effects,
        env={"PG_BEAT_RUN_ONCE": "true"},
    )
    wait_for(lambda: worker_side.wait_ready(procs, "w1"), 30, "worker ready")
    app = worker_side.sender(redis_url)

    def burst(count: int, offset: int, with_runs: bool = True) -> list[str]:
        """``count`` ticks due ``offset``.. seconds ago, with run rows (while the database is
        up) or without (while it is down: their outcomes are dropped anyway)."""
        sent, base = [], worker_side.due()
        for i in range(count):
            due = base - timedelta(seconds=offset + i)
            if with_runs:
                task_id = worker_side.make_run(url, schedule_id, "busy", due)
            else:
                task_id = f"outage-{secrets.token_hex(6)}"
            worker_side.send_tick(app, queue, "wt.ok", task_id, "busy", due)
            sent.append(task_id)
        return sent

    before = burst(20, 1000)
    wait_for(lambda: all(worker_side.run_row(url, t)["outcome"] for t in before), 30, "recorded")

    private_cluster.stop()
    started = time.monotonic()
    during = burst(300, 2000, with_runs=False)
    wait_for(lambda: all(ran(effects, t, "ran") for t in during), 60, "every task ran")
    elapsed = time.monotonic() - started
    # 300 no-op tasks on one solo worker: a claim or a write waiting on the dead database
    # (connect timeout 5 s) even once per second would show here.
    assert elapsed < 10, f"300 tasks took {elapsed:.1f}s with PostgreSQL down"
    log = procs.log("w1")
    runtimes = [
        float(x) for x in re.findall(r"wt\.ok\[outage-\w+\] succeeded in ([0-9.e-]+)s", log)
    ]
    assert len(runtimes) == len(during) and max(runtimes) < 0.5, max(runtimes)
    assert "Traceback" not in log and " raised unexpected" not in log
    assert len(re.findall("cannot reach the database", log)) == 1, log[-3000:]

    private_cluster.start()
    after = burst(5, 3000)
    wait_for(
        lambda: all(worker_side.run_row(url, t)["outcome"] == "success" for t in after),
        60,
        "recording resumed",
    )
    recovered = re.findall(r"reaches the database again \((\d+) outcomes dropped", procs.log("w1"))
    assert len(recovered) == 1 and int(recovered[0]) > 0
    assert len(re.findall("cannot reach the database", procs.log("w1"))) == 1
