"""Where pg_beat's time goes, for the figures of bench_scheduler.py that miss their target.

    .venv/bin/python benchmarks/profile_pg_beat.py --n 100000 startup idle edit lateness burst

Runs pg_beat in this process against a fresh ``pg_beat_bench_*`` database (dropped at the end)
and prints, per scenario, the SQL statements the dispatcher ran (count, total and mean time, from
SQLAlchemy's cursor events) and the top of a cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _adapters import PgBeat
from _common import Layout, Recorder, flush_redis, quiet_layout
from sqlalchemy import event

SCENARIOS = ("startup", "idle", "edit", "lateness", "burst")


class StatementLog:
    """Every statement run on the engines it is attached to: (first line, seconds)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.timeline: list[tuple[float, str, float]] = []  # (wall time, statement, seconds)
        self._started: dict[int, float] = {}

    def attach(self, engine: Any) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "rollback", self._rollback)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self._started[id(conn)] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        started = self._started.pop(id(conn), None)
        if started is not None:
            key = " ".join(statement.split())[:90]
            took = time.perf_counter() - started
            self.times[key].append(took)
            self.timeline.append((time.time(), key, took))

    def _commit(self, conn: Any) -> None:
        self.times["COMMIT (event)"].append(0.0)

    def _rollback(self, conn: Any) -> None:
        self.times["ROLLBACK (event)"].append(0.0)

    def report(self, per: int = 1) -> str:
        lines = [f"  {'count/step':>10}  {'mean':>9}  statement"]
        for key, values in sorted(self.times.items(), key=lambda kv: -sum(kv[1])):
            lines.append(
                f"  {len(values) / per:10.2f}  {statistics.fmean(values) * 1e3:7.3f}ms  {key}"
            )
        return "\n".join(lines)


@contextmanager
def profiled(title: str, top: int = 25) -> Iterator[None]:
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        buffer = io.StringIO()
        stats = pstats.Stats(profile, stream=buffer)
        stats.sort_stats("cumulative").print_stats(top)
        print(f"--- cProfile: {title} (cumulative) ---")
        print("\n".join(buffer.getvalue().splitlines()[4:]))


def started(adapter: PgBeat, layout: Layout, log: StatementLog | None = None) -> Any:
    app = adapter.make_app(layout)
    parts = adapter.start(app, Recorder())
    if log is not None:
        log.attach(adapter.sched.dispatcher.engine)
    adapter.warm_up()
    return parts


def scenario_startup(adapter: PgBeat, layout: Layout, args: argparse.Namespace) -> None:
    app = adapter.make_app(layout)
    with profiled("Scheduler(app) + leader + first step", 30):
        parts = adapter.start(app, Recorder())
    print("split:", {k: f"{v * 1e3:.1f} ms" for k, v in parts.items()})


def scenario_idle(adapter: PgBeat, layout: Layout, args: argparse.Namespace) -> None:
    log = StatementLog()
    started(adapter, layout, log)
    for _ in range(20):
        adapter.idle_tick()
    log.times.clear()
    steps = 300
    t0 = time.perf_counter()
    with profiled(f"{steps} idle Dispatcher.step()"):
        for _ in range(steps):
            adapter.idle_tick()
    print(f"mean step (under cProfile): {(time.perf_counter() - t0) / steps * 1e3:.2f} ms")
    t0 = time.perf_counter()
    for _ in range(steps):
        adapter.idle_tick()
    print(f"mean step (no profiler):    {(time.perf_counter() - t0) / steps * 1e3:.2f} ms")
    log.times.clear()
    for _ in range(steps):
        adapter.idle_tick()
    print("statements per idle step:")
    print(log.report(steps))


def run_loop_until(adapter: PgBeat, done: Callable[[], bool], budget: float) -> None:
    deadline = time.time() + budget
    while not done() and time.time() < deadline:
        adapter.tick()


