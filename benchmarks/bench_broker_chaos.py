"""Broker chaos: a backlog published while a Redis of the run's own stalls at random points, over
many seeds. Each seed is one ``tests/support/chaos.run`` (the code the integration test runs for
3 seeds): a real ``pg_beat.Scheduler`` in this process, ``--ticks`` schedules a backlog behind,
``--stops`` SIGSTOP/SIGCONT stalls of 0.2-2.5 s at random points of the drain.

    .venv/bin/python benchmarks/bench_broker_chaos.py                 # 20 seeds
    .venv/bin/python benchmarks/bench_broker_chaos.py --seeds 5 --first-seed 100

Per seed it prints what became of every tick, counted from the Redis queue itself; the exit
status is 1 when any run is not ok (a tick failed, missing or pushed twice, or the lease changed
hands), 2 when a run could not be made at all. See benchmarks/README.md ("Broker chaos").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _common import revision  # noqa: E402
from support import chaos  # noqa: E402
from support.pg import create_database, database_url, drop_database  # noqa: E402
from support.procs import ProcessGroup  # noqa: E402

from pg_beat import migrate  # noqa: E402

COLUMNS = [
    ("seed", 6),
    ("ticks", 6),
    ("stops", 6),
    ("stalled s", 10),
    ("drain s", 8),
    ("failed", 7),
    ("missing", 8),
    ("extra copies", 13),
    ("terms", 6),
    ("ok", 4),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="how many runs (default 20)")
    parser.add_argument("--first-seed", type=int, default=1, help="seed of the first run")
    parser.add_argument("--ticks", type=int, default=400, help="backlog per run (default 400)")
    parser.add_argument("--stops", type=int, default=3, help="Redis stalls per run (default 3)")
    parser.add_argument(
        "--admin-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="server where the benchmark may CREATE DATABASE (127.0.0.1 only)",
    )
    parser.add_argument("--json", dest="json_path", help="also write every run to this file")
    parser.add_argument(
        "--workdir", help="Redis and pg_beat logs go here (default: a new temp dir, kept)"
    )
    args = parser.parse_args(argv)
    if "127.0.0.1" not in args.admin_url and "localhost" not in args.admin_url:
        parser.error("--admin-url must point at 127.0.0.1")
    if args.seeds < 1 or args.ticks < 1 or args.stops < 0:
        parser.error("--seeds and --ticks must be positive, --stops at least 0")
    return args


def row(cells: list[str]) -> str:
    return "  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True))


def cells(result: chaos.ChaosResult) -> list[str]:
    return [
        str(result.seed),
        str(result.ticks),
        str(result.stops),
        f"{result.stopped_for:.2f}",
        f"{result.seconds:.2f}",
        str(result.failed),
        str(result.missing),
        str(result.extra_copies),
        str(result.terms),
        "ok" if result.ok else "FAIL",
    ]


def summary(results: list[chaos.ChaosResult], errors: dict[int, str]) -> str:
    runs = len(results) + len(errors)
    good = sum(1 for r in results if r.ok)
    if not results:
        return f"{good}/{runs} runs ok"
    drains = sorted(r.seconds for r in results)
    return (
        f"{good}/{runs} runs ok; {sum(r.ticks for r in results):,} ticks, "
        f"{sum(r.stops for r in results)} stalls, {sum(r.stopped_for for r in results):.1f} s "
        f"stalled; drain median {statistics.median(drains):.2f} s, max {drains[-1]:.2f} s; "
        f"failed {sum(r.failed for r in results)}, missing {sum(r.missing for r in results)}, "
        f"extra copies {sum(r.extra_copies for r in results)}, "
        f"runs whose lease changed hands {sum(1 for r in results if r.terms != 1)}"
        + (f"; {len(errors)} run(s) broke off" if errors else "")
    )


def run_seed(
    args: argparse.Namespace, procs: ProcessGroup, template: str, seed: int
) -> chaos.ChaosResult:
    """One run in a database cloned from the migrated template, dropped afterwards."""
    name = f"pg_beat_bench_{os.getpid()}_chaos_{seed}"
    create_database(args.admin_url, name, template=template)
    try:
        url = database_url(args.admin_url, name)
        return chaos.run(url, procs, seed, ticks=args.ticks, stops=args.stops)
    finally:
        drop_database(args.admin_url, name)


def stop_on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before, measured = time.monotonic(), os.getloadavg(), revision()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pg_beat_chaos_"))
    workdir.mkdir(parents=True, exist_ok=True)
    # pg_beat's own records (the outage's start and end, any error) go to a file, not the table.
    logging.basicConfig(
        filename=workdir / "pg_beat.log",
        level=logging.INFO,
        format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s",
    )
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop_on_signal)
    template = f"pg_beat_bench_{os.getpid()}_chaos_template"
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(
        f"Broker chaos: {args.seeds} seeds from {args.first_seed}, {args.ticks} ticks a backlog "
        f"behind, {args.stops} Redis stalls of 0.2-2.5 s each; logs in {workdir}",
        flush=True,
    )
    print(row([name for name, _ in COLUMNS]), flush=True)
    print(row(["-" * width for _, width in COLUMNS]), flush=True)
    results: list[chaos.ChaosResult] = []
    errors: dict[int, str] = {}
    status = 0
    procs = ProcessGroup(log_dir=workdir)
    try:
        create_database(args.admin_url, template)
        migrate.upgrade(database_url(args.admin_url, template))
        for seed in seeds:
            try:
                result = run_seed(args, procs, template, seed)
            except chaos.RedisUnavailable as exc:
                print(f"cannot run: {exc}", flush=True)
                return 2
            except Exception as exc:  # a run that broke off is reported, and the next one runs
                errors[seed] = f"{type(exc).__name__}: {exc}"
                print(f"{seed:>6}  broke off: {errors[seed][:300]}", flush=True)
                continue
            results.append(result)
            print(row(cells(result)), flush=True)
    except KeyboardInterrupt:
        print("interrupted: Redis stopped, databases dropped; the runs so far follow", flush=True)
        status = 130
    finally:
        procs.stop_all()
        drop_database(args.admin_url, template)
    print(summary(results, errors))
    load = " -> ".join("/".join(f"{v:.2f}" for v in avg) for avg in (load_before, os.getloadavg()))
    print(
        f"pg_beat {measured}; wall time {(time.monotonic() - started) / 60:.1f} min; "
        f"load average {load}"
    )
    if revision() != measured:
        print(
            f"note: the checkout moved on to {revision()} during the run; the runs used the "
            "pg_beat this process imported at the start"
        )
    if args.json_path:
        data = {
            "revision": measured,
            "options": vars(args),
            "runs": [{**asdict(r), "ok": r.ok} for r in results],
            "errors": {str(k): v for k, v in errors.items()},
        }
        Path(args.json_path).write_text(json.dumps(data, indent=2))
    if status:
        return status
    return 0 if results and not errors and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
