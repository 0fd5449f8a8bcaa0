"""An HA cluster on one machine: N ``celery beat`` replicas, one worker, and a supervisor.

Used by the demo (``make demo``), the failover tests (``tests/ha``) and the failover benchmark.
Every process is started here, remembered by PID and stopped by that PID only. A replica that
exits (SIGKILL, a hang detected by its watchdog, SIGTERM) is restarted by the supervisor thread
after ``restart_delay`` seconds, as systemd or Kubernetes would.

Counting happens on the worker's side: the ``record`` task of ``examples.ha_app`` writes one row
per execution, and :meth:`Cluster.verify` compares them with the grid of every schedule.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from examples.ha_app import EXECUTIONS_DDL
from pg_beat import migrate
from pg_beat.api import ScheduleManager
from pg_beat.urls import libpq_url

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Verdict:
    """What the worker executed against what was due, for every schedule.

    Every execution in the window counts: one that matches no due tick of the grid (off the
    grid, of an unknown schedule, or without pg_beat's headers) is ``unexpected``, so the
    number executed always equals the number expected when all is well.
    """

    expected: int = 0
    executed: int = 0
    missed: list[tuple[str, datetime]] = field(default_factory=list)
    #: Same tick executed twice by messages of the same epoch: a real bug.
    duplicates: list[tuple[str, datetime]] = field(default_factory=list)
    #: Same tick re-published by a new epoch after the old leader died between publishing and
    #: marking it sent: recognisable (same task id), counted apart.
    republished: list[tuple[str, datetime]] = field(default_factory=list)
    #: Executions that match no due tick: (schedule or None, due time or None, task id).
    unexpected: list[tuple[str | None, datetime | None, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.missed
            and not self.duplicates
            and not self.republished
            and not self.unexpected
            and self.executed == self.expected
        )

    def summary(self) -> str:
        return (
            f"{self.executed} executions of {self.expected} due ticks: "
            f"{len(self.missed)} missed, {len(self.duplicates)} duplicated, "
            f"{len(self.republished)} re-published after a crash, "
            f"{len(self.unexpected)} unexpected"
        )


@dataclass
class Replica:
    name: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)
    paused: bool = False


class Cluster:
    """Start with :meth:`start`, stop with :meth:`stop` (also a context manager)."""

    #: The Celery app every process runs, and the scheduler class of the beat replicas.
    APP = "examples.ha_app"
    SCHEDULER = "pg_beat:Scheduler"

    def __init__(
        self,
        database_url: str,
        broker_url: str,
        *,
        replicas: int = 3,
        workdir: str | Path,
        queue: str | None = None,
        lease_ttl: float = 5.0,
        heartbeat_interval: float = 1.0,
        hang_timeout: float = 5.0,
        restart_delay: float = 1.0,
        replica_urls: Mapping[str, str] | None = None,
        replica_brokers: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.queue = queue or f"pg_beat_demo_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
        self.restart_delay = restart_delay
        base = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PG_BEAT_DATABASE_URL": database_url,
            "PG_BEAT_DEMO_RECORD_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "PG_BEAT_DEMO_QUEUE": self.queue,
            "PG_BEAT_LEASE_TTL": str(lease_ttl),
            "PG_BEAT_HEARTBEAT_INTERVAL": str(heartbeat_interval),
            "PG_BEAT_HANG_TIMEOUT": str(hang_timeout),
            **(extra_env or {}),
        }
        self.base_env = base
        self.replicas: dict[str, Replica] = {}
        for index in range(1, replicas + 1):
            name = f"beat-{index}"
            env = {**base, "PG_BEAT_REPLICA_NAME": name}
            if replica_urls and name in replica_urls:
                env["PG_BEAT_DATABASE_URL"] = replica_urls[name]
            if replica_brokers and name in replica_brokers:
                env["CELERY_BROKER_URL"] = replica_brokers[name]
            self.replicas[name] = Replica(name, env)
        self.worker: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def prepare(self, schedules: Sequence[tuple[str, float]], *, policy: str = "catch_up") -> None:
        """Migrate, create the executions table and the schedules (name, seconds)."""
        migrate.upgrade(self.database_url)
        with psycopg.connect(libpq_url(self.database_url), autocommit=True) as conn:
            conn.execute(EXECUTIONS_DDL)
        with ScheduleManager(self.database_url) as api:
            for name, every in schedules:
                api.create(
                    name,
                    "pg_beat_demo.record",
                    every=every,
                    misfire_policy=policy,
                    description="pg_beat HA demo",
                )

    def start(self) -> None:
        self.worker = self._spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                self.APP,
                "worker",
                "--pool",
                "threads",
                "-c",
                "8",
                "-Q",
                self.queue,
                "-l",
                "warning",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ],
            self.base_env,
        )
        for replica in self.replicas.values():
            self._start_replica(replica)
        self._supervisor = threading.Thread(
            target=self._supervise, name="cluster-supervisor", daemon=True
        )
        self._supervisor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        with self._lock:
            procs = [r.process for r in self.replicas.values() if r.process is not None]
            if self.worker is not None:
                procs.append(self.worker)
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")
        try:
            return subprocess.Popen(
                argv,
                env={**os.environ, **env},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    def _start_replica(self, replica: Replica) -> None:
        replica.process = self._spawn(
            replica.name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                self.APP,
                "beat",
                "-S",
                self.SCHEDULER,
                "-l",
                "info",
                "--pidfile",
                str(self.workdir / f"{replica.name}.pid"),
            ],
            replica.env,
        )

    def _supervise(self) -> None:
        while not self._stopping.wait(0.1):
            with self._lock:
                for replica in self.replicas.values():
                    proc = replica.process
                    if proc is None or proc.poll() is None:
                        continue
                    replica.exits.append(proc.returncode)
                    replica.process = None
                    replica.restarts += 1
                    threading.Timer(self.restart_delay, self._restart, (replica,)).start()

    def _restart(self, replica: Replica) -> None:
        with self._lock:
            if not self._stopping.is_set() and replica.process is None:
                self._start_replica(replica)

    # --- faults --------------------------------------------------------------------------

    def pid(self, name: str) -> int:
        proc = self.replicas[name].process
        if proc is None:
            raise LookupError(f"replica {name} is not running")
        return proc.pid

    def signal(self, name: str, sig: int) -> None:
        """Send ``sig`` to the replica's process (by the PID we started)."""
        with self._lock:
            proc = self.replicas[name].process
            if proc is None or proc.poll() is not None:
                raise LookupError(f"replica {name} is not running")
            proc.send_signal(sig)
            self.replicas[name].paused = sig == signal.SIGSTOP

    def terminate_backends(self, name: str) -> int:
        """``pg_terminate_backend`` on every connection of the replica, found by the name of
        its sessions: ``pg_beat:<token>:<replica>:<role>`` (the replica names here are short,
        never cut), in this cluster's database only (another cluster on the same server may
        have replicas of the same names)."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name ~ '^pg_beat:[0-9a-f]{8}:' "
                "AND starts_with(substr(application_name, 18), %s) AND pid <> pg_backend_pid() "
                "AND datname = current_database()",
                (f"{name}:",),
            ).fetchall()
        return len(rows)

    # --- observation ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _db(self) -> Any:
        with psycopg.connect(
            libpq_url(self.database_url), autocommit=True, connect_timeout=3
        ) as conn:
            yield conn

    def lease(self) -> dict[str, Any] | None:
        with self._db() as conn:
            cur = conn.execute(
                "SELECT epoch, holder, expires_at > clock_timestamp() AS fresh "
                "FROM pg_beat_leases LIMIT 1"
            )
            row = cur.fetchone()
        if row is None:
            return None
        return {"epoch": row[0], "holder": row[1], "fresh": row[2]}

    def wait_for_leader(
        self, timeout: float = 30.0, *, other_than: str | None = None, after_epoch: int = 0
    ) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.Error):
                lease = self.lease()
                if (
                    lease
                    and lease["fresh"]
                    and lease["holder"]
                    and lease["epoch"] > after_epoch
                    and lease["holder"] != other_than
                ):
                    return lease["holder"], lease["epoch"]
            time.sleep(0.05)
        raise TimeoutError(f"no new leader within {timeout:g}s")

    def first_send_after(self, epoch: int, since: float, timeout: float = 30.0) -> float | None:
        """Seconds from ``since`` (time.time()) to the first tick sent by a later epoch."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.Error), self._db() as conn:
                row = conn.execute(
                    "SELECT extract(epoch FROM min(sent_at)) FROM pg_beat_runs "
                    "WHERE epoch > %s AND sent_at IS NOT NULL",
                    (epoch,),
                ).fetchone()
                republished = conn.execute(
                    "SELECT extract(epoch FROM min(executed_at)) FROM pg_beat_demo_executions "
                    "WHERE epoch > %s",
                    (epoch,),
                ).fetchone()
                times = [float(v[0]) for v in (row, republished) if v and v[0] is not None]
                if times:
                    return max(0.0, min(times) - since)
            time.sleep(0.05)
        return None

    def executions(self) -> list[tuple[str, str, datetime, int, int | None]]:
        with self._db() as conn:
            return conn.execute(
                "SELECT task_id, schedule, due_at, epoch, claim_epoch "
                "FROM pg_beat_demo_executions ORDER BY due_at"
            ).fetchall()

    def wait_executed_until(self, until: datetime, timeout: float = 60.0) -> None:
        """Wait until every schedule has an execution due at or after ``until``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.Error), self._db() as conn:
                behind = conn.execute(
                    "SELECT count(*) FROM pg_beat_schedules s WHERE NOT EXISTS ("
                    " SELECT 1 FROM pg_beat_demo_executions e"
                    " WHERE e.schedule = s.name AND e.due_at >= %s)",
                    (until,),
                ).fetchone()
                if behind is not None and behind[0] == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"executions did not reach {until.isoformat()} within {timeout:g}s")

    def verify(self, start: datetime, end: datetime) -> Verdict:
        """Compare every execution due in [start, end] (and every one without a due time that
        ran meanwhile) with every schedule's grid of due times in [start, end]."""
        verdict = Verdict()
        with self._db() as conn:
            schedules = dict(
                conn.execute("SELECT name, interval_seconds FROM pg_beat_schedules").fetchall()
            )
            rows = conn.execute(
                "SELECT schedule, due_at, epoch, task_id FROM pg_beat_demo_executions "
                "WHERE due_at BETWEEN %s AND %s "
                "OR (due_at IS NULL AND executed_at BETWEEN %s AND now())",
                (start, end, start),
            ).fetchall()
            firsts = dict(
                conn.execute(
                    "SELECT schedule_name, min(due_at) FROM pg_beat_runs GROUP BY 1"
                ).fetchall()
            )
        seen: dict[tuple[str, datetime], list[int]] = {}
        for schedule, due, epoch, task_id in rows:
            if schedule is None or due is None or schedule not in schedules:
                verdict.unexpected.append((schedule, due, task_id))
            else:
                seen.setdefault((schedule, due), []).append(epoch)
        verdict.executed = len(rows)
        for name, every in schedules.items():
            first = firsts.get(name)
            if first is None:
                continue
            step = timedelta(seconds=every)
            k = max(0, -(-(start - first) // step))
            due = first + k * step
            while due <= end:
                verdict.expected += 1
                epochs = seen.pop((name, due), [])
                if not epochs:
                    verdict.missed.append((name, due))
                elif len(epochs) > 1:
                    if any(c > 1 for c in Counter(epochs).values()):
                        verdict.duplicates.append((name, due))
                    else:
                        verdict.republished.append((name, due))
                due += step
        # What is left ran, but was due at no tick of the grid (e.g. a tick off the grid).
        for (name, due), epochs in seen.items():
            verdict.unexpected.extend((name, due, f"epoch {e}") for e in epochs)
        return verdict

    def log_lines(self, name: str) -> int:
        """How many lines ``name`` has logged so far (to count the lines a fault causes)."""
        return len(self.log(name).splitlines())

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
