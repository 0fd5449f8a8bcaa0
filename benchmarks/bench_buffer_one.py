"""buffer_one end to end, with real processes: how long after a task ends does the tick that
waited for it start on the worker?

    .venv/bin/python benchmarks/bench_buffer_one.py               # 60 s, about 150 rounds
    .venv/bin/python benchmarks/bench_buffer_one.py --seconds 20

A real ``celery beat -S pg_beat:Scheduler`` and a real ``celery worker`` (solo pool, run
tracking on) with the app of the acceptance tests (tests/acceptance/outcomes_app.py): one
schedule every 0.1 s under ``buffer_one`` whose task takes 0.3 s, so a tick is always held
while the previous run goes on. The task records its own start and end in a table (one
database clock for both); the gap from one execution's end to the next one's start is the
whole path: the worker's outcome write (urgent, no batching wait) and its ``NOTIFY``, the
leader's wake-up and fenced claim, the publish, Redis, and the worker taking the message.
Target (issue 16): p99 under 50 ms from a task's end to the next send; this measures to the
next START, later than the send. Also checked: no two executions overlap, every tick is
recorded sent or skipped.

Creates and drops ``pg_beat_bench_buffer_one_<pid>``; a Redis queue of its own in database 0
(deleted at the end); stops exactly the two processes it started, by PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import psycopg
import redis
from _common import ROOT, create_database, drop_database, percentile, pg_url

from pg_beat import migrate

APP_DIR = ROOT / "tests" / "acceptance"
REDIS = "redis://127.0.0.1:6379/0"
CELERY = [sys.executable, "-m", "celery", "-A", "outcomes_app"]
TARGET_MS = 50.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run")
    args = parser.parse_args()

    database = f"pg_beat_bench_buffer_one_{os.getpid()}"
    queue = f"pg_beat_bench_buffer_one_{os.getpid()}"
    create_database(database)
    url = pg_url(database)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        migrate.upgrade(pg_url(database, "postgresql+psycopg"))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE oc_executions (id bigserial PRIMARY KEY, task_id text NOT NULL, "
                "schedule text, pid int, started_at timestamptz NOT NULL "
                "DEFAULT clock_timestamp(), finished_at timestamptz)"
            )
            conn.execute(
                "INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds, kwargs, "
                "overlap_policy) VALUES ('held', 'oc.work', 'interval', 0.1, "
                "'{\"seconds\": 0.3}', 'buffer_one')"
            )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(APP_DIR), str(ROOT)]),
            "OC_BROKER_URL": REDIS,
            "OC_QUEUE": queue,
            "OC_DATABASE_URL": url,
            "PG_BEAT_DATABASE_URL": url,
        }
        with tempfile.TemporaryDirectory() as tmp:
            log = open(Path(tmp) / "procs.log", "wb")
            worker = [*CELERY, "worker", "--pool", "solo", "-Q", queue, "-l", "warning"]
            worker += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            beat = [*CELERY, "beat", "-S", "pg_beat:Scheduler", "-l", "warning"]
            beat += ["-s", str(Path(tmp) / "schedule")]
            for argv in (worker, beat):
                procs.append(subprocess.Popen(argv, env=env, cwd=tmp, stdout=log, stderr=log))
            time.sleep(args.seconds)
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(30)
            log.close()
        with psycopg.connect(url, autocommit=True) as conn:
            done = conn.execute(
                "SELECT started_at, finished_at FROM oc_executions WHERE finished_at IS NOT "
                "NULL ORDER BY started_at"
            ).fetchall()
            statuses = dict(
                conn.execute("SELECT status, count(*) FROM pg_beat_runs GROUP BY 1").fetchall()
            )
            reasons = conn.execute(
                "SELECT count(*) FILTER (WHERE reason LIKE 'buffered:%%'), "
                "count(*) FILTER (WHERE reason LIKE 'overlap:%%') FROM pg_beat_runs"
            ).fetchone()
        gaps = [(b[0] - a[1]).total_seconds() * 1000 for a, b in pairwise(done)]
        overlaps = sum(1 for gap in gaps if gap < 0)
        steady = gaps[1:]  # the first is the start-up
        p50, p99 = percentile(steady, 50), percentile(steady, 99)
        print(f"buffer_one, real beat + solo worker, {args.seconds:g} s, {len(done)} executions")
        print(
            f"  task end -> next task start: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"max {max(steady):.1f} ms (target: p99 < {TARGET_MS:g} ms to the send)"
        )
        print(
            f"  runs by status: {statuses}; sent with a 'buffered:' reason {reasons[0]}, "
            f"skipped for overlap {reasons[1]}; overlapping executions {overlaps}"
        )
        ok = overlaps == 0 and p99 < TARGET_MS and set(statuses) <= {"sent", "skipped", "claimed"}
        print("  ok" if ok else "  NOT ok")
        return 0 if ok else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        client = redis.Redis.from_url(REDIS)
        client.delete(queue)
        client.close()
        drop_database(database)


if __name__ == "__main__":
    sys.exit(main())