def scenario_edit(adapter: PgBeat, layout: Layout, args: argparse.Namespace) -> None:
    log = StatementLog()
    started(adapter, layout, log)
    recorder = Recorder()
    adapter.hook(recorder)
    trace = LoopTrace(adapter)
    for k in range(4):
        index = layout.count - 1 - k
        result: dict[str, float] = {}

        def edit(index: int = index, result: dict[str, float] = result) -> None:
            time.sleep(0.3)
            result["stamp"] = adapter.edit(index, layout)

        log.times.clear()
        trace.steps.clear()
        trace.step_times.clear()
        editor = threading.Thread(target=edit)
        editor.start()
        profile = cProfile.Profile()
        profile.enable()
        run_loop_until(adapter, lambda i=index: layout.name(i) in recorder.first, 5.0)
        profile.disable()
        editor.join()
        _, published = recorder.first[layout.name(index)]
        sending = [d for d, _, n in trace.steps if n]
        print(
            f"edit {k}: {(published - result['stamp']) * 1e3:.1f} ms; the step that sent it took "
            f"{sending[0] * 1e3:.1f} ms"
            if sending
            else f"edit {k}: no step sent it"
        )
        if k == 0:
            buffer = io.StringIO()
            pstats.Stats(profile, stream=buffer).sort_stats("tottime").print_stats(15)
            print("--- cProfile of the loop around the first edit (tottime) ---")
            print("\n".join(buffer.getvalue().splitlines()[4:]))
            print(log.report())


class LoopTrace:
    """Wraps Dispatcher.step and .wait, and the publisher's send: how long each took."""

    def __init__(self, adapter: PgBeat) -> None:
        dispatcher = adapter.sched.dispatcher
        self.steps: list[tuple[float, float, int]] = []  # (duration, returned delay, sent)
        self.step_times: list[float] = []  # wall time each step started
        self.waits: list[tuple[float, float]] = []  # (timeout asked, time slept)
        step, wait = dispatcher.step, dispatcher.wait

        def traced_step() -> float:
            sent = dispatcher.sent_total
            self.step_times.append(time.time())
            t0 = time.perf_counter()
            delay = step()
            self.steps.append((time.perf_counter() - t0, delay, dispatcher.sent_total - sent))
            return delay

        def traced_wait(timeout: float) -> None:
            t0 = time.perf_counter()
            wait(timeout)
            self.waits.append((timeout, time.perf_counter() - t0))

        dispatcher.step, dispatcher.wait = traced_step, traced_wait
        self.send_seconds = 0.0
        publisher = dispatcher.publisher
        send = publisher.send

        def timed_send(*args: Any) -> None:
            t0 = time.perf_counter()
            try:
                send(*args)
            finally:
                self.send_seconds += time.perf_counter() - t0

        publisher.send = timed_send

    def report(self) -> str:
        delays = Counter(round(d, 2) for _, d, _ in self.steps if d >= 0.1)
        busy = sum(t for t, _, _ in self.steps)
        slept = sum(s for _, s in self.waits)
        sizes = [n for _, _, n in self.steps if n]
        lines = [
            f"  steps: {len(self.steps)}, in steps {busy:.2f} s, in wait() {slept:.2f} s",
            f"  messages per step that sent any: mean {statistics.fmean(sizes):.1f}, "
            f"max {max(sizes)}"
            if sizes
            else "  no step sent anything",
            f"  step() returned a delay >= 100 ms {sum(delays.values())} times: "
            + ", ".join(f"{d:g} s x{c}" for d, c in sorted(delays.items())),
            f"  time slept in wait() after those: "
            f"{sum(s for (t, s) in self.waits if t >= 0.1):.2f} s",
        ]
        return "\n".join(lines)


def scenario_lateness(adapter: PgBeat, layout: Layout, args: argparse.Namespace) -> None:
    count, interval = 10_000, 20.0
    late_layout = Layout(count, interval, time.time() + 6.0, interval)
    adapter.dispose()
    adapter.prepare(late_layout)
    log = StatementLog()
    started(adapter, late_layout, log)
    recorder = Recorder()
    adapter.hook(recorder)
    trace = LoopTrace(adapter)
    log.times.clear()
    window = args.window
    end = late_layout.start + window
    run_loop_until(adapter, lambda: time.time() > end, window + 30)
    dues = [d for d, _ in recorder.first.values() if d is not None and d < end - 1]
    late = sorted(p - d for d, p in recorder.first.values() if d is not None and d < end - 1)
    print(f"{count} schedules every {interval:g} s ({count / interval:.0f}/s), {window:g} s window")
    if late:
        print(
            f"  published {len(dues)}: p50 {late[len(late) // 2] * 1e3:.1f} ms, "
            f"p99 {late[int(len(late) * 0.99)] * 1e3:.1f} ms, max {late[-1] * 1e3:.1f} ms"
        )
    print(trace.report())
    print("statements over the window, per step:")
    print(log.report(max(len(trace.steps), 1)))
    print(timeline(late_layout.start, end, recorder, trace, log))


