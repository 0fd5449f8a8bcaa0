"""``pg-beat status`` and ``check`` against real locks on a real database, and the watch modes.

Locks are taken by other sessions exactly as an operator or a migration would take them; the
real console script runs as a subprocess, so wall time, exit status, stderr and Ctrl-C
(SIGINT, sent by pid) are what a user gets.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.procs import ProcessGroup
from support.waiting import connect, wait_for

from pg_beat import store
from pg_beat.config import Settings
from pg_beat.leadership import clock
from pg_beat.leadership.lease import LeaderState
from pg_beat.leadership.watchdog import Watchdog
from pg_beat.publish.brokerhealth import Health

pytestmark = pytest.mark.timeout(90)

PG_BEAT = str(Path(sys.executable).with_name("pg-beat"))
LOCK_KEY = 0x70676274  # pg_beat's advisory lock class id
#: The issue's bound for a report during a lock; generous against a 1 s section timeout.
ANSWER_WITHIN = 5.0
TABLES = "pg_beat_schedules, pg_beat_runs, pg_beat_leases, pg_beat_leader_terms, pg_beat_replicas"


# --- helpers -------------------------------------------------------------------------------------


def run(url: str, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """The real ``pg-beat`` with ``args``; its result and wall time."""
    env = {**os.environ, "PG_BEAT_DATABASE_URL": url}
    started = time.monotonic()
    done = subprocess.run(
        [PG_BEAT, *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return done, time.monotonic() - started


def answered(url: str, *args: str, code: int = 0, within: float | None = None) -> str:
    """stdout of ``pg-beat args``, which must exit ``code`` (within ``within`` seconds of wall
    time, the whole process, when given) with nothing on stderr."""
    done, took = run(url, *args)
    assert done.returncode == code, done
    assert done.stderr == "", done.stderr
    if within is not None:
        assert took < within, f"pg-beat {' '.join(args)} took {took:.1f}s"
    return done.stdout


def timed(url: str, *args: str, code: int = 0) -> str:
    """:func:`answered` within the issue's bound for a report during a lock (5 s)."""
    return answered(url, *args, code=code, within=ANSWER_WITHIN)


@contextmanager
def holding(url: str, *statements: str, name: str = "psql") -> Iterator[int]:
    """A session named ``name`` that ran ``statements`` in an open transaction, idle in it;
    yields its pid, rolls back afterwards."""
    conn = connect(url, name)
    try:
        conn.execute("BEGIN")
        for statement in statements:
            conn.execute(statement)
        yield conn.info.backend_pid
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def add_schedule(url: str, name: str, due_in: str = "1 hour") -> None:
    with connect(url, "test") as conn:
        conn.execute(
            "INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds, next_run_at) "
            f"VALUES (%s, 'app.' || %s, 'interval', 3600, now() + interval '{due_in}')",
            (name, name),
        )


@contextmanager
def replica(
    url: str, name: str, *, broker_health: Callable[[], Health] | None = None, **settings: Any
) -> Iterator[tuple[Watchdog, LeaderState]]:
    """A real Watchdog thread for replica ``name`` (leader if it wins, else standby), writing
    ``broker_health`` into its row when given."""
    options: dict[str, Any] = {"lease_ttl": 3.0, "heartbeat_interval": 0.3, "hang_timeout": 30.0}
    options.update(settings)
    state = LeaderState()
    extra: dict[str, Any] = {} if broker_health is None else {"broker_health": broker_health}
    watchdog = Watchdog(
        Settings(database_url=url, replica_name=name, **options),
        state,
        time.monotonic,
        exit_process=lambda code: None,
        **extra,
    )
    watchdog.start()
    try:
        yield watchdog, state
    finally:
        watchdog.stop()
        watchdog.join(5)
        watchdog.release()
        watchdog.close()


def verdict_line(text: str) -> str:
    first = text.splitlines()[0]
    assert first.startswith("verdict: "), text
    return first.removeprefix("verdict: ")


# --- answering during locks ----------------------------------------------------------------------


