"""Plumbing shared by the benchmarks: services, schedule layouts, measurements, tables, child
processes and the report's frame.

Everything here talks to 127.0.0.1 only, creates databases named ``pg_beat_bench_*`` and
flushes only the Redis database number it is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import psycopg
from psycopg import sql

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
DB_PREFIX = "pg_beat_bench_"
ROOT = Path(__file__).resolve().parent.parent  # the checkout
TASK = "bench.noop"  # never registered: every scheduler publishes it with app.send_task()


# --- services ------------------------------------------------------------------------------


def pg_url(database: str, driver: str = "postgresql") -> str:
    """``driver://postgres@127.0.0.1:5432/database``; use ``postgresql+psycopg`` for SQLAlchemy."""
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def create_database(name: str) -> None:
    """A fresh, empty database (an old one of the same name is dropped first)."""
    assert name.startswith(DB_PREFIX), name
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(name: str) -> None:
    assert name.startswith(DB_PREFIX), name
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def flush_redis(db: int) -> None:
    """FLUSHDB on our own database number only: the broker queue and RedBeat's keys live there."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    try:
        client.flushdb()
    finally:
        client.close()


def rss_kib() -> int:
    """This process's resident set size (``VmRSS`` in /proc/self/status), in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


# --- what is seeded ------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """``count`` interval schedules named ``bench-000000``...; the first ``burst`` of them first
    fall due together at ``burst_at``, the others evenly over ``[start, start + spread)``
    (UNIX seconds). Every scheduler is seeded with the same due times."""

    count: int
    interval: float
    start: float
    spread: float
    burst: int = 0
    burst_at: float = 0.0

    @staticmethod
    def name(i: int) -> str:
        return f"bench-{i:06d}"

    def first_due(self, i: int) -> float:
        if i < self.burst:
            return self.burst_at
        return self.start + (i - self.burst) * self.spread / max(self.count - self.burst, 1)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def quiet_layout(count: int, *, burst: int = 0, burst_at: float = 0.0) -> Layout:
    """Hourly schedules, none due for the next ten minutes (except a burst, if asked for)."""
    return Layout(count, 3600.0, time.time() + 600.0, 3000.0, burst, burst_at)


# --- what is published ---------------------------------------------------------------------


class Recorder:
    """Publishes seen by a scheduler's hook: (schedule name, due time, publish time), UNIX s."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._cond = threading.Condition(self.lock)
        self.events: list[tuple[str, float | None, float]] = []
        self.first: dict[str, tuple[float | None, float]] = {}

    def record(self, name: str, due: float | None, published: float) -> None:
        with self._cond:
            self.events.append((name, due, published))
            self.first.setdefault(name, (due, published))
            self._cond.notify_all()

    def published_after(self, name: str, after: float, timeout: float) -> float | None:
        """Wait up to ``timeout`` s for a publish of ``name`` at or after ``after``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event_name, _, published in reversed(self.events):
                    if event_name == name and published >= after:
                        return published
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def wait_all(self, names: set[str], until: float) -> bool:
        """Wait until each of ``names`` was published once, or wall-clock time ``until``."""
        with self._cond:
            while not names <= self.first.keys():
                left = until - time.time()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True


# --- numbers -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); ``inf`` entries stand for never-published."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def fmt_seconds(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f} us"
    if value < 0.01:
        return f"{value * 1e3:.2f} ms"
    if value < 1.0:
        return f"{value * 1e3:.1f} ms" if value < 0.1 else f"{value * 1e3:.0f} ms"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def fmt_size(n: int) -> str:
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def render_table(
    title: str, header: Sequence[str], rows: Iterable[Sequence[str]], notes: Sequence[str] = ()
) -> str:
    rows = [list(r) for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = (str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    out = [title, line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out += [f"  {n}" for n in notes]
    return "\n".join(out)


# --- child results -------------------------------------------------------------------------


class ResultFile:
    """Results a child process writes as it goes, so a killed child still reports what it got."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = {}

    def put(self, **values: Any) -> None:
        self.data.update(values)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, default=str))
        os.replace(tmp, self.path)

    @staticmethod
    def read(path: str) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return {}
        return loaded


# --- child processes -----------------------------------------------------------------------


def log_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_child(script: Path, spec: dict[str, Any], log_path: Path, timeout: float) -> dict[str, Any]:
    """Run ``script --child spec`` (output to ``log_path``), killing it, by its PID only, after
    ``timeout`` s; what it put in its :class:`ResultFile` (``spec["out"]``), with ``elapsed``
    and, when it did not end well, ``timed_out`` or ``error``."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--child", json.dumps(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
        started = time.perf_counter()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()  # this child only, by its PID
            proc.wait()
    result = ResultFile.read(spec["out"])
    result["elapsed"] = time.perf_counter() - started
    if timed_out:
        result["timed_out"] = timeout
    elif proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        result.setdefault("error", f"exit status {proc.returncode}")
        log_line("    child failed:\n      " + "\n      ".join(tail))
    return result


def finish(status: int = 0) -> NoReturn:
    """End the child now: beat's loop and pg_beat's watchdog may be mid-sleep; never join."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def beside_loop(loop: Callable[[], object], driver: Callable[[], None], out: ResultFile) -> None:
    """Run beat's ``loop`` in this, the main thread (where `celery beat` runs it, and where
    RedBeat takes its thread-local lock), and ``driver`` in another thread, which reports into
    ``out`` and ends the process."""

    def drive() -> None:
        try:
            driver()
        except BaseException:
            traceback.print_exc()
            out.put(error=traceback.format_exc().strip().splitlines()[-1])
            finish(1)
        finish()

    threading.Thread(target=drive, name="bench-driver", daemon=True).start()
    try:
        loop()
    except BaseException:
        traceback.print_exc()
        out.put(loop_error=traceback.format_exc().strip().splitlines()[-1])
    threading.Event().wait()  # the driver still reports what it saw, then exits


# --- the report ----------------------------------------------------------------------------


def revision() -> str:
    """The measured pg_beat commit, ``+dirty`` when pg_beat/ or migrations/ have changes;
    "unknown" outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "pg_beat", "migrations")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def pg_beat_version() -> str:
    """pg_beat's version and the commit it was measured at (see :func:`revision`)."""
    import pg_beat

    return f"{pg_beat.__version__} ({revision()})"


def run_and_report(
    args: argparse.Namespace,
    run: Callable[[], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> None:
    """``run()`` the measurements (their results), then print them with the machine, the
    options and the load average around the run, and write them to ``args.json`` if given."""
    version = pg_beat_version()
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = run()
    report = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "pg_beat": version,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "options": {k: v for k, v in vars(args).items() if k != "child"},
        "duration_seconds": time.perf_counter() - started,
        "results": results,
    }
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        log_line(f"results written to {args.json}")