def timeline(
    start: float, end: float, recorder: Recorder, trace: LoopTrace, log: StatementLog
) -> str:
    """Per 2-second slice of due times: lateness, step sizes and the slowest statements."""
    lines = ["  slice  sent  p50 late  max late  steps  mean step  msgs/step  next_wake  claim upd"]
    width = 2.0
    t = start
    while t < end:
        late = sorted(
            p - d for d, p in recorder.first.values() if d is not None and t <= d < t + width
        )
        steps = [
            (dur, n)
            for st, (dur, _, n) in zip(trace.step_times, trace.steps, strict=True)
            if t <= st < t + width
        ]

        def mean_of(prefix: str, t: float = t) -> float:
            got = [x for w, k, x in log.timeline if k.startswith(prefix) and t <= w < t + width]
            return statistics.fmean(got) * 1e3 if got else float("nan")

        if late and steps:
            lines.append(
                f"  {t - start:5.0f}  {len(late):4d}  {late[len(late) // 2] * 1e3:6.0f}ms"
                f"  {late[-1] * 1e3:6.0f}ms  {len(steps):5d}"
                f"  {statistics.fmean(d for d, _ in steps) * 1e3:7.1f}ms"
                f"  {statistics.fmean(n for _, n in steps):9.1f}"
                f"  {mean_of('SELECT clock_timestamp() AS now'):7.2f}ms"
                f"  {mean_of('UPDATE pg_beat_schedules AS s'):7.2f}ms"
            )
        t += width
    return "\n".join(lines)


def scenario_burst(adapter: PgBeat, layout: Layout, args: argparse.Namespace) -> None:
    burst = min(2000, layout.count)
    burst_layout = quiet_layout(layout.count, burst=burst, burst_at=time.time() + 8.0)
    adapter.dispose()
    adapter.prepare(burst_layout)
    log = StatementLog()
    started(adapter, burst_layout, log)
    recorder = Recorder()
    adapter.hook(recorder)
    names = {burst_layout.name(i) for i in range(burst)}
    run_loop_until(adapter, lambda: time.time() >= burst_layout.burst_at - 0.05, 30)
    log.times.clear()
    trace = LoopTrace(adapter)
    run_loop_until(adapter, lambda: names <= recorder.first.keys(), 60)
    last = max(p for n, (_, p) in recorder.first.items() if n in names)
    print(f"burst: {burst / (last - burst_layout.burst_at):.0f}/s (no profiler)")
    print(trace.report())
    in_steps = sum(d for d, _, _ in trace.steps)
    in_sql = sum(sum(v) for v in log.times.values())
    print(
        f"  per message: publisher thread (Outbound.send, kombu) "
        f"{trace.send_seconds / burst * 1e3:.3f} ms; loop thread: step {in_steps / burst * 1e3:.3f}"
        f" ms, of which SQL {in_sql / burst * 1e3:.3f} ms"
    )
    print("statements during the burst, per step:")
    print(log.report(max(len(trace.steps), 1)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--window", type=float, default=12.0, help="lateness window, seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in args.scenarios:
        print(f"\n===== {name} (n={args.n}) =====", flush=True)
        spec = {"db": f"pg_beat_bench_{os.getpid()}_profile", "redis_db": args.redis_db}
        adapter = PgBeat({**spec, "workdir": "/tmp"})
        layout = quiet_layout(args.n)
        adapter.prepare(layout)
        flush_redis(args.redis_db)
        try:
            globals()[f"scenario_{name}"](adapter, layout, args)
        finally:
            if adapter.sched is not None:
                adapter.sched.close()
            adapter.dispose()
            flush_redis(args.redis_db)
    sys.stdout.flush()
    os._exit(0)  # the watchdog thread of a closed scheduler may still be mid-sleep


if __name__ == "__main__":
    sys.exit(main())