def test_status_and_check_answer_during_an_access_exclusive_lock(db_url: str) -> None:
    add_schedule(db_url, "tick")
    comment = "/* the nightly maintenance job, which takes its time */"
    with (
        replica(db_url, "alpha") as (_, leader),
        holding(db_url, f"LOCK pg_beat_schedules IN ACCESS EXCLUSIVE MODE {comment}") as pid,
    ):
        wait_for(lambda: leader.epoch is not None)
        text = timed(db_url, "status")
        headline = verdict_line(text)
        assert headline.startswith(
            f"blocked: pid {pid} (psql, user postgres) holds AccessExclusiveLock on "
            "pg_beat_schedules for "
        ), headline
        assert "; leader 'alpha' (epoch 1), heartbeat" in headline
        # pg_locks showed the lock first: the sections on that table wait only 0.1 s.
        blocked_by = f"pid {pid} (psql, user postgres) holds AccessExclusiveLock"
        assert f"Next due\n  (could not read: lock timeout after 0.1s: {blocked_by}" in text
        assert (
            f"Failing schedules (?)\n  (could not read: lock timeout after 0.1s: {blocked_by}"
        ) in text
        assert (
            "Task health (outcomes from tracking workers)\n  (could not read: lock timeout "
            f"after 0.1s: {blocked_by}"
        ) in text
        assert "\nBlocking pg_beat\n" in text
        assert "Lease\n  HOLDER" in text  # the lease is on another table: read as usual

        found = json.loads(timed(db_url, "status", "--json"))
        assert found["verdict"]["state"] == "blocked"
        assert {u["section"] for u in found["unreadable"]} == {
            "next_due", "failing_schedules", "task_health",
        }  # fmt: skip
        assert found["next_due"] is None and found["failing_schedules"] is None
        assert found["task_health"] is None
        assert found["failing_count"] is None
        assert found["lease"]["holder"] == "alpha" and found["lease"]["status"] == "held"
        (blocker,) = found["blockers"]
        assert blocker["pid"] == pid and blocker["mode"] == "AccessExclusiveLock"
        assert blocker["target"] == "pg_beat_schedules" and blocker["user_name"] == "postgres"
        assert blocker["granted"] is True and blocker["age"] >= 0
        # Other sessions' query text: a 40-character prefix, unless asked for in full.
        assert blocker["query"] == "LOCK pg_beat_schedules IN ACCESS EXCLUS…"
        assert comment not in text
        full = json.loads(timed(db_url, "status", "--json", "--show-queries"))
        assert full["blockers"][0]["query"].endswith(comment)
        assert comment in timed(db_url, "status", "--show-queries")

        # check judges the leader, which renews on another table: healthy, and quick.
        assert timed(db_url, "check").startswith("healthy: leader 'alpha'")


def test_every_table_locked_like_a_migration(db_url: str) -> None:
    with holding(db_url, f"LOCK {TABLES} IN ACCESS EXCLUSIVE MODE", name="alembic") as pid:
        text = timed(db_url, "status")
        assert verdict_line(text).startswith(
            f"blocked: pid {pid} (alembic, user postgres) holds AccessExclusiveLock on pg_beat_"
        )
        assert "could not read the lease: lock timeout after" in verdict_line(text)
        found = json.loads(timed(db_url, "status", "--json"))
        assert {u["section"] for u in found["unreadable"]} == {
            "lease", "replicas", "failovers", "next_due", "failing_schedules", "task_health",
        }  # fmt: skip
        assert found["lease"] is None and found["replicas"] is None
        assert all(f"pid {pid} (alembic" in u["reason"] for u in found["unreadable"])
        assert {b["target"] for b in found["blockers"]} <= set(TABLES.split(", "))

        line = timed(db_url, "check", code=1).strip()
        assert line.startswith(
            "unhealthy: could not read the lease: lock timeout after 0.1s: "
            f"pid {pid} (alembic, user postgres) holds AccessExclusiveLock on pg_beat_leases"
        ), line
        checked = json.loads(timed(db_url, "check", "--json", code=1))
        assert checked["healthy"] is False and checked["state"] == "unknown"
        assert checked["lease"] is None
        assert [u["section"] for u in checked["unreadable"]] == ["lease"]


