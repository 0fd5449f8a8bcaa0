"""Health read cost at scale: the queries behind ``pg-beat status``, the metrics' task health
gauges and ``pg-beat schedules list`` over 100,000 schedules and a large run log.

    .venv/bin/python benchmarks/bench_health.py                       # 100k schedules, 2M runs
    .venv/bin/python benchmarks/bench_health.py --schedules 10000 --runs 200000 --explain

Seeds a fresh database: ``--schedules`` interval schedules (every minute; a tenth of them
last succeeded an hour ago, so overdue; a twentieth failing; four fifths tracked with a
health row) and ``--runs`` finished runs spread over the last week (the last hour holding
``--runs`` / 168 of them). Then times each read ``--repeat`` times, warm, and prints the
median and the maximum. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import create_database, drop_database, pg_url

from pg_beat import migrate, store
from pg_beat.config import Settings

DB = "pg_beat_bench_health"


def seed(url: str, schedules: int, runs: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds, next_run_at,
                                           last_due_at, last_run_at, created_at)
            SELECT 's-' || n, 'app.t', 'interval', 60, now() + interval '30 s',
                   now() - interval '30 s',
                   CASE WHEN n %% 10 = 0 THEN now() - interval '1 h' ELSE now() END,
                   now() - interval '30 d'
            FROM generate_series(1, %s) AS n
            """,
            (schedules,),
        )
        conn.execute(
            """
            INSERT INTO pg_beat_schedule_health (schedule_id, group_name, last_outcome,
                last_finished_at, last_success_at, consecutive_failures, last_error)
            SELECT id, group_name, CASE WHEN id % 20 = 0 THEN 'failure' ELSE 'success' END,
                   now(), CASE WHEN id % 10 = 0 THEN now() - interval '1 h' ELSE now() END,
                   CASE WHEN id % 20 = 0 THEN 3 ELSE 0 END,
                   CASE WHEN id % 20 = 0 THEN 'boom' END
            FROM pg_beat_schedules WHERE id % 5 <> 1
            """
        )
        conn.execute(
            """
            INSERT INTO pg_beat_runs (group_name, schedule_id, schedule_name, due_at, task_id,
                                      epoch, replica, status, claimed_at, sent_at, finished_at,
                                      outcome, runtime)
            SELECT 'default', 1 + n %% %s, 's-' || (1 + n %% %s),
                   now() - make_interval(secs => n * 604800.0 / %s), 'r-' || n, 1, 'r', 'sent',
                   now() - make_interval(secs => n * 604800.0 / %s),
                   now() - make_interval(secs => n * 604800.0 / %s), now(),
                   (ARRAY['success', 'success', 'success', 'failure', 'lost'])[1 + n %% 5],
                   (n %% 100) / 10.0
            FROM generate_series(1, %s) AS n
            """,
            (schedules, schedules, runs, runs, runs, runs),
        )
        conn.execute("VACUUM ANALYZE")


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--explain", action="store_true", help="Print the status query's plan.")
    parser.add_argument("--keep", action="store_true", help="Keep the database afterwards.")
    args = parser.parse_args()

    create_database(DB)
    try:
        migrate.upgrade(pg_url(DB))
        start = time.perf_counter()
        seed(pg_url(DB), args.schedules, args.runs)
        print(f"seeded {args.schedules} schedules, {args.runs} runs in "
              f"{time.perf_counter() - start:.1f}s")  # fmt: skip
        engine = store.connections.make_engine(
            Settings(database_url=pg_url(DB, "postgresql+psycopg")), "bench"
        )
        with engine.connect() as conn:
            reads: dict[str, Callable[[], Any]] = {
                "status/metrics: failing+overdue, worst 10": lambda: store.health.unhealthy(
                    conn, "default", 2.0, 10
                ),
                "metrics: runs finished by outcome, 1 h": lambda: store.health.outcome_counts(
                    conn, "default", 3600
                ),
                "schedules show: last 100 runtimes": lambda: store.health.recent_runtimes(conn, 7),
                "schedules list: health of every schedule": lambda: store.health.health_of_group(
                    conn, "default"
                ),
            }
            print(f"{'read':<46} {'median ms':>10} {'max ms':>8}  result")
            for name, fn in reads.items():
                median, worst, result = timed(fn, args.repeat)
                if isinstance(result, store.health.Unhealthy):
                    shown = f"failing {result.failing}, overdue {result.overdue}"
                elif isinstance(result, dict):
                    shown = f"{len(result)} keys"
                else:
                    shown = f"{len(result)} values"
                print(f"{name:<46} {median * 1000:>10.1f} {worst * 1000:>8.1f}  {shown}")
            if args.explain:
                print(store.health.explain_unhealthy(conn, "default", 2.0))
        engine.dispose()
    finally:
        if not args.keep:
            drop_database(DB)


if __name__ == "__main__":
    sys.exit(main())
