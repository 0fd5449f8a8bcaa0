"""Scheduler benchmark: pg_beat side by side with Celery's default PersistentScheduler, RedBeat
and sqlalchemy-celery-beat, at 1k, 10k and 100k schedules.

    .venv/bin/python benchmarks/bench_scheduler.py --quick          # smoke run, under a minute
    .venv/bin/python benchmarks/bench_scheduler.py --json out.json  # the full run

Each measurement runs in a fresh child process (this script with ``--child``), so start-up and
memory figures do not contaminate each other; the parent seeds databases and Redis before
starting a child and removes them after. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from _adapters import ADAPTERS, Adapter, EditNotSupported
from _common import (
    Layout,
    Recorder,
    ResultFile,
    beside_loop,
    finish,
    flush_redis,
    log_line,
    percentile,
    quiet_layout,
    rss_kib,
    run_and_report,
    run_child,
)
from _report import render_report

HERE = Path(__file__).resolve()


# --- options -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="schedule counts, e.g. 1000,10000,100000")
    parser.add_argument("--quick", action="store_true", help="small sizes, short caps (< 60 s)")
    parser.add_argument(
        "--schedulers",
        default=",".join(ADAPTERS),
        help=f"comma-separated subset of {','.join(ADAPTERS)}",
    )
    parser.add_argument("--json", help="write every result to this JSON file")
    parser.add_argument("--redis-db", type=int, default=14, help="Redis database number (flushed)")
    parser.add_argument("--edits", type=int, help="edits per run (median reported)")
    parser.add_argument("--edit-cap", type=float, help="seconds to wait for an edit's publish")
    parser.add_argument("--burst", type=int, help="schedules due at the same instant")
    parser.add_argument("--burst-cap", type=float, help="seconds to wait for a burst")
    parser.add_argument("--lateness-count", type=int, help="interval schedules for lateness")
    parser.add_argument("--lateness-interval", type=float, help="their interval, seconds")
    parser.add_argument("--lateness-cap", type=float, help="wait after the window, seconds")
    parser.add_argument("--idle-budget", type=float, help="seconds of idle ticks to average")
    parser.add_argument("--child-timeout", type=float, help="kill a child after this many s")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    full = {
        "sizes": "1000,10000,100000",
        "edits": 5,
        "edit_cap": 30.0,
        "burst": 2000,
        "burst_cap": 30.0,
        "lateness_count": 10000,
        "lateness_interval": 20.0,
        "lateness_cap": 30.0,
        "idle_budget": 2.0,
        "child_timeout": 600.0,
    }
    quick = {
        "sizes": "300",
        "edits": 2,
        "edit_cap": 1.5,
        "burst": 300,
        "burst_cap": 2.0,
        "lateness_count": 400,
        "lateness_interval": 2.0,
        "lateness_cap": 1.5,
        "idle_budget": 0.2,
        "child_timeout": 30.0,
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    args.schedulers = [s for s in args.schedulers.split(",") if s]
    unknown = set(args.schedulers) - set(ADAPTERS)
    if unknown:
        parser.error(f"unknown scheduler(s): {', '.join(sorted(unknown))}")
    return args


# --- child process -------------------------------------------------------------------------


def service_loop(adapter: Adapter) -> None:
    """What celery.beat.Service.start does: tick, sleep what tick asked for, sync when due."""
    sched = adapter.sched
    while True:
        interval = adapter.tick()
        if interval and interval > 0:
            time.sleep(interval)
            if sched.should_sync():
                sched._do_sync()


def measure_idle(adapter: Adapter, budget: float) -> dict[str, Any]:
    durations: list[float] = []
    deadline = time.perf_counter() + budget
    while len(durations) < 3 or (time.perf_counter() < deadline and len(durations) < 1000):
        started = time.perf_counter()
        adapter.idle_tick()
        durations.append(time.perf_counter() - started)
    return {
        "idle_tick": statistics.fmean(durations),
        "idle_tick_median": statistics.median(durations),
        "idle_ticks": len(durations),
    }


def measure_edits(
    adapter: Adapter, layout: Layout, recorder: Recorder, spec: dict[str, Any]
) -> dict[str, Any]:
    latencies: list[float | None] = []
    time.sleep(spec["settle"])  # let the loop reach its sleep
    for k in range(spec["edits"]):
        index = layout.count - 1 - k
        try:
            stamp = adapter.edit(index, layout)
        except EditNotSupported:
            return {"edit": "restart required"}
        published = recorder.published_after(layout.name(index), stamp, spec["edit_cap"])
        latencies.append(None if published is None else published - stamp)
        if published is None:
            break  # one miss of the cap says enough
        time.sleep(spec["settle"])
    return {"edit_latencies": latencies, "edit_cap": spec["edit_cap"]}


def child_main_run(adapter: Adapter, layout: Layout, spec: dict[str, Any], out: ResultFile) -> None:
    app = adapter.make_app(layout)
    gc.collect()
    baseline = rss_kib()
    recorder = Recorder()
    parts = adapter.start(app, recorder)
    out.put(startup=sum(parts.values()), startup_parts=parts, baseline_kib=baseline)
    out.put(**measure_idle(adapter, spec["idle_budget"]))
    gc.collect()
    rss = rss_kib()
    out.put(memory_kib=rss - baseline, rss_kib=rss)
    adapter.warm_up()
    beside_loop(
        lambda: service_loop(adapter),
        lambda: out.put(**measure_edits(adapter, layout, recorder, spec)),
        out,
    )


def start_recording(adapter: Adapter, layout: Layout, out: ResultFile) -> tuple[Recorder, float]:
    """Start the scheduler with a recorder hooked in; return it and when it was ready."""
    recorder = Recorder()
    parts = adapter.start(adapter.make_app(layout), recorder)
    ready = time.time()
    out.put(startup=sum(parts.values()))
    adapter.warm_up()
    return recorder, ready


def child_burst(adapter: Adapter, layout: Layout, spec: dict[str, Any], out: ResultFile) -> None:
    recorder, ready = start_recording(adapter, layout, out)

    def driver() -> None:
        names = {layout.name(i) for i in range(layout.burst)}
        begin = max(layout.burst_at, ready)
        complete = recorder.wait_all(names, until=begin + spec["burst_cap"])
        published = sorted(recorder.first[n][1] for n in names if n in recorder.first)
        end = published[-1] if complete else time.time()
        out.put(
            burst_expected=len(names),
            burst_count=len(published),
            burst_seconds=end - begin,
            burst_rate=len(published) / (end - begin) if end > begin else math.nan,
            burst_first_lag=(published[0] - layout.burst_at) if published else None,
            burst_ready_late=max(0.0, ready - layout.burst_at),
            burst_cap=spec["burst_cap"],
        )

    beside_loop(lambda: service_loop(adapter), driver, out)


def child_lateness(adapter: Adapter, layout: Layout, spec: dict[str, Any], out: ResultFile) -> None:
    recorder, ready = start_recording(adapter, layout, out)

    def driver() -> None:
        names = {layout.name(i) for i in range(layout.count)}
        recorder.wait_all(names, until=layout.start + layout.spread + spec["lateness_cap"])
        out.put(**lateness_stats(layout, recorder, ready, spec["lateness_cap"]))

    beside_loop(lambda: service_loop(adapter), driver, out)


def lateness_stats(layout: Layout, recorder: Recorder, ready: float, cap: float) -> dict[str, Any]:
    """Lateness of each schedule's first publish (``inf`` if it never came)."""
    lateness: list[float] = []
    offsets: list[float] = []
    with recorder.lock:
        first = dict(recorder.first)
    for i in range(layout.count):
        seen = first.get(layout.name(i))
        if seen is None or seen[0] is None:
            lateness.append(math.inf)
            continue
        due, published = seen
        lateness.append(published - due)
        offsets.append(abs(due - layout.first_due(i)))
    finite = [v for v in lateness if math.isfinite(v)]
    return {
        "lateness_expected": layout.count,
        "lateness_published": len(finite),
        "lateness_p50": percentile(lateness, 50),
        "lateness_p90": percentile(lateness, 90),
        "lateness_p99": percentile(lateness, 99),
        "lateness_max": max(lateness),
        "lateness_mean": statistics.fmean(finite) if finite else None,
        "lateness_ready_late": max(0.0, ready - layout.start),
        "lateness_due_offset_max": max(offsets) if offsets else None,
        "lateness_rate": layout.count / layout.spread,
        "lateness_cap": cap,
    }