def test_a_queued_migration_is_named_with_whom_it_waits_for(db_url: str) -> None:
    with holding(db_url, "SELECT count(*) FROM pg_beat_schedules", name="report") as reader:
        migration = connect(db_url, "alembic")

        def lock_table() -> None:
            try:
                migration.execute("BEGIN")
                migration.execute("LOCK pg_beat_schedules IN ACCESS EXCLUSIVE MODE")
            except psycopg.errors.QueryCanceled:
                pass  # the test is over

        thread = threading.Thread(target=lock_table, daemon=True)
        try:
            thread.start()
            with connect(db_url, "observer") as observer:
                wait_for(
                    lambda: (
                        observer.execute(
                            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                            (migration.info.backend_pid,),
                        ).fetchone()
                        == ("Lock",)
                    )
                )
            found = json.loads(timed(db_url, "status", "--json"))
            message = found["verdict"]["message"]
            assert message.startswith(
                f"blocked: pid {migration.info.backend_pid} (alembic, user postgres) waits for "
                "AccessExclusiveLock on pg_beat_schedules for "
            ), message
            assert f", behind pid {reader}" in message
            assert {u["section"] for u in found["unreadable"]} == {
                "next_due", "failing_schedules", "task_health",
            }  # fmt: skip
        finally:
            migration.cancel_safe()
            thread.join(5)
            migration.close()


def test_an_outside_holder_of_the_leadership_lock_is_named(db_url: str) -> None:
    with connect(db_url, "psql") as outsider:
        outsider.execute("SELECT pg_advisory_lock(%s, hashtext('pg_beat:default'))", (LOCK_KEY,))
        pid = outsider.info.backend_pid
        with replica(db_url, "alpha") as (_, state):
            wait_for(lambda: lock_waiters(db_url) == 1, what="the standby queued on the lock")
            _outside_holder_is_named(db_url, pid, state, outsider)


def lock_waiters(url: str) -> int:
    """Sessions queued for the leadership lock of group 'default'."""
    with connect(url, "test") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
            "AND objid = hashtext('pg_beat:default')::oid AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (LOCK_KEY,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _outside_holder_is_named(
    db_url: str, pid: int, state: LeaderState, outsider: psycopg.Connection[Any]
) -> None:
    expected = (
        f"no leader: the leadership lock pg_beat:default is held by pid {pid} "
        "(psql, user postgres), not a pg_beat replica, for "
    )
    text = timed(db_url, "status")
    assert verdict_line(text).startswith(expected), text
    assert state.epoch is None
    found = json.loads(timed(db_url, "status", "--json"))
    holder = [r for r in found["lock"] if r["role"] == "holder"]
    assert [(r["pid"], r["application_name"], r["user_name"]) for r in holder] == [
        (pid, "psql", "postgres")
    ]
    assert found["verdict"]["state"] == "no leader"
    assert timed(db_url, "check", code=1).startswith(f"unhealthy: {expected}")
    outsider.execute("SELECT pg_advisory_unlock_all()")
    wait_for(lambda: state.epoch is not None)
    assert timed(db_url, "check").startswith("healthy: leader 'alpha'")


def test_an_idle_transaction_on_the_lease_row_is_named_not_a_gone_session(db_url: str) -> None:
    with replica(db_url, "r1") as (_, first):
        wait_for(lambda: first.epoch is not None)
        with replica(db_url, "r2"):
            with holding(db_url, "SELECT * FROM pg_beat_leases FOR UPDATE") as pid:
                seen: list[Any] = []

                def lease_lost() -> bool:
                    seen.append(json.loads(answered(db_url, "status", "--json")))
                    return seen[-1]["lease"]["status"] != "held"

                wait_for(lease_lost, timeout=20)  # r1's renewal waits, times out: it steps down
                message = seen[-1]["verdict"]["message"]
                assert seen[-1]["verdict"]["state"] == "blocked", message
                assert message.startswith(
                    f"blocked: pid {pid} (psql, user postgres) holds RowShareLock on "
                    "pg_beat_leases for "
                ), message
                assert "(idle in transaction)" in message
                assert "no leader: the session of 'r1' (epoch 1" in message
                line = answered(db_url, "check", code=1)
                assert f"; blocked: pid {pid} (psql, user postgres)" in line

            def next_term() -> list[Any]:
                found = json.loads(answered(db_url, "status", "--json"))
                return [t for t in found["failovers"] if t["epoch"] == 2]

            wait_for(lambda: bool(next_term()))
            (term,) = next_term()
            assert (term["previous_holder"], term["reason"]) == ("r1", "holder_gone")


