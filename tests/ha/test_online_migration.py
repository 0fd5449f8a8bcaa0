"""The schema upgrade under a running replica of a version before it.

A database at an earlier revision (0001, 0002, then 0003) with a million schedules and a million
runs; a real ``celery beat`` running the pg_beat of a commit at that revision (extracted from git)
dispatches three 0.5 s schedules; meanwhile the current version runs ``pg-beat db upgrade`` to
its head. The old replica keeps claiming and sending every tick, on time, throughout and after;
no statement of it waits long on the migration's locks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.env import unavailable
from support.pg import libpq_url
from support.procs import ProcessGroup

from pg_beat import migrate

pytestmark = [pytest.mark.ha, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "tests" / "acceptance"  # e2e_app, the Celery app of the end-to-end tests

# An earlier release: a commit of it, the revision it runs at, and the words of its start-up
# sync line (to prove that the old code is what runs).
RELEASES = {
    # The last commit whose schema is at 0001_initial.
    "0001": ("85b10f5", "0001_initial", "beat_schedule synced: 0 entries"),
    # A commit at 0002_failures_owners_release, before 0003 (the schema compatibility records
    # and the replicas' broker columns).
    "0002": ("e8a2a42", "0002_failures_owners_release", "beat_schedule of 'e2e_app' synced"),
    # The last commit at 0003_schema_compat_broker_health, before 0004 (overlap policies, run
    # outcomes, executions, schedule health, workers).
    "0003": ("cde58cb", "0003_schema_compat_broker_health", "beat_schedule of 'e2e_app' synced"),
}
SCHEDULES = 1_000_000
RUNS = 1_000_000
FAST = ("fast-a", "fast-b", "fast-c")


def extract_old_code(commit: str, into: Path) -> Path:
    """pg_beat (and its migrations) as of ``commit``, in ``into``; unavailable without git or
    without that commit (a shallow clone)."""
    git = shutil.which("git")
    if git is None:
        unavailable("git is not installed: cannot extract the previous version")
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "old.tar"
    result = subprocess.run(
        [git, "-C", str(ROOT), "archive", "-o", str(archive), commit, "pg_beat", "migrations"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        unavailable(f"cannot extract {commit} with git archive: {result.stderr.strip()}")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    # Where a wheel puts them: the old version must find its own migrations, not ours.
    (into / "migrations").rename(into / "pg_beat" / "migrations")
    return into


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def populate(url: str) -> None:
    sql(
        url,
        "INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds, next_run_at, "
        "last_due_at) SELECT 'bulk-' || g, 't.bulk', 'interval', 86400, "
        "now() + interval '1 day' + g * interval '1 ms', now() - interval '1 day' "
        "FROM generate_series(1, %s) g",
        SCHEDULES,
    )
    sql(
        url,
        "INSERT INTO pg_beat_runs (group_name, schedule_id, schedule_name, due_at, task_id, "
        "epoch, replica, status, claimed_at, sent_at) "
        "SELECT 'default', g %% 1000 + 1, 'bulk-' || (g %% 1000 + 1), "
        "now() - g * interval '1 s', md5(g::text), 1, 'old', 'sent', "
        "now() - g * interval '1 s', now() - g * interval '1 s' "
        "FROM generate_series(1, %s) g",
        RUNS,
    )
    for name in FAST:
        sql(
            url,
            "INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds, next_run_at, "
            "misfire_policy) VALUES (%s, 'e2e.record', 'interval', 0.5, now(), 'catch_up')",
            name,
        )
    sql(url, "ANALYZE pg_beat_schedules; ANALYZE pg_beat_runs")


class LockWatch(threading.Thread):
    """Samples pg_beat sessions waiting on a lock; keeps the longest wait seen (seconds)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.longest = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(libpq_url(self.url), autocommit=True) as conn:
            while not self.stop.wait(0.05):
                row = conn.execute(
                    "SELECT max(extract(epoch FROM clock_timestamp() - state_change)) "
                    "FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND application_name LIKE 'pg_beat:old-%%'"
                ).fetchone()
                if row and row[0] is not None:
                    self.longest = max(self.longest, float(row[0]))


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_an_old_replica_keeps_dispatching_while_the_schema_is_upgraded(
    empty_db_url: str, redis_url: str, procs: ProcessGroup, tmp_path: Path, release: str
) -> None:
    commit, revision, sync_words = RELEASES[release]
    url = empty_db_url
    old = extract_old_code(commit, tmp_path / "old")
    migrate.upgrade(url, revision)
    populate(url)
    sql(
        url,
        "CREATE TABLE e2e_executions (id bigserial PRIMARY KEY, task_id text NOT NULL, "
        "schedule text, due_at text, epoch bigint, replica text, args text, "
        "executed_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    env = {
        # The old pg_beat first on the path: the beat below runs the previous version.
        "PYTHONPATH": os.pathsep.join([str(old), str(APP_DIR)]),
        "E2E_BROKER_URL": redis_url,
        "E2E_QUEUE": "pg_beat_online_migration",
        "E2E_DATABASE_URL": libpq_url(url),
        "PG_BEAT_DATABASE_URL": url,
        "PG_BEAT_REPLICA_NAME": "old-1",
    }
    procs.spawn(
        "old-beat",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "e2e_app",
            "beat",
            "-l",
            "info",
            "-S",
            "pg_beat",
            "-s",
            str(tmp_path / "schedule"),
        ],
        env=env,
        cwd=tmp_path,
    )

    def sent() -> list[tuple[str, Any, Any]]:
        return sql(
            url,
            "SELECT schedule_name, due_at, sent_at FROM pg_beat_runs "
            "WHERE schedule_name = ANY(%s) ORDER BY due_at",
            list(FAST),
        )

    deadline = time.monotonic() + 60
    while len(sent()) < 3 * 4:
        assert procs.is_running("old-beat"), procs.log("old-beat")[-3000:]
        assert time.monotonic() < deadline, procs.log("old-beat")[-3000:]
        time.sleep(0.2)
    # The old code is what runs: its own wording of the start-up sync.
    assert sync_words in procs.log("old-beat")

    watch = LockWatch(url)
    watch.start()
    (began,) = sql(url, "SELECT clock_timestamp()")[0]
    started = time.monotonic()
    migrate.upgrade(url)
    took = time.monotonic() - started
    (ended,) = sql(url, "SELECT clock_timestamp()")[0]
    time.sleep(3)  # and it goes on at the new revision
    watch.stop.set()
    watch.join(5)
    assert migrate.current(url) == migrate.head_revision()

    ticks = [(n, due, at) for n, due, at in sent() if due >= began - timedelta(seconds=1)]
    for name in FAST:
        dues = [due for n, due, _ in ticks if n == name]
        steps = {round((b - a).total_seconds(), 3) for a, b in pairwise(dues)}
        assert steps == {0.5}, (name, steps)  # every tick of the grid, during and after
        assert dues[0] <= began and dues[-1] >= ended  # the whole migration is covered
    late = max((at - due).total_seconds() for _, due, at in ticks if at is not None)
    assert late < 2.0, late
    assert all(at is not None for _, due, at in ticks if due < ended), "a tick left unsent"
    assert watch.longest < 1.5, watch.longest  # no statement of the replica waited long
    log = procs.log("old-beat")
    assert "Traceback" not in log, log[-3000:]
    # The 0001 version reads schedules with SELECT * in statements psycopg has prepared: the
    # new column changes their result type, and its dispatch session fails once and is
    # replaced ("cached plan must not change result type"), missing no tick. Later versions
    # name their columns, so later migrations do not do that to them (test_dispatch proves
    # it): not one database error.
    assert log.count("database error") <= (1 if release == "0001" else 0), log[-3000:]
    if "database error" in log:
        assert "cached plan must not change result type" in log
        assert "database reachable again" in log
    assert procs.stop("old-beat", timeout=20) == 0
    print(
        f"migration from {revision} under load: {took:.1f}s, longest lock wait {watch.longest:.2f}s"
    )
