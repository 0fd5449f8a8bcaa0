"""The one-command HA demo (``make demo``): three ``celery beat`` replicas, a worker, two faults.

It finds a PostgreSQL and a broker, migrates a database of its own, creates three 1-second
schedules, starts the replicas and a worker (:class:`examples.cluster.Cluster`), then kills the
leader with SIGKILL, hangs the next one with SIGSTOP, and counts every execution on the worker's
side. The exit status is 0 only when both failovers happened and no tick was missed or run twice;
130 or 143 after Ctrl-C or SIGTERM; 2 when no PostgreSQL could be found or started.

Where it runs and how it cleans up: see :mod:`examples.sandbox`.

    python -m examples.demo [--short] [--replicas 3] [--ttl 5] [--broker auto|filesystem|URL]
                            [--private-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from examples.cluster import Cluster, Verdict, utcnow
from examples.sandbox import (
    EXIT_FAILED,
    EXIT_OK,
    SCHEDULES,
    DemoError,
    add_cluster_options,
    check_cluster_options,
    run_with_cleanup,
    say,
    start_cluster,
)
from pg_beat.urls import libpq_url

# --- watching the cluster ------------------------------------------------------------------------


class Monitor(threading.Thread):
    """Prints a line a second: who leads (epoch), ticks sent and executed, each replica's state.

    Also prints ``started <name> pid <pid>`` for every process the supervisor (re)starts.
    """

    def __init__(self, cluster: Cluster, interval: float = 1.0) -> None:
        super().__init__(name="demo-monitor", daemon=True)
        self.cluster = cluster
        self.interval = interval
        self.stopping = threading.Event()
        self.started_at = time.monotonic()
        self._pids: dict[str, int] = {}
        self._conn: psycopg.Connection[Any] | None = None

    def announce_pids(self) -> None:
        """Print the PID of each process not announced yet (a restart has a new PID)."""
        procs = {name: r.process for name, r in self.cluster.replicas.items()}
        procs["worker"] = self.cluster.worker
        for name, proc in procs.items():
            if proc is not None and self._pids.get(name) != proc.pid:
                again = ""
                if name in self._pids:
                    exits = self.cluster.replicas[name].exits
                    again = f" (restarted by the supervisor; {_exit_text(exits)})"
                self._pids[name] = proc.pid
                say(f"started {name} pid {proc.pid}{again}")

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.announce_pids()
            try:
                line = self.line()
            except psycopg.Error as exc:
                self.close()
                line = f"(database unavailable: {str(exc).strip().splitlines()[0]})"
            say(line)
        self.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=5)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def counts(self) -> tuple[int, int]:
        """(ticks sent by the leaders, executions recorded by the worker)."""
        row = (
            self._db()
            .execute(
                "SELECT (SELECT count(*) FROM pg_beat_runs WHERE sent_at IS NOT NULL),"
                " (SELECT count(*) FROM pg_beat_demo_executions)"
            )
            .fetchone()
        )
        assert row is not None
        return int(row[0]), int(row[1])

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                libpq_url(self.cluster.database_url), autocommit=True, connect_timeout=3
            )
        return self._conn

    def line(self) -> str:
        lease = (
            self._db()
            .execute(
                "SELECT holder, epoch, expires_at > clock_timestamp(),"
                " extract(epoch FROM clock_timestamp() - heartbeat_at) FROM pg_beat_leases LIMIT 1"
            )
            .fetchone()
        )
        sent, executed = self.counts()
        holder, epoch, fresh, age = lease if lease else (None, 0, False, None)
        if holder and fresh:
            leading = f"leader {holder} (epoch {epoch})"
        elif holder:
            leading = f"NO LEADER: {holder}'s lease (epoch {epoch}) expired"
        else:
            leading = "no leader yet"
        if holder and age is not None and float(age) > 2:
            leading += f", heartbeat {float(age):.0f}s old"
        states = []
        for name, replica in self.cluster.replicas.items():
            proc = replica.process
            if proc is None or proc.poll() is not None:
                state = "down"
            elif replica.paused or _is_stopped(proc.pid):
                state = "STOPPED"
            else:
                state = "LEADER" if name == holder and fresh else "standby"
            states.append(f"{name} {state}")
        elapsed = time.monotonic() - self.started_at
        return (
            f"  {elapsed:5.1f}s  sent {sent:4d}  executed {executed:4d}  "
            f"[{', '.join(states)}]  {leading}"
        )


def _exit_text(exits: list[int]) -> str:
    if not exits:
        return "it exited"
    if exits[-1] < 0:
        return f"it was killed by {signal.Signals(-exits[-1]).name}"
    return f"it exited with code {exits[-1]}"


def _is_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP from anywhere); False where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].startswith(("T", "t"))


# --- the script ----------------------------------------------------------------------------------


@dataclass
class Failover:
    fault: str
    victim: str
    old_epoch: int
    new_leader: str | None = None
    new_epoch: int | None = None
    elected_after: float | None = None
    resumed_after: float | None = None

    def describe(self) -> str:
        if self.new_leader is None or self.resumed_after is None:
            return f"{self.fault} {self.victim} (epoch {self.old_epoch}): NO FAILOVER"
        return (
            f"{self.fault} {self.victim} -> {self.new_leader} (epoch {self.old_epoch} -> "
            f"{self.new_epoch}): new leader after {self.elected_after:.2f} s, "
            f"dispatch resumed after {self.resumed_after:.2f} s"
        )


def inject(cluster: Cluster, sig: signal.Signals, leader: str, epoch: int, ttl: float) -> Failover:
    """Send ``sig`` to the leader; wait for a later epoch to lead and to send a tick."""
    failover = Failover(sig.name, leader, epoch)
    say(f">>> {sig.name} {leader} (pid {cluster.pid(leader)}), the leader of epoch {epoch}")
    wall, started = time.time(), time.monotonic()
    cluster.signal(leader, sig)
    try:
        failover.new_leader, failover.new_epoch = cluster.wait_for_leader(
            timeout=ttl + 30, after_epoch=epoch
        )
    except TimeoutError:
        say(f">>> nobody took over from {leader} within {ttl + 30:g}s")
        return failover
    # Both figures from the database's records (the new term's start, the first send of a
    # later epoch), so the one can never come out before the other.
    failover.elected_after = elected_after(cluster, failover.new_epoch, wall)
    if failover.elected_after is None:
        failover.elected_after = time.monotonic() - started
    failover.resumed_after = cluster.first_send_after(epoch, wall, timeout=ttl + 30)
    say(f">>> {failover.describe()}")
    return failover


def elected_after(cluster: Cluster, epoch: int, since: float) -> float | None:
    """Seconds from ``since`` (time.time()) to the start of term ``epoch``, as recorded."""
    with psycopg.connect(libpq_url(cluster.database_url), connect_timeout=3) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM acquired_at) FROM pg_beat_leader_terms WHERE epoch = %s",
            (epoch,),
        ).fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]) - since)


def stale_claims(cluster: Cluster, epoch: int) -> int:
    """Ticks claimed under ``epoch`` after the next epoch began: what fencing must prevent."""
    with psycopg.connect(libpq_url(cluster.database_url), connect_timeout=3) as conn:
        row = conn.execute(
            # The next epoch is the next term above, whatever its number: epochs may skip.
            "SELECT count(*) FROM pg_beat_runs r JOIN pg_beat_leader_terms t ON t.epoch = "
            "(SELECT min(n.epoch) FROM pg_beat_leader_terms n WHERE n.epoch > r.epoch) "
            "WHERE r.epoch = %s AND r.claimed_at > t.acquired_at",
            (epoch,),
        ).fetchone()
    return int(row[0]) if row else 0


_CLI = "import sys; from pg_beat.cli import main; sys.argv[0] = 'pg-beat'; main()"


def run_pg_beat(database_url: str, *args: str) -> subprocess.CompletedProcess[str] | None:
    """Run the ``pg-beat`` CLI; None when this checkout has no CLI yet."""
    if importlib.util.find_spec("pg_beat.cli") is None:
        return None
    script = Path(sys.executable).with_name("pg-beat")
    argv = [str(script)] if script.exists() else [sys.executable, "-c", _CLI]
    try:
        return subprocess.run(
            [*argv, *args],
            env={**os.environ, "PG_BEAT_DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def show_status(database_url: str) -> None:
    result = run_pg_beat(database_url, "status")
    if result is None or result.returncode != 0:
        why = "not available" if result is None else (result.stderr.strip() or "failed")
        say(f"(pg-beat status skipped: {why.splitlines()[-1]})")
        return
    say("$ pg-beat status", *(f"    {line}" for line in result.stdout.rstrip().splitlines()))


def summarise(
    cluster: Cluster,
    failovers: list[Failover],
    verdict: Verdict,
    window: tuple[datetime, datetime],
    stale: int,
    sent: int,
) -> bool:
    duplicated = len(verdict.duplicates) + len(verdict.republished)
    ok = verdict.ok and stale == 0 and all(f.resumed_after is not None for f in failovers)
    lines = ["", "=" * 30 + " summary " + "=" * 30]
    lines += [f"failover {i}  {f.describe()}" for i, f in enumerate(failovers, 1)]
    lines += [
        f"ticks sent    {sent} since the replicas started ({len(SCHEDULES)} schedules, every "
        "second)",
        f"checked       the {verdict.expected} of them due from {window[0]:%H:%M:%S} to "
        f"{window[1]:%H:%M:%S} UTC (the faults, with steady seconds before and after), each "
        f"against the worker's executions: {verdict.executed} executions",
        f"duplicated    {duplicated}"
        + (
            f" ({len(verdict.republished)} re-published after a crash)"
            if verdict.republished
            else ""
        ),
        f"missed        {len(verdict.missed)}",
        f"stale claims  {stale} (ticks the woken SIGSTOPped leader claimed under its old epoch)",
    ]
    for what, ticks in (("missed", verdict.missed), ("duplicated", verdict.duplicates)):
        lines += [f"  {what}: {name} due {due.isoformat()}" for name, due in ticks[:5]]
    lines.append(
        "result        OK: both failovers, every tick ran exactly once"
        if ok
        else "result        FAILED"
    )
    say(*lines)
    return ok


def _log_tails(cluster: Cluster, lines: int = 15) -> None:
    for name in [*cluster.replicas, "worker"]:
        tail = cluster.log(name).splitlines()[-lines:]
        say(f"----- {name} log (last {len(tail)} lines) -----", *tail)


@dataclass
class Timing:
    steady: float  # seconds of normal running before the first fault
    between: float  # seconds between the two faults
    settle: float  # seconds after the second fault before counting

    @classmethod
    def for_run(cls, short: bool) -> Timing:
        return cls(3.0, 3.0, 3.0) if short else cls(10.0, 6.0, 6.0)


def watch(stack: contextlib.ExitStack, cluster: Cluster) -> Monitor:
    """A monitor for ``cluster``, stopped by ``stack``; the PIDs started so far are printed."""
    monitor = Monitor(cluster)
    stack.callback(monitor.stop)
    monitor.announce_pids()
    return monitor


def demo(stack: contextlib.ExitStack, args: argparse.Namespace) -> int:
    timing = Timing.for_run(args.short)
    cluster = start_cluster(stack, args)
    monitor = watch(stack, cluster)
    try:
        leader, epoch = cluster.wait_for_leader(timeout=60)
    except TimeoutError:
        _log_tails(cluster)
        raise DemoError("no replica became the leader within 60 s (logs above)") from None
    say(f">>> {leader} leads (epoch {epoch}); watching for {timing.steady:g} s")
    monitor.start()
    start = utcnow()
    time.sleep(timing.steady)
    show_status(cluster.database_url)

    first = inject(cluster, signal.SIGKILL, leader, epoch, args.ttl)
    time.sleep(timing.between)
    failovers = [first]
    if first.new_leader is not None and first.new_epoch is not None:
        second = inject(cluster, signal.SIGSTOP, first.new_leader, first.new_epoch, args.ttl)
        failovers.append(second)
        cluster.signal(first.new_leader, signal.SIGCONT)
        say(f">>> SIGCONT {first.new_leader}: it wakes up deposed and stands by")
    time.sleep(timing.settle)
    end = utcnow() - timedelta(seconds=1)
    try:
        cluster.wait_executed_until(end, timeout=30)
    except TimeoutError as exc:
        say(f"({exc})")
    monitor.stop()
    verdict = cluster.verify(start, end)
    stale = stale_claims(cluster, failovers[-1].old_epoch) if len(failovers) > 1 else 0
    sent, _ = monitor.counts()
    monitor.close()
    ok = summarise(cluster, failovers, verdict, (start, end), stale, sent)
    if not ok:
        _log_tails(cluster)
    return EXIT_OK if ok else EXIT_FAILED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo",
        description="pg_beat HA demo: three celery beat replicas, a worker, SIGKILL and SIGSTOP "
        "of the leader, then every tick counted.",
    )
    add_cluster_options(parser)
    parser.add_argument("--short", action="store_true", help="fewer seconds of steady state")
    args = parser.parse_args(argv)
    check_cluster_options(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_with_cleanup(lambda stack: demo(stack, args))


if __name__ == "__main__":
    sys.exit(main())