# --- the truth after a failover ------------------------------------------------------------------

HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pg_beat.config import Settings
    from pg_beat.leadership.lease import LeaderState
    from pg_beat.leadership.watchdog import Watchdog

    state = LeaderState()
    settings = Settings(database_url=sys.argv[1], replica_name=sys.argv[2], lease_ttl=3.0,
                        heartbeat_interval=0.3)
    watchdog = Watchdog(settings, state, time.monotonic)
    watchdog.start()
    said = None
    while True:
        role = "leading" if state.epoch is not None else "standing by"
        if role != said:
            print(role, flush=True)
            said = role
        time.sleep(0.05)
    """
)


def test_a_killed_leader_shows_as_gone_and_the_reason_as_recorded(
    db_url: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    script = tmp_path / "replica.py"
    script.write_text(HOLDER_SCRIPT)
    procs.spawn("r1", [sys.executable, str(script), db_url, "r1"])
    wait_for(lambda: "leading" in procs.log("r1"), timeout=20)
    procs.spawn("r2", [sys.executable, str(script), db_url, "r2"])
    wait_for(lambda: "standing by" in procs.log("r2"), timeout=20)

    procs.signal("r1", signal.SIGKILL)
    wait_for(lambda: "leading" in procs.log("r2"), timeout=20)
    found = json.loads(answered(db_url, "status", "--json"))
    roles = {r["name"]: (r["role"], r["reported_role"]) for r in found["replicas"]}
    assert roles["r2"][0] == "leader"
    assert roles["r1"] == ("gone", "leader")  # its row still says leader: never a second one
    assert [r["name"] for r in found["replicas"] if r["role"] == "leader"] == ["r2"]
    (r1,) = [r for r in found["replicas"] if r["name"] == "r1"]
    assert r1["backend_alive"] is False
    term = found["failovers"][0]
    assert (term["holder"], term["previous_holder"], term["reason"]) == ("r2", "r1", "holder_gone")
    text = answered(db_url, "status")
    assert "gone (reports leader)" in text and "holder_gone" in text


def test_replicas_without_a_session_are_gone_after_their_heartbeat_stops(db_url: str) -> None:
    """Transaction pooling: no backend recorded, the replica's own heartbeat tells (no lease
    row here: gone after 4/3 of the default 5 s TTL)."""
    with connect(db_url, "test") as conn:
        conn.execute(
            """
            INSERT INTO pg_beat_replicas
                (group_name, name, host, pid, role, version, backend_pid, last_seen_at)
            VALUES ('default', 'fresh', 'h', 1, 'standby', '0', NULL, clock_timestamp()),
                   ('stale', 'stale', 'h', 2, 'leader', '0', NULL, now()),
                   ('default', 'silent', 'h', 3, 'leader', '0', NULL,
                    clock_timestamp() - interval '8 s'),
                   ('default', 'dead', 'h', 4, 'standby', '0', 999999, clock_timestamp())
            """
        )
    found = json.loads(answered(db_url, "status", "--json"))
    roles = {r["name"]: (r["role"], r["reported_role"]) for r in found["replicas"]}
    assert roles == {
        "fresh": ("standby", "standby"),
        "silent": ("gone", "leader"),
        "dead": ("gone", "standby"),
    }


# --- failing schedules ---------------------------------------------------------------------------


def test_failing_schedules_are_listed_and_counted_but_do_not_fail_check(db_url: str) -> None:
    for name in ("bad", "flaky", "fine", "worse"):
        add_schedule(db_url, name)
    with connect(db_url, "test") as conn:
        conn.execute(
            "UPDATE pg_beat_schedules SET next_run_at = NULL, "
            "last_error = 'invalid crontab minute ''61'' (0-59)' WHERE name IN ('bad', 'worse')"
        )
        conn.execute(
            "UPDATE pg_beat_schedules SET last_error = 'broker: connection refused' "
            "WHERE name = 'flaky'"
        )
    with replica(db_url, "alpha") as (_, state):
        wait_for(lambda: state.epoch is not None)
        found = json.loads(answered(db_url, "status", "--json"))
        assert found["failing_count"] == 3
        assert [(f["name"], f["parked"]) for f in found["failing_schedules"]] == [
            ("bad", True),
            ("flaky", False),
            ("worse", True),
        ]
        assert found["failing_schedules"][1]["last_error"] == "broker: connection refused"
        found = json.loads(answered(db_url, "status", "--json", "--failing", "1"))
        assert found["failing_count"] == 3 and len(found["failing_schedules"]) == 1
        text = answered(db_url, "status", "--failing", "2")
        assert "Failing schedules (3)" in text and "... and 1 more" in text
        assert "parked" in text and "running" in text
        assert answered(db_url, "check").startswith("healthy: ")  # cluster health only


def test_failing_schedules_use_the_partial_index(db_url: str) -> None:
    with connect(db_url, "test") as conn:
        conn.execute(
            """
            INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds, next_run_at,
                                           last_error)
            SELECT 's' || n, 'app.t', 'interval', 60, now(),
                   CASE WHEN n % 1000 = 0 THEN 'broken' END
            FROM generate_series(1, 20000) AS n
            """
        )
        conn.execute("ANALYZE pg_beat_schedules")

        def plan(statement: Any, **params: str) -> str:
            sql = str(statement)
            for name, value in params.items():
                sql = sql.replace(f":{name}", value)
            return " ".join(row[0] for row in conn.execute("EXPLAIN " + sql))

        assert "ix_pg_beat_schedules_failing" in plan(
            store.diagnostics.SCHEDULE_FAILURES, group="'default'", limit="10"
        )
        assert "ix_pg_beat_schedules_failing" in plan(
            store.diagnostics.COUNT_SCHEDULE_FAILURES, group="'default'"
        )
    found = json.loads(answered(db_url, "status", "--json", "--failing", "3"))
    assert found["failing_count"] == 20 and len(found["failing_schedules"]) == 3


# --- watch modes ---------------------------------------------------------------------------------


@contextmanager
def spawned(url: str, tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """``pg-beat args`` running with stdout in a file; killed if the test left it running."""
    out = tmp_path / "stdout"
    env = {**os.environ, "PG_BEAT_DATABASE_URL": url}
    with open(out, "w") as stdout:
        proc = subprocess.Popen(
            [PG_BEAT, *args], env=env, stdout=stdout, stderr=subprocess.PIPE, text=True
        )
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C (SIGINT to its pid); its exit status and stderr."""
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def test_status_watch_redraws_until_ctrl_c(db_url: str, tmp_path: Path) -> None:
    with spawned(db_url, tmp_path, "status", "--watch", "--interval", "0.3") as (proc, out):
        wait_for(lambda: out.read_text().count("verdict: no leader") >= 3)
        add_schedule(db_url, "late-comer")
        wait_for(lambda: "late-comer" in out.read_text())
        code, err = interrupt(proc)
    assert code == 0, err
    assert "Traceback" not in err and "Aborted" not in err
    assert err == ""
    assert "\x1b[" not in out.read_text()  # not a terminal: frames follow each other


