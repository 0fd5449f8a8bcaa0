"""A backlog published to a Redis of its own that stops answering (SIGSTOP) and resumes at
random points, as a stalled or failing-over Redis does: the test tier runs a few seeds, and
``benchmarks/bench_broker_chaos.py`` many, with the same code.

A run drives a real ``pg_beat.Scheduler`` in this process against real PostgreSQL and counts,
from the Redis queue itself, what became of every tick: failed (must be 0), missing (0), extra
copies (0: each tick is pushed once per task id, see ``pg_beat.publish.dedup``).
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from celery import Celery

from pg_beat.api import ScheduleManager
from pg_beat.scheduler import Scheduler
from support import pg
from support.procs import ProcessGroup
from support.waiting import wait_for


class RedisUnavailable(RuntimeError):
    """No redis-server on this machine."""


@dataclass
class ChaosResult:
    seed: int
    ticks: int
    stops: int
    stopped_for: float  # seconds Redis did not answer, in all
    seconds: float  # from the backlog's start until every tick was recorded
    failed: int
    missing: int
    extra_copies: int
    terms: int  # leader terms during the run: 1 is the lease kept throughout

    @property
    def ok(self) -> bool:
        return (self.failed, self.missing, self.extra_copies, self.terms) == (0, 0, 0, 1)


def _sql(url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def _count(url: str, statement: str) -> int:
    return int(_sql(url, statement)[0][0])


def run(
    db_url: str, procs: ProcessGroup, seed: int, *, ticks: int = 400, stops: int = 3
) -> ChaosResult:
    """One run: ``ticks`` schedules a backlog behind, ``stops`` stalls of 0.2-2.5 s each."""
    server = shutil.which("redis-server")
    if server is None:
        raise RedisUnavailable("redis-server (Debian package redis-server)")
    rng = random.Random(seed)
    port = pg.free_port()
    name = f"redis-chaos-{seed}-{secrets.token_hex(2)}"
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs.spawn(name, argv)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, 10, "the run's own Redis")
    queue = "pg_beat_chaos"
    app = Celery(f"chaos_{secrets.token_hex(3)}", broker=f"redis://127.0.0.1:{port}/0")
    app.conf.update(
        pg_beat_database_url=db_url,
        pg_beat_replica_name=f"chaos-{seed}",
        pg_beat_lease_ttl=3.0,
        pg_beat_heartbeat_interval=0.2,
        pg_beat_hang_timeout=30.0,
        task_default_queue=queue,
        beat_max_loop_interval=1,
    )
    names = [f"c{i:04d}" for i in range(ticks)]
    with ScheduleManager(db_url) as api:
        for schedule in names:
            api.create(schedule, "t.chaos", every=3600)
    done = "SELECT count(*) FROM pg_beat_runs WHERE status IN ('sent', 'failed')"
    stopped_for = 0.0
    scheduler = Scheduler(app)
    try:
        deadline = time.monotonic() + 10
        while scheduler.state.epoch is None:  # ticks warm the broker connection
            assert time.monotonic() < deadline, "no lease"
            scheduler.tick()

        def chaos() -> None:
            nonlocal stopped_for
            for _ in range(stops):
                time.sleep(rng.uniform(0.0, 0.25))  # a random point of what is left
                pause = rng.uniform(0.2, 2.5)
                procs.signal(name, signal.SIGSTOP)
                time.sleep(pause)
                procs.signal(name, signal.SIGCONT)
                stopped_for += pause

        _sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = now() - interval '90 minutes'")
        started = time.monotonic()
        stalls = threading.Thread(target=chaos, name="chaos", daemon=True)
        stalls.start()
        deadline = started + 120
        while _sql(db_url, done) != [(ticks,)] or stalls.is_alive():
            assert time.monotonic() < deadline, _sql(
                db_url, "SELECT status, count(*) FROM pg_beat_runs GROUP BY status"
            )
            scheduler.tick()
        seconds = time.monotonic() - started
    finally:
        procs.signal(name, signal.SIGCONT)
        scheduler.close()
        app.close()
    messages = [json.loads(m) for m in client.lrange(queue, 0, -1)]
    client.close()
    procs.stop(name)
    copies = Counter(m["headers"]["id"] for m in messages)
    sent = {str(task_id) for (task_id,) in _sql(db_url, "SELECT task_id FROM pg_beat_runs")}
    failed = _count(db_url, "SELECT count(*) FROM pg_beat_runs WHERE status = 'failed'")
    return ChaosResult(
        seed=seed,
        ticks=ticks,
        stops=stops,
        stopped_for=round(stopped_for, 2),
        seconds=round(seconds, 2),
        failed=failed,
        missing=len(sent - set(copies)),
        extra_copies=sum(copies.values()) - len(copies) + len(set(copies) - sent),
        terms=_count(db_url, "SELECT count(*) FROM pg_beat_leader_terms"),
    )
