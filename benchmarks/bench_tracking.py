"""What recording outcomes costs a worker: a no-op task pushed N times into Redis with pg_beat's
headers and a run row each, consumed by one real ``celery worker`` process (solo pool: every
task on one thread, so nothing hides the cost; the writer thread shares its GIL), with
tracking off, on, and on with run once, in one run, side by side; then the run rows checked.

    .venv/bin/python benchmarks/bench_tracking.py            # N = 20000, 2 rounds
    .venv/bin/python benchmarks/bench_tracking.py -n 2000 --rounds 1

Throughput is N over the time between a first and a last marker task, which the solo worker
runs in queue order around the N; the worker's CPU per task (its threads included, from /proc)
is printed beside it, being less sensitive than throughput to whatever else the machine runs.
Each mode gets its own schedule and N fresh run rows.
Needs PostgreSQL on 127.0.0.1:5432 (user postgres) and Redis on 127.0.0.1:6379 (a queue of
its own in database 0; nothing is flushed). Creates and drops database
``pg_beat_bench_tracking_<pid>``; kills only the worker processes it started.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from _common import ROOT, create_database, drop_database, pg_url
from celery import Celery

from pg_beat import migrate
from pg_beat.publish.ticks import task_id_for

REDIS = "redis://127.0.0.1:6379/0"
GROUP = "default"
MODES = {
    "off": {"PG_BEAT_TRACK_RUNS": "false", "PG_BEAT_RUN_ONCE": "false"},
    "on": {"PG_BEAT_TRACK_RUNS": "true", "PG_BEAT_RUN_ONCE": "false"},
    "run_once": {"PG_BEAT_TRACK_RUNS": "true", "PG_BEAT_RUN_ONCE": "true"},
}
TARGET = 0.05  # tracking may cost at most 5 % throughput


def make_runs(url: str, schedule: str, n: int) -> list[tuple[str, datetime]]:
    base = datetime(2030, 1, 1, tzinfo=timezone.utc)
    ticks = [(base + timedelta(seconds=i)) for i in range(n)]
    rows = [(task_id_for(GROUP, schedule, due), due) for due in ticks]
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds) "
            "VALUES (%s, 'wt.noop', 'interval', 1) RETURNING id",
            (schedule,),
        ).fetchone()
        assert row is not None
        with conn.cursor().copy(
            "COPY pg_beat_runs (group_name, schedule_id, schedule_name, due_at, task_id, epoch, "
            "replica, status, sent_at) FROM STDIN"
        ) as copy:
            for task_id, due in rows:
                copy.write_row((GROUP, row[0], schedule, due, task_id, 1, "bench", "sent", due))
    return rows


def push(app: Celery, queue: str, schedule: str, rows: list[tuple[str, datetime]], marks: Path):
    app.send_task("wt.mark", (str(marks),), queue=queue)
    with app.producer_or_acquire() as producer:
        for task_id, due in rows:
            app.send_task(
                "wt.noop",
                (),
                task_id=task_id,
                queue=queue,
                producer=producer,
                headers={
                    "pg_beat_schedule": schedule,
                    "pg_beat_due_at": due.isoformat().replace("+00:00", "Z"),
                    "pg_beat_epoch": 1,
                    "pg_beat_claim_epoch": 1,
                    "pg_beat_replica": "bench",
                    "pg_beat_group": GROUP,
                },
            )
    app.send_task("wt.mark", (str(marks),), queue=queue)


def run_mode(mode: str, url: str, n: int, workdir: Path, label: str) -> dict[str, float]:
    schedule = f"bench-{label}"
    rows = make_runs(url.replace("postgresql+psycopg", "postgresql"), schedule, n)
    queue = f"bench-tracking-{os.getpid()}-{label}"
    marks = workdir / f"{label}.marks"
    app = Celery("bench_tracking_sender", broker=REDIS, set_as_current=False)
    push(app, queue, schedule, rows, marks)
    log = (workdir / f"{label}.log").open("ab")
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}",
        "WORKER_BROKER_URL": REDIS,
        "WORKER_QUEUE": queue,
        "WORKER_PREFETCH": "64",
        "PG_BEAT_DATABASE_URL": url,
        **MODES[mode],
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "support.worker_app", "worker", "--pool=solo",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        cpu_start = None
        while not marks.exists() or len(marks.read_text().split()) < 2:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker for {label} failed: see {log.name}")
            if cpu_start is None and marks.exists():
                cpu_start = cpu_seconds(worker.pid)
            time.sleep(0.01)
        first, last = (float(x) for x in marks.read_text().split())
        lag = settle(url, schedule, n) if mode != "off" else 0.0
        cpu = cpu_seconds(worker.pid) - (cpu_start or 0.0)
    finally:
        worker.terminate()
        worker.wait(30)
    recorded = check(url, schedule)
    warnings = [
        line for line in (workdir / f"{label}.log").read_text().splitlines() if "pg_beat" in line
    ]
    for line in warnings[:5]:
        print(f"  worker log: {line}")
    return {
        "lag": lag,
        "seconds": last - first,
        "throughput": n / (last - first),
        "cpu_us": cpu / n * 1e6,
        **recorded,
    }


def settle(url: str, schedule: str, n: int) -> float:
    """Seconds after the last task until every outcome is written, or nothing more comes for
    3 s (what was dropped stays missing): the writer's lag behind the tasks."""
    started = time.monotonic()
    seen, changed = -1, time.monotonic()
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as c:
        while time.monotonic() - changed < 3:
            row = c.execute(
                "SELECT count(*) FROM pg_beat_runs WHERE schedule_name = %s "
                "AND finished_at IS NOT NULL",
                (schedule,),
            ).fetchone()
            count = row[0] if row else 0
            if count >= n:
                break
            if count != seen:
                seen, changed = count, time.monotonic()
            time.sleep(0.05)
    return time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check(url: str, schedule: str) -> dict[str, float]:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE outcome = 'success' AND attempts = 1 "
            "AND finished_at IS NOT NULL), count(*) FILTER (WHERE duplicates > 0), "
            "(SELECT count(*) FROM pg_beat_executions e WHERE e.task_id IN "
            "(SELECT task_id FROM pg_beat_runs WHERE schedule_name = %s)) "
            "FROM pg_beat_runs WHERE schedule_name = %s",
            (schedule, schedule),
        ).fetchone()
    assert row is not None
    return {"recorded": row[0], "duplicates": row[1], "executions": row[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="tasks per mode")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three modes")
    args = parser.parse_args()
    database = f"pg_beat_bench_tracking_{os.getpid()}"
    create_database(database)
    url = pg_url(database, "postgresql+psycopg")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        migrate.upgrade(url)
        with tempfile.TemporaryDirectory(prefix="bench_tracking_") as tmp:
            for round_ in range(args.rounds):
                for mode in MODES:
                    figures = run_mode(mode, url, args.n, Path(tmp), f"{mode}-{round_}")
                    results[mode].append(figures)
                    print(
                        f"round {round_ + 1} {mode:>8}: {figures['throughput']:8.0f} tasks/s "
                        f"({figures['seconds']:.2f}s), writer lag {figures['lag']:.1f}s, "
                        f"worker CPU {figures['cpu_us']:.0f} us/task, "
                        f"run rows recorded {figures['recorded']:.0f}"
                        f"/{args.n}, executions {figures['executions']:.0f}, "
                        f"duplicates {figures['duplicates']:.0f}",
                        flush=True,
                    )
    finally:
        drop_database(database)
    base = statistics.median(r["throughput"] for r in results["off"])
    print(f"\nno-op task, one solo worker, N = {args.n}, median of {args.rounds} round(s):")
    base_cpu = statistics.median(r["cpu_us"] for r in results["off"])
    print(
        f"{'mode':>9} | {'tasks/s':>8} | {'vs off':>7} | {'CPU us/task':>11} | {'vs off':>7} | "
        "run rows recorded"
    )
    for mode, runs in results.items():
        tput = statistics.median(r["throughput"] for r in runs)
        cpu = statistics.median(r["cpu_us"] for r in runs)
        recorded = min(r["recorded"] for r in runs)
        print(
            f"{mode:>9} | {tput:8.0f} | {tput / base - 1:+7.1%} | {cpu:11.0f} | "
            f"{cpu / base_cpu - 1:+7.1%} | {recorded:.0f}/{args.n}"
        )
    on = statistics.median(r["throughput"] for r in results["on"])
    verdict = "met" if 1 - on / base < TARGET else "NOT met"
    print(f"target: tracking costs under {TARGET:.0%} throughput: {verdict}")


if __name__ == "__main__":
    main()