def test_status_watch_redraws_at_once_on_a_schedule_change(db_url: str, tmp_path: Path) -> None:
    with spawned(db_url, tmp_path, "status", "--watch", "--interval", "60") as (proc, out):
        # The first frame is drawn after the LISTEN (the listener opens before the loop).
        wait_for(lambda: "verdict: no leader" in out.read_text())
        add_schedule(db_url, "edited")  # the insert NOTIFYs: no waiting for the interval
        wait_for(lambda: "edited" in out.read_text(), timeout=5)
        started = time.monotonic()
        code, err = interrupt(proc)
        assert time.monotonic() - started < 2  # Ctrl-C does not wait for the interval either
    assert code == 0 and err == ""
    assert out.read_text().count("verdict: ") == 2


def test_status_watch_json_is_one_object_per_line(db_url: str, tmp_path: Path) -> None:
    args = ("status", "--watch", "--json", "--interval", "0.2")
    with spawned(db_url, tmp_path, *args) as (proc, out):
        wait_for(lambda: out.read_text().count("\n") >= 3)
        code, err = interrupt(proc)
    assert code == 0 and "Traceback" not in err
    frames = [json.loads(line) for line in out.read_text().splitlines() if line]
    assert len(frames) >= 3 and all(f["verdict"]["state"] == "no leader" for f in frames)


