"""Outcomes recorded by real ``celery worker`` processes (prefork), switched on the
configuration-only way (``imports = ["pg_beat.worker"]``, ``PG_BEAT_TRACK_RUNS``): success,
failure (error cut), retry then success, revoke, and a task without pg_beat's headers."""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import pytest
from support import pg, worker_side
from support.procs import ProcessGroup
from support.waiting import wait_for

from pg_beat.store.runs import ERROR_CHARS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def queue() -> str:
    return f"wt-{secrets.token_hex(4)}"


def test_outcomes_on_run_rows_executions_and_health(
    db_url: str, redis_url: str, procs: ProcessGroup, tmp_path: Path, queue: str
) -> None:
    effects = tmp_path / "effects"
    ids: dict[str, tuple[int, str]] = {}
    for name, task in (("ok", "wt.ok"), ("bad", "wt.fail"), ("flaky", "wt.flaky")):
        schedule_id = worker_side.make_schedule(db_url, name, task)
        ids[name] = (
            schedule_id,
            worker_side.make_run(db_url, schedule_id, name, worker_side.due()),
        )
    worker_side.start_worker(
        procs,
        "w1",
        broker_url=redis_url,
        queue=queue,
        database_url=db_url,
        effects=effects,
        pool="prefork",
        concurrency=2,
    )
    wait_for(lambda: worker_side.wait_ready(procs, "w1"), 30, "worker ready")
    app = worker_side.sender(redis_url)
    for name, task in (("ok", "wt.ok"), ("bad", "wt.fail"), ("flaky", "wt.flaky")):
        worker_side.send_tick(app, queue, task, ids[name][1], name, worker_side.due())
    plain = f"plain-{secrets.token_hex(4)}"
    app.send_task("wt.ok", (), task_id=plain, queue=queue)

    def finished(name: str) -> bool:
        return worker_side.run_row(db_url, ids[name][1])["finished_at"] is not None

    for name in ids:
        wait_for(lambda n=name: finished(n), 30, f"{name} finished")

    ok = worker_side.run_row(db_url, ids["ok"][1])
    assert ok["outcome"] == "success" and ok["attempts"] == 1 and ok["runtime"] >= 0
    assert ok["worker"].endswith(tuple(f":{pid}" for pid in _pids(effects, ids["ok"][1])))
    assert ok["started_at"] <= ok["finished_at"]
    bad = worker_side.run_row(db_url, ids["bad"][1])
    assert bad["outcome"] == "failure"
    assert bad["outcome_error"].startswith("ValueError: boom")
    assert len(bad["outcome_error"]) == ERROR_CHARS
    flaky = worker_side.run_row(db_url, ids["flaky"][1])
    assert flaky["outcome"] == "success" and flaky["attempts"] == 2
    runs = worker_side.executions(db_url, ids["flaky"][1])
    assert [(e["attempt"], e["delivery"], e["outcome"]) for e in runs] == [
        (0, "first", "retry"),
        (1, "retry", "success"),
    ]
    assert runs[0]["error"] == "RuntimeError: not yet"
    assert [e["outcome"] for e in worker_side.executions(db_url, ids["bad"][1])] == ["failure"]

    healthy = worker_side.health(db_url, ids["ok"][0])
    assert healthy is not None and healthy["last_outcome"] == "success"
    assert healthy["consecutive_failures"] == 0 and healthy["last_success_at"] is not None
    failing = worker_side.health(db_url, ids["bad"][0])
    assert failing is not None and failing["consecutive_failures"] == 1
    assert failing["last_error"].startswith("ValueError: boom")

    # The task without pg_beat's headers ran and left nothing.
    wait_for(lambda: _pids(effects, plain), 30, "the plain task ran")
    with psycopg.connect(pg.libpq_url(db_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_beat_executions WHERE task_id = %s", (plain,)
        ).fetchone()
        assert row == (0,)
        # Each prefork child heartbeats its own row.
        workers = conn.execute("SELECT name FROM pg_beat_workers").fetchall()
    assert len(workers) >= 2
    procs.stop("w1")
    with psycopg.connect(pg.libpq_url(db_url), autocommit=True) as conn:
        stopped = conn.execute(
            "SELECT count(*) FROM pg_beat_workers WHERE stopped_at IS NOT NULL"
        ).fetchone()
    assert stopped == (len(workers),)


def test_revoked_before_start_and_terminated(
    db_url: str, redis_url: str, procs: ProcessGroup, tmp_path: Path, queue: str
) -> None:
    effects = tmp_path / "effects"
    schedule_id = worker_side.make_schedule(db_url, "long", "wt.ok")
    running = worker_side.make_run(db_url, schedule_id, "long", worker_side.due(60))
    queued = worker_side.make_run(db_url, schedule_id, "long", worker_side.due(30))
    worker_side.start_worker(
        procs,
        "w1",
        broker_url=redis_url,
        queue=queue,
        database_url=db_url,
        effects=effects,
        pool="prefork",
        concurrency=1,
    )
    wait_for(lambda: worker_side.wait_ready(procs, "w1"), 30, "worker ready")
    app = worker_side.sender(redis_url)
    worker_side.send_tick(app, queue, "wt.ok", running, "long", worker_side.due(60), args=(60,))
    wait_for(lambda: _pids(effects, running), 30, "the long task started")
    worker_side.send_tick(app, queue, "wt.ok", queued, "long", worker_side.due(30))
    app.control.revoke(queued)
    app.control.revoke(running, terminate=True)
    for task_id in (running, queued):
        wait_for(
            lambda t=task_id: worker_side.run_row(db_url, t)["outcome"] == "revoked",
            30,
            f"{task_id} revoked",
        )
    assert worker_side.run_row(db_url, running)["outcome_error"].startswith("terminated")
    assert [e["outcome"] for e in worker_side.executions(db_url, running)] == ["revoked"]
    assert worker_side.run_row(db_url, queued)["outcome_error"] == "revoked"
    assert worker_side.executions(db_url, queued) == []
    revoked = worker_side.health(db_url, schedule_id)
    assert revoked is not None and revoked["last_outcome"] == "revoked"
    assert revoked["consecutive_failures"] == 0


def _pids(effects: Path, task_id: str) -> list[str]:
    return [line[1] for line in worker_side.effects(effects) if line[0] == task_id]