def child_ceiling(spec: dict[str, Any], out: ResultFile) -> None:
    """How fast one kombu producer publishes send_task() messages to Redis on this machine."""
    from _adapters import base_app
    from _common import TASK

    app = base_app(spec["redis_db"])
    connection = app.connection_for_write()
    connection.ensure_connection()
    producer = app.amqp.Producer(connection, auto_declare=False)
    app.send_task(TASK, [0], producer=producer)  # declare, connect
    count, rates = spec["count"], []
    for _ in range(3):  # best of three: the machine is shared with PostgreSQL and Redis
        started = time.perf_counter()
        for i in range(count):
            app.send_task(TASK, [i], producer=producer)
        rates.append(count / (time.perf_counter() - started))
    out.put(ceiling_rate=max(rates), ceiling_rates=rates, ceiling_count=count)


def child(spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = ResultFile(spec["out"])
    out.put(pid=os.getpid())
    try:
        if spec["kind"] == "ceiling":
            child_ceiling(spec, out)
        else:
            adapter = ADAPTERS[spec["scheduler"]](spec)
            layout = Layout(**spec["layout"])
            run = {"main": child_main_run, "burst": child_burst, "lateness": child_lateness}
            run[spec["kind"]](adapter, layout, spec, out)
    except BaseException:
        traceback.print_exc()
        out.put(error=traceback.format_exc().strip().splitlines()[-1])
        finish(1)
    finish()


# --- parent process ------------------------------------------------------------------------


class Runner:
    """Seeds, runs one child at a time, cleans up, and collects results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="pg_beat_bench_"))
        self.seq = 0
        self.results: dict[str, Any] = {}

    def spec(self, key: str, kind: str, layout: Layout | None) -> dict[str, Any]:
        self.seq += 1
        a = self.args
        return {
            "scheduler": key,
            "kind": kind,
            "layout": layout.as_dict() if layout else None,
            "db": f"pg_beat_bench_{os.getpid()}_{self.seq}_{key}",
            "redis_db": a.redis_db,
            "workdir": str(self.workdir),
            "out": str(self.workdir / f"result-{self.seq}.json"),
            "edits": a.edits,
            "edit_cap": a.edit_cap,
            "burst_cap": a.burst_cap,
            "lateness_cap": a.lateness_cap,
            "idle_budget": a.idle_budget,
            "settle": 0.3 if a.quick else 1.0,
        }

    def run_child(self, spec: dict[str, Any]) -> dict[str, Any]:
        log_path = self.workdir / f"child-{self.seq}.log"
        return run_child(HERE, spec, log_path, self.args.child_timeout)

    def measure(self, key: str, kind: str, layout: Layout | None) -> dict[str, Any]:
        spec = self.spec(key, kind, layout)
        adapter = ADAPTERS[key](spec) if key in ADAPTERS else None
        seed_seconds = 0.0
        try:
            if adapter is not None and layout is not None:
                started = time.perf_counter()
                adapter.prepare(layout)
                seed_seconds = time.perf_counter() - started
            flush_broker(self.args.redis_db, keep_redbeat=key == "redbeat")
            result = self.run_child(spec)
        finally:
            if adapter is not None:
                adapter.dispose()
        result["seed_seconds"] = seed_seconds
        return result

    def lead(self, key: str, count: int) -> float:
        """Seconds from now until a run's first due time: seeding + start-up + margin, from the
        main run nearest in size (scaled linearly)."""
        sizes = self.results.get(key, {}).get("sizes", {})
        if not sizes:
            return 10.0
        near = min(sizes, key=lambda n: abs(math.log(n / count)))
        main = sizes[near]["main"]
        startup = main.get("startup") or main.get("elapsed", 10.0)
        seed = main.get("seed_seconds", 1.0)
        scale = max(1.0, count / near)
        return 1.5 * (seed + startup) * scale + (1.0 if self.args.quick else 3.0)

    def run(self) -> None:
        args = self.args
        for key in args.schedulers:
            entry = self.results.setdefault(
                key,
                {"label": ADAPTERS[key].label, "edit_path": ADAPTERS[key].edit_path, "sizes": {}},
            )
            for n in args.sizes:
                self.run_size(key, n, entry)
            self.run_lateness(key, entry)
        log_line(f"kombu publish ceiling ({args.burst} x send_task) ...")
        spec = self.spec("ceiling", "ceiling", None)
        spec["count"] = args.burst
        flush_broker(args.redis_db)
        self.results["_ceiling"] = self.run_child(spec)

    def run_size(self, key: str, n: int, entry: dict[str, Any]) -> None:
        args = self.args
        log_line(f"{key} n={n}: start-up, idle tick, memory, edit ...")
        main = self.measure(key, "main", quiet_layout(n))
        entry["sizes"][n] = {"main": main}
        log_line(f"    {summarise(main)}")
        burst = min(args.burst, n)
        log_line(f"{key} n={n}: burst of {burst} ...")
        burst_at = time.time() + self.lead(key, n)
        result = self.measure(key, "burst", quiet_layout(n, burst=burst, burst_at=burst_at))
        entry["sizes"][n]["burst"] = result
        log_line(f"    {summarise(result)}")

    def run_lateness(self, key: str, entry: dict[str, Any]) -> None:
        args = self.args
        count, interval = args.lateness_count, args.lateness_interval
        log_line(f"{key}: lateness, {count} schedules every {interval:g} s ...")
        start = time.time() + self.lead(key, count)
        layout = Layout(count, interval, start, interval)
        entry["lateness"] = self.measure(key, "lateness", layout)
        log_line(f"    {summarise(entry['lateness'])}")

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        flush_redis(self.args.redis_db)


def flush_broker(redis_db: int, keep_redbeat: bool = False) -> None:
    """Start each child with an empty broker queue (RedBeat's seeded keys stay when asked)."""
    if keep_redbeat:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
        try:
            keys = [k for k in client.keys("*") if not k.startswith(b"redbeat:")]
            if keys:
                client.delete(*keys)
        finally:
            client.close()
    else:
        flush_redis(redis_db)


def summarise(result: dict[str, Any]) -> str:
    shown = {
        k: (round(v, 4) if isinstance(v, float) else v)
        for k, v in result.items()
        if k not in ("startup_parts", "pid", "baseline_kib", "rss_kib") and not isinstance(v, dict)
    }
    return json.dumps(shown, default=str)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    runner = Runner(args)

    def run() -> dict[str, Any]:
        try:
            runner.run()
        finally:
            runner.close()
        return runner.results

    run_and_report(args, run, render_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