def insert_runs(url: str, *task_ids: str, status: str = "claimed") -> None:
    with connect(url, "test") as conn:
        for task_id in task_ids:
            conn.execute(
                """
                INSERT INTO pg_beat_runs (group_name, schedule_id, schedule_name, due_at,
                                          task_id, epoch, replica, status)
                SELECT 'default', id, name, clock_timestamp(), %s, 1, 'r1', %s
                FROM pg_beat_schedules WHERE name = 'tick'
                """,
                (task_id, status),
            )


def test_runs_follow_prints_runs_as_they_are_recorded_until_ctrl_c(
    db_url: str, tmp_path: Path
) -> None:
    add_schedule(db_url, "tick")
    insert_runs(db_url, "old-run", status="sent")
    with spawned(db_url, tmp_path, "runs", "--follow", "--limit", "5") as (proc, out):
        wait_for(lambda: "old-run" in out.read_text())
        insert_runs(db_url, "run-1", "run-2")
        wait_for(lambda: "run-2" in out.read_text())
        with connect(db_url, "test") as conn:
            conn.execute(
                "UPDATE pg_beat_runs SET status = 'sent', sent_at = due_at + interval '0.25 s' "
                "WHERE task_id = 'run-1'"
            )
        wait_for(lambda: out.read_text().count("run-1") == 2)
        with connect(db_url, "test") as conn:  # a tracking worker: a retry, then a success
            conn.execute(
                "UPDATE pg_beat_runs SET outcome = 'retry', worker = 'host:1', runtime = 0.5 "
                "WHERE task_id = 'run-1'"
            )
        wait_for(lambda: out.read_text().count("run-1") == 3)
        with connect(db_url, "test") as conn:
            conn.execute(
                "UPDATE pg_beat_runs SET outcome = 'success', finished_at = now(), runtime = 2 "
                "WHERE task_id = 'run-1'"
            )
        wait_for(lambda: out.read_text().count("run-1") == 4)
        with connect(db_url, "test") as conn:  # finished: not followed any more
            conn.execute("UPDATE pg_beat_runs SET runtime = 3 WHERE task_id = 'run-1'")
        insert_runs(db_url, "run-3")
        wait_for(lambda: "run-3" in out.read_text())
        code, err = interrupt(proc)
    assert code == 0, err
    assert "Traceback" not in err and err == ""
    lines = out.read_text().splitlines()
    assert lines[0].split()[:3] == ["DUE", "SCHEDULE", "STATUS"]
    # DUE (two words), SCHEDULE, STATUS, OUTCOME, RUNTIME, LATENESS, WORKER, REPLICA, EPOCH,
    # TASK ID, NOTE
    events = [tuple(line.split()[i] for i in (3, 4, 5, 7, 10)) for line in lines[1:]]
    assert events == [
        ("sent", "-", "-", "-", "old-run"),
        ("claimed", "-", "-", "-", "run-1"),
        ("claimed", "-", "-", "-", "run-2"),
        ("sent", "-", "-", "-", "run-1"),
        ("sent", "retry", "0.5", "host:1", "run-1"),
        ("sent", "success", "2.0", "host:1", "run-1"),
        ("claimed", "-", "-", "-", "run-3"),
    ]
    assert all("250.0" in line for line in lines[4:7])  # run-1 was sent 0.25 s late


def following(url: str) -> bool:
    """A ``pg-beat runs --follow`` has read the last run id and polls for the runs after it."""
    with connect(url, "test") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_beat:%:cli' "
            "AND query LIKE '%FROM pg_beat_runs%(id > %'"
        ).fetchone()
    return row is not None and row[0] > 0


def test_runs_follow_json_lines(db_url: str, tmp_path: Path) -> None:
    add_schedule(db_url, "tick")
    args = ("runs", "--follow", "--json", "--schedule", "tick")
    with spawned(db_url, tmp_path, *args) as (proc, out):
        wait_for(lambda: following(db_url), what="runs --follow polling for new runs")
        insert_runs(db_url, "run-a", status="sent")
        wait_for(lambda: "run-a" in out.read_text())
        code, err = interrupt(proc)
    assert code == 0 and "Traceback" not in err
    (item,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert item["task_id"] == "run-a" and item["status"] == "sent" and item["epoch"] == 1


def test_runs_follow_of_an_unknown_schedule_is_one_line(db_url: str) -> None:
    done, _ = run(db_url, "runs", "--follow", "--schedule", "ghost")
    assert done.returncode == 1
    assert done.stderr == "pg-beat: error: schedule 'ghost': not found\n"


def test_status_of_a_group_nobody_uses_warns_on_stderr(db_url: str) -> None:
    from click.testing import CliRunner

    from pg_beat.cli import main

    result = CliRunner().invoke(main, ["--database-url", db_url, "--group", "typo", "status"])
    assert result.exit_code == 0, result.output
    assert "pg-beat: warning: group 'typo' has no schedules" in result.stderr
    assert "Traceback" not in result.output


def test_a_leader_whose_broker_fails_is_reported_and_check_says_so(db_url: str) -> None:
    """Each replica's row carries its own broker's state: status shows the leader's outage in
    its verdict (since when, the error, the ticks waiting) and each replica's broker; check
    (readiness) reports it; both turn healthy again once the broker works."""
    failing: dict[str, Health] = {
        "alpha": Health(clock.now() - 31.0, "ConnectionError: Connection refused", 0.0, 7)
    }

    def health(name: str) -> Health:
        return failing.get(name, Health(None, None, clock.now(), 0))

    # Handing over is off: this is about what status says while the leader keeps the lease.
    with replica(
        db_url, "alpha", broker_health=lambda: health("alpha"), broker_handover_after=0
    ) as (_, leader):
        wait_for(lambda: leader.epoch is not None)
        with replica(db_url, "beta", broker_health=lambda: health("beta")):
            wait_for(lambda: "beta" in timed(db_url, "status"), what="the standby's row")
            text = timed(db_url, "status")
            headline = verdict_line(text)
            assert headline.startswith(
                "broker unreachable: leader 'alpha' (epoch 1) cannot publish since "
            ), headline
            assert re.search(r"\(3\ds ago\), 7 tick\(s\) waiting; it keeps the lease", headline)
            assert "ConnectionError: Connection refused" in headline
            rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
            assert re.search(r"failing 3\ds$", rows["alpha"].rstrip()), rows
            assert rows["beta"].rstrip().endswith("ok"), rows
            found = json.loads(timed(db_url, "status", "--json"))
            assert found["verdict"]["state"] == "broker unreachable"
            brokers = {r["name"]: r["broker"] for r in found["replicas"]}
            assert brokers["alpha"]["state"].startswith("failing 3")
            assert brokers["alpha"]["ticks_waiting"] == 7
            assert brokers["beta"]["state"] == "ok" and brokers["beta"]["error"] is None
            line = timed(db_url, "check", code=1).strip()
            assert line.startswith("unhealthy: broker unreachable: leader 'alpha'"), line
            failing.clear()
            wait_for(lambda: run(db_url, "check")[0].returncode == 0, what="check healthy again")
