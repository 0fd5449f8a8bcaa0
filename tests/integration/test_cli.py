"""The ``pg-beat`` CLI against real PostgreSQL: commands, JSON, exit codes, one-line errors."""

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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from support import pg
from support.procs import ProcessGroup
from support.waiting import connect, wait_for

from pg_beat.cli import main
from pg_beat.config import Settings
from pg_beat.leadership.lease import LeaderState
from pg_beat.leadership.watchdog import Watchdog

pytestmark = pytest.mark.timeout(60)

PG_BEAT = str(Path(sys.executable).with_name("pg-beat"))
LOCK_KEY = 0x70676274  # pg_beat's advisory lock class id
SCHEDULE_KEYS = {
    "name",
    "task",
    "kind",
    "schedule",
    "schedule_text",
    "args",
    "kwargs",
    "options",
    "enabled",
    "one_off",
    "description",
    "misfire_policy",
    "catch_up_limit",
    "overlap_policy",
    "max_runtime",
    "run_once",
    "buffered_due_at",
    "next_run_at",
    "last_run_at",
    "total_run_count",
    "last_error",
    "source",
    "created_at",
    "updated_at",
}


# --- helpers -------------------------------------------------------------------------------------


def cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, *args], catch_exceptions=False)


def ok_json(url: str, *args: str) -> Any:
    result = cli(url, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pg-beat: error: "), lines[0]
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@contextmanager
def leader(
    url: str, name: str = "r1", progress: Callable[[], float] = time.monotonic, **settings: Any
) -> Iterator[Watchdog]:
    """A real Watchdog thread that wins the lease; released and closed afterwards."""
    options: dict[str, Any] = {"lease_ttl": 3.0, "heartbeat_interval": 0.3, "hang_timeout": 30.0}
    options.update(settings)
    state = LeaderState()
    watchdog = Watchdog(
        Settings(database_url=url, replica_name=name, **options),
        state,
        progress,
        exit_process=lambda code: None,
    )
    watchdog.start()
    try:
        wait_for(lambda: state.epoch is not None)
        yield watchdog
    finally:
        watchdog.stop()
        watchdog.join(5)
        watchdog.release()
        if watchdog.conn is not None:
            watchdog.conn.close()
        watchdog.engine.dispose()


@contextmanager
def blocked_session(
    url: str, app: str, schedule: str, *, hold_key: bool = False
) -> Iterator[tuple[int, int]]:
    """A session named ``app`` stuck on a row lock that an 'admin-psql' session holds; with
    ``hold_key``, holding the leadership lock of group 'default' first, as a leader's does.

    Yields (blocked pid, blocker pid)."""
    blocker = connect(url, "admin-psql")
    victim = connect(url, app)
    try:
        if hold_key:
            victim.execute("SELECT pg_advisory_lock(%s, hashtext('pg_beat:default'))", (LOCK_KEY,))
        blocker.execute("BEGIN")
        blocker.execute("SELECT 1 FROM pg_beat_schedules WHERE name = %s FOR UPDATE", (schedule,))
        victim_pid = victim.info.backend_pid

        def update() -> None:
            victim.execute(
                "UPDATE pg_beat_schedules SET description = 'x' WHERE name = %s", (schedule,)
            )

        thread = threading.Thread(target=update, daemon=True)
        thread.start()
        with connect(url, "observer") as observer:
            wait_for(
                lambda: (
                    observer.execute(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (victim_pid,)
                    ).fetchone()
                    == ("Lock",)
                )
            )
        yield victim_pid, blocker.info.backend_pid
        blocker.execute("ROLLBACK")
        thread.join(5)
    finally:
        blocker.close()
        victim.close()


# --- db ------------------------------------------------------------------------------------------


def test_db_commands_on_an_empty_database(empty_db_url: str) -> None:
    assert ok_json(empty_db_url, "db", "current") == {
        "current": None,
        "head": "0004_run_outcomes_overlap",
        "up_to_date": False,
        "compatible": False,
    }
    result = cli(empty_db_url, "db", "check")
    assert result.exit_code == 1
    assert "pg-beat db upgrade" in result.output

    result = cli(empty_db_url, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "0004_run_outcomes_overlap" in result.stdout
    assert ok_json(empty_db_url, "db", "current")["up_to_date"] is True
    result = cli(empty_db_url, "db", "check")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: at 0004_run_outcomes_overlap (head), no drift"
    assert ok_json(empty_db_url, "db", "check") == {
        "ok": True,
        "current": "0004_run_outcomes_overlap",
        "head": "0004_run_outcomes_overlap",
        "reason": None,
    }

    result = cli(empty_db_url, "db", "downgrade", "base")
    assert result.exit_code == 0, result.output
    assert ok_json(empty_db_url, "db", "current")["current"] is None


def test_db_check_reports_an_invalid_index(db_url: str) -> None:
    # An index as a CREATE INDEX CONCURRENTLY leaves it when it times out waiting for an older
    # transaction: in the catalog, but not valid.
    with connect(db_url, "old snapshot") as old, connect(db_url) as conn:
        old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        old.execute("SELECT 1")
        conn.execute("DROP INDEX ix_pg_beat_schedules_failing")
        conn.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute(
                "CREATE INDEX CONCURRENTLY ix_pg_beat_schedules_failing "
                "ON pg_beat_schedules (group_name) WHERE last_error IS NOT NULL"
            )
    result = cli(db_url, "db", "check")
    assert result.exit_code == 1
    fix = "REINDEX INDEX CONCURRENTLY ix_pg_beat_schedules_failing"
    assert result.stdout.strip() == (
        f"invalid index ix_pg_beat_schedules_failing (a concurrent build that failed): run '{fix}'"
    )
    assert json.loads(cli(db_url, "db", "check", "--json").stdout)["ok"] is False
    with connect(db_url) as conn:
        conn.execute(fix)
    result = cli(db_url, "db", "check")
    assert result.exit_code == 0, result.output


def test_unknown_revision_is_one_line(empty_db_url: str) -> None:
    assert_one_line_error(cli(empty_db_url, "db", "upgrade", "nope"), 1, "migration failed")


def test_commands_refuse_an_unmigrated_schema(empty_db_url: str) -> None:
    for args in (("status",), ("check",), ("schedules", "list"), ("runs",)):
        assert_one_line_error(cli(empty_db_url, *args), 1, "not migrated", "'pg-beat db upgrade'")


# --- connection errors ---------------------------------------------------------------------------


def test_database_down_exits_3_without_password() -> None:
    url = f"postgresql://beat:s3cret@127.0.0.1:{pg.free_port()}/nothing"
    for args in (("status",), ("schedules", "list"), ("db", "current"), ("db", "upgrade")):
        line = assert_one_line_error(cli(url, *args), 3, "cannot reach the database")
        assert "s3cret" not in line
        assert "beat:***@127.0.0.1" in line


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("notaurl", "invalid database URL"),
        ("mysql://u:pw@localhost/db", "unsupported database URL scheme"),
        ("postgresql://u:pw@localhost:notaport/db", "invalid database URL"),
    ],
)
def test_bad_url(url: str, needle: str) -> None:
    line = assert_one_line_error(cli(url, "status"), 1, needle)
    assert ":pw@" not in line


def test_missing_url_and_usage_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_BEAT_DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, ["status"])
    assert_one_line_error(result, 2, "no database URL", "PG_BEAT_DATABASE_URL")
    result = CliRunner().invoke(main, ["schedules", "add", "only-a-name"])
    assert_one_line_error(result, 2, "Missing argument 'TASK'", "pg-beat schedules add --help")
    result = CliRunner().invoke(main, ["--bogus"])
    assert_one_line_error(result, 2, "No such option")


# --- schedules -----------------------------------------------------------------------------------


def test_schedules_happy_path(db_url: str) -> None:
    result = cli(
        db_url,
        "schedules",
        "add",
        "report",
        "reports.nightly",
        "--cron",
        "0 3 * * *",
        "--tz",
        "Europe/Berlin",
        "--args",
        "[1, 2]",
        "--kwargs",
        '{"full": true}',
        "--queue",
        "reports",
        "--priority",
        "3",
        "--expires",
        "600",
        "--misfire",
        "catch_up",
        "--catch-up-limit",
        "5",
        "--description",
        "the nightly report",
        "--start",
        "2026-01-01T00:00Z",
        "--end",
        "2030-01-01T00:00+01:00",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "added schedule 'report': reports.nightly, cron '0 3 * * *' Europe/Berlin"
    )
    shown = ok_json(db_url, "schedules", "show", "report")
    assert set(shown) == SCHEDULE_KEYS | {"health"}
    assert shown["kind"] == "crontab"
    assert shown["args"] == [1, 2] and shown["kwargs"] == {"full": True}
    assert shown["options"] == {"queue": "reports", "priority": 3, "expires": 600.0}
    assert shown["misfire_policy"] == "catch_up" and shown["catch_up_limit"] == 5
    assert shown["schedule"]["timezone"] == "Europe/Berlin"
    assert shown["schedule"]["end_time"] == "2029-12-31T23:00:00+00:00"

    added = ok_json(db_url, "schedules", "add", "tick", "app.tick", "--every", "30s")
    assert added["schedule_text"] == "every 30s" and added["enabled"] is True
    # A year ahead of today, whatever today is: a fixed date becomes the past, and the CLI
    # refuses a one-off time in the past.
    at = datetime.now(timezone.utc).replace(hour=9, minute=0, second=0, microsecond=0)
    at += timedelta(days=365)
    added = ok_json(
        db_url, "schedules", "add", "once", "app.once", "--at", at.strftime("%Y-%m-%dT%H:%MZ"),
        "--one-off",
    )  # fmt: skip
    assert added["schedule"]["clocked_at"] == at.isoformat()
    assert added["one_off"] is True
    added = ok_json(
        db_url,
        "schedules",
        "add",
        "dusk",
        "app.lights",
        "--solar",
        "sunset",
        "--lat",
        "52.52",
        "--lon",
        "13.40",
        "--disabled",
    )
    assert added["kind"] == "solar" and added["enabled"] is False

    listed = ok_json(db_url, "schedules", "list")
    assert sorted(item["name"] for item in listed) == ["dusk", "once", "report", "tick"]
    assert all(set(item) == SCHEDULE_KEYS | {"health"} for item in listed)
    table = cli(db_url, "schedules", "list").stdout.splitlines()
    assert table[0].split() == [
        "NAME", "TASK", "SCHEDULE", "ENABLED", "NEXT", "DUE", "LAST", "RUN", "RUNS", "HEALTH",
        "LAST", "ERROR",
    ]  # fmt: skip
    assert any(line.startswith("tick ") and "every 30s" in line for line in table)

    updated = ok_json(db_url, "schedules", "update", "report", "--queue", "urgent", "--end", "none")
    assert updated["options"] == {"queue": "urgent", "priority": 3, "expires": 600.0}
    assert "end_time" not in updated["schedule"]
    updated = ok_json(db_url, "schedules", "update", "tick", "--every", "1m", "--task", "app.t2")
    assert updated["schedule_text"] == "every 1m" and updated["task"] == "app.t2"
    result = cli(db_url, "schedules", "update", "tick", "--cron", "*/5 * * * *")
    assert result.exit_code == 0, result.output
    assert "cron '*/5 * * * *' UTC" in result.stdout

    assert ok_json(db_url, "schedules", "disable", "tick")["enabled"] is False
    assert cli(db_url, "schedules", "enable", "tick").stdout.startswith("enabled schedule 'tick'")
    # dusk was added disabled: one tick, and it stays disabled.
    assert ok_json(db_url, "schedules", "run-now", "dusk") == {
        "name": "dusk",
        "action": "run-now",
        "ok": True,
        "enabled": False,
    }
    assert cli(db_url, "schedules", "run-now", "dusk").stdout.strip() == (
        "schedule 'dusk' made due now, once: it stays disabled"
    )
    assert cli(db_url, "schedules", "run-now", "tick").stdout.strip() == (
        "schedule 'tick' made due now"
    )
    help_text = " ".join(cli(db_url, "schedules", "run-now", "--help").stdout.split())
    assert "A disabled schedule sends one tick and stays disabled" in help_text
    shown = ok_json(db_url, "schedules", "show", "dusk")
    assert shown["enabled"] is False and shown["next_run_at"] is None
    text = cli(db_url, "schedules", "show", "dusk").stdout
    assert "solar sunset (52.52, 13.40)" in text and "next due" in text

    assert cli(db_url, "schedules", "remove", "dusk").stdout.strip() == "schedule 'dusk' removed"
    assert_one_line_error(cli(db_url, "schedules", "show", "dusk"), 1, "'dusk'", "not found")


def test_schedule_validation_errors(db_url: str) -> None:
    add = ("schedules", "add", "bad", "app.task")
    assert_one_line_error(
        cli(db_url, *add, "--cron", "61 * * * *"), 1, "--cron: minute '61'", "0-59"
    )
    assert_one_line_error(cli(db_url, *add, "--cron", "* * *"), 1, "must have 5 fields")
    assert_one_line_error(
        cli(db_url, *add, "--cron", "0 3 * * *", "--tz", "Mars/Olympus"), 1, "Mars/Olympus"
    )
    assert_one_line_error(cli(db_url, *add, "--every", "soon"), 1, "invalid duration 'soon'")
    assert_one_line_error(cli(db_url, *add, "--at", "2030-12-01T09:00"), 1, "--at", "no timezone")
    assert_one_line_error(cli(db_url, *add, "--at", "tomorrow"), 1, "not an ISO 8601 time")
    assert_one_line_error(cli(db_url, *add, "--solar", "sunset"), 2, "--lat and --lon")
    assert_one_line_error(cli(db_url, *add, "--every", "1m", "--args", "[1,"), 1, "not valid JSON")
    assert_one_line_error(cli(db_url, *add, "--every", "1m", "--args", "{}"), 1, "args")
    assert_one_line_error(cli(db_url, *add, "--every", "1m", "--misfire", "later"), 1, "'later'")
    assert_one_line_error(cli(db_url, *add), 2, "say when it runs")
    assert_one_line_error(
        cli(db_url, *add, "--every", "1m", "--cron", "* * * * *"), 2, "give only one of"
    )
    assert ok_json(db_url, "schedules", "list") == []  # nothing was written

    assert cli(db_url, "schedules", "add", "dup", "app.task", "--every", "1m").exit_code == 0
    assert_one_line_error(
        cli(db_url, "schedules", "add", "dup", "app.task", "--every", "1m"), 1, "already exists"
    )
    assert_one_line_error(cli(db_url, "schedules", "update", "dup", "--cron", "* 25 * * *"), 1,
                          "--cron: hour '25'")  # fmt: skip
    assert_one_line_error(cli(db_url, "schedules", "update", "dup"), 2, "nothing to update")


@pytest.mark.parametrize(
    "args",
    [
        ("schedules", "show", "ghost"),
        ("schedules", "update", "ghost", "--every", "5s"),
        ("schedules", "update", "ghost", "--queue", "q"),
        ("schedules", "enable", "ghost"),
        ("schedules", "disable", "ghost"),
        ("schedules", "remove", "ghost"),
        ("schedules", "run-now", "ghost"),
        ("runs", "--schedule", "ghost"),
    ],
)
def test_unknown_schedule(db_url: str, args: tuple[str, ...]) -> None:
    assert_one_line_error(cli(db_url, *args), 1, "schedule 'ghost': not found")


def test_update_of_a_locked_schedule_names_the_problem(db_url: str) -> None:
    assert cli(db_url, "schedules", "add", "tick", "app.tick", "--every", "1h").exit_code == 0
    with connect(db_url, "admin-psql") as admin:
        admin.execute("BEGIN")
        admin.execute("SELECT 1 FROM pg_beat_schedules WHERE name = 'tick' FOR UPDATE")
        result = cli(db_url, "schedules", "update", "tick", "--every", "5s")
        assert_one_line_error(result, 1, "schedule 'tick'", "locked by another session")
        found = ok_json(db_url, "status", "--long-transaction", "0")
        assert admin.info.backend_pid in [t["pid"] for t in found["long_transactions"]]
        admin.execute("ROLLBACK")


# --- runs ----------------------------------------------------------------------------------------


RUN_KEYS = {
    "id", "schedule", "due_at", "claimed_at", "sent_at", "status", "lateness_ms", "replica",
    "epoch", "task_id", "error", "reason", "worker", "started_at", "finished_at", "outcome",
    "runtime", "outcome_error", "attempts", "duplicates",
}  # fmt: skip


def test_runs(db_url: str) -> None:
    assert cli(db_url, "schedules", "add", "tick", "app.tick", "--every", "1h").exit_code == 0
    with connect(db_url, "test") as conn:
        conn.execute(
            """
            INSERT INTO pg_beat_runs
                (group_name, schedule_id, schedule_name, due_at, task_id, epoch, replica,
                 status, claimed_at, sent_at)
            SELECT 'default', id, name, now() - make_interval(mins => n), 'task-' || n, 7, 'r1',
                   'sent', now() - make_interval(mins => n),
                   now() - make_interval(mins => n) + interval '0.25 s'
            FROM pg_beat_schedules, generate_series(1, 30) AS n WHERE name = 'tick'
            """
        )
    rows = ok_json(db_url, "runs", "--since", "10m")
    assert [r["task_id"] for r in rows] == [f"task-{n}" for n in range(1, 10)]
    assert set(rows[0]) == RUN_KEYS
    assert rows[0]["lateness_ms"] == 250.0 and rows[0]["epoch"] == 7
    assert len(ok_json(db_url, "runs", "--limit", "3", "--schedule", "tick")) == 3
    assert len(ok_json(db_url, "runs", "--since", "2000-01-01T00:00Z")) == 30
    table = cli(db_url, "runs", "--limit", "2").stdout.splitlines()
    assert table[0].split() == ["DUE", "SCHEDULE", "STATUS", "OUTCOME", "RUNTIME", "S",
                                "LATENESS", "MS", "WORKER", "REPLICA", "EPOCH", "TASK", "ID",
                                "NOTE"]  # fmt: skip
    assert "250.0" in table[1] and "task-1" in table[1]
    assert_one_line_error(cli(db_url, "runs", "--since", "yesterday"), 1, "--since")


def insert_outcomes(url: str) -> None:
    """Runs of 'tick' as the workers and the leader's overlap policy record them: a success,
    a failure, a lost run, a pending retry, a skipped tick, a tick that could not be sent."""
    with connect(url, "test") as conn:
        conn.execute(
            """
            INSERT INTO pg_beat_runs
                (group_name, schedule_id, schedule_name, due_at, task_id, epoch, replica, status,
                 claimed_at, sent_at, error, reason, worker, started_at, finished_at, outcome,
                 runtime, outcome_error, attempts, duplicates)
            SELECT 'default', s.id, s.name, now() - make_interval(mins => n), t, 3, 'r1', st,
                   now() - make_interval(mins => n), now() - make_interval(mins => n), err, why,
                   w, now() - make_interval(mins => n),
                   CASE WHEN o IN ('success', 'failure', 'lost') THEN now() END, o, rt, oe, a, d
            FROM pg_beat_schedules s, (VALUES
                (1, 'ok-1', 'sent', NULL, NULL, 'host:11', 'success', 1.25, NULL, 1, 0),
                (2, 'bad-2', 'sent', NULL, NULL, 'host:11', 'failure', 0.5,
                 'ZeroDivisionError: division by zero', 1, 0),
                (3, 'lost-3', 'sent', NULL, NULL, 'host:12', 'lost', NULL, NULL, 1, 0),
                (4, 'retry-4', 'sent', NULL, NULL, 'host:11', 'retry', 0.1, 'Retry in 5s', 2, 1),
                (5, 'skip-5', 'skipped', NULL, 'overlap: previous run ok-1 still running', NULL,
                 NULL, NULL, NULL, NULL, NULL),
                (6, 'fail-6', 'failed', 'message too large', NULL, NULL, NULL, NULL, NULL, NULL,
                 NULL)
            ) AS v(n, t, st, err, why, w, o, rt, oe, a, d)
            WHERE s.name = 'tick'
            """
        )


def test_runs_show_outcomes_and_filter_failed(db_url: str) -> None:
    assert cli(db_url, "schedules", "add", "tick", "app.tick", "--every", "1h").exit_code == 0
    insert_outcomes(db_url)
    rows = {r["task_id"]: r for r in ok_json(db_url, "runs")}
    assert all(set(r) == RUN_KEYS for r in rows.values())
    ok, bad, retry = rows["ok-1"], rows["bad-2"], rows["retry-4"]
    assert (ok["outcome"], ok["runtime"], ok["worker"], ok["attempts"]) == (
        "success", 1.25, "host:11", 1,
    )  # fmt: skip
    assert ok["started_at"] is not None and ok["finished_at"] is not None
    assert bad["outcome_error"] == "ZeroDivisionError: division by zero"
    assert (retry["outcome"], retry["finished_at"], retry["duplicates"]) == ("retry", None, 1)
    assert rows["skip-5"]["reason"] == "overlap: previous run ok-1 still running"

    failed = ok_json(db_url, "runs", "--failed")
    assert [r["task_id"] for r in failed] == ["bad-2", "lost-3", "fail-6"]
    assert [r["task_id"] for r in ok_json(db_url, "runs", "--outcome", "success")] == ["ok-1"]
    assert ok_json(db_url, "runs", "--outcome", "revoked") == []
    assert [r["task_id"] for r in ok_json(db_url, "runs", "--failed", "--limit", "1")] == ["bad-2"]

    table = {line.split()[10]: line for line in cli(db_url, "runs").stdout.splitlines()[1:]}
    assert table["ok-1"].split()[3:7] == ["sent", "success", "1.25", "0.0"]
    assert table["ok-1"].split()[7] == "host:11"
    assert table["bad-2"].endswith("ZeroDivisionError: division by zero")
    assert table["skip-5"].endswith("overlap: previous run ok-1 still running")
    assert table["fail-6"].endswith("message too large")
    assert table["lost-3"].split()[3:6] == ["sent", "lost", "-"]


def make_unhealthy(url: str) -> None:
    """'flaky' failed 3 times in a row, its last success 5 minutes ago (every 1m: overdue);
    'steady' succeeded 20 s ago; 'quiet' is not tracked."""
    for name in ("flaky", "steady", "quiet"):
        assert cli(url, "schedules", "add", name, f"app.{name}", "--every", "1m").exit_code == 0
    with connect(url, "test") as conn:
        conn.execute(
            "UPDATE pg_beat_schedules SET next_run_at = now() + interval '30 s', "
            "last_run_at = now() - interval '20 s'"
        )
        conn.execute(
            """
            INSERT INTO pg_beat_schedule_health (schedule_id, group_name, last_outcome,
                last_finished_at, last_success_at, last_failure_at, consecutive_failures,
                last_error)
            SELECT id, group_name, o, now() - interval '20 s', ls, lf, c, e
            FROM pg_beat_schedules JOIN (VALUES
                ('flaky', 'failure', now() - interval '5 min', now() - interval '20 s', 3,
                 'KeyError: ''account'''),
                ('steady', 'success', now() - interval '20 s', NULL, 0, NULL)
            ) AS v(n, o, ls, lf, c, e) ON v.n = name
            """
        )
        # steady's runtimes: 1..10 s over its last ten finished runs
        conn.execute(
            """
            INSERT INTO pg_beat_runs (group_name, schedule_id, schedule_name, due_at, task_id,
                                      epoch, replica, status, finished_at, outcome, runtime)
            SELECT 'default', id, name, now() - make_interval(mins => n), 's-' || n, 1, 'r',
                   'sent', now(), 'success', n
            FROM pg_beat_schedules, generate_series(1, 10) AS n WHERE name = 'steady'
            """
        )


def test_schedules_list_and_show_health(db_url: str) -> None:
    make_unhealthy(db_url)
    table = cli(db_url, "schedules", "list").stdout.splitlines()
    health_at = table[0].index("HEALTH")
    column = {line.split()[0]: line[health_at:].split("  ")[0] for line in table[1:]}
    assert column == {"flaky": "failing x3, overdue 5m", "steady": "ok", "quiet": "untracked"}
    # A factor large enough forgives the 5 minutes.
    listed = {
        i["name"]: i["health"]
        for i in ok_json(db_url, "schedules", "list", "--overdue-factor", "10")
    }
    assert listed["flaky"]["state"] == "failing" and listed["flaky"]["overdue"] is False
    assert listed["flaky"]["consecutive_failures"] == 3
    assert listed["steady"]["state"] == "ok" and listed["quiet"]["tracked"] is False
    assert "runtime" not in listed["steady"]
    limited = ok_json(db_url, "schedules", "list", "--limit", "1")
    assert len(limited) == 1 and limited[0]["health"] is not None

    shown = ok_json(db_url, "schedules", "show", "steady")["health"]
    assert shown["runtime"] == {"runs": 10, "p50": 5.5, "p95": pytest.approx(9.55)}
    assert shown["last_outcome"] == "success" and shown["period"] == 60.0
    flaky = ok_json(db_url, "schedules", "show", "flaky")["health"]
    assert flaky["overdue"] is True and 290 < flaky["overdue_for"] < 400
    assert flaky["last_error"] == "KeyError: 'account'" and flaky["runtime"]["runs"] == 0

    text = cli(db_url, "schedules", "show", "flaky").stdout
    assert "\nhealth             failing x3, overdue 5m\n" in text
    assert "\nfailures in a row  3\n" in text
    assert "\nlast task error    KeyError: 'account'\n" in text
    assert "\noverdue            yes (reference " in text and "period 1m)" in text
    steady = cli(db_url, "schedules", "show", "steady").stdout
    assert "\nruntime            p50 5.5s, p95 9.55s (last 10 finished runs)" in steady
    quiet = cli(db_url, "schedules", "show", "quiet").stdout
    assert "untracked (no worker recorded an outcome" in quiet


def test_failing_tasks_do_not_change_the_cluster_verdict(db_url: str) -> None:
    make_unhealthy(db_url)
    with leader(db_url, "alpha"):
        found = ok_json(db_url, "status")
        assert found["verdict"]["state"] == "healthy", found["verdict"]
        tasks = found["task_health"]
        assert (tasks["failing_count"], tasks["overdue_count"]) == (1, 1)
        assert [s["name"] for s in tasks["schedules"]] == ["flaky"]
        result = cli(db_url, "status")
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        assert lines[0].startswith("verdict: healthy")
        assert lines[1].startswith("tasks: 1 schedule(s) failing, 1 overdue")
        assert "failing x3, overdue 5m" in result.stdout
        assert cli(db_url, "check").exit_code == 0
        found = ok_json(db_url, "status", "--overdue-factor", "10", "--unhealthy", "0")
        assert (found["task_health"]["overdue_count"], found["task_health"]["schedules"]) == (
            0, [],
        )  # fmt: skip


# --- status and check ----------------------------------------------------------------------------

STATUS_KEYS = {
    "group", "db_now", "verdict", "unreadable", "blockers", "lease", "replicas", "lock",
    "locks", "blocked", "leader_backends", "failovers", "next_due", "failing_schedules",
    "failing_count", "task_health", "long_transactions",
}  # fmt: skip
CHECK_KEYS = {"healthy", "state", "message", "lease", "unreadable"}


def test_status_no_leader(db_url: str) -> None:
    found = ok_json(db_url, "status")
    assert set(found) == STATUS_KEYS
    assert found["verdict"]["state"] == "no leader"
    assert found["lease"]["status"] == "free"
    assert found["unreadable"] == [] and found["blockers"] == []
    assert found["failing_count"] == 0 and found["failing_schedules"] == []
    result = cli(db_url, "check")
    assert result.exit_code == 1
    assert result.stdout.startswith("unhealthy: no leader")
    result = cli(db_url, "check", "--json")
    assert result.exit_code == 1
    checked = json.loads(result.stdout)
    assert set(checked) == CHECK_KEYS
    assert checked["healthy"] is False and checked["state"] == "no leader"
    assert checked["lease"]["status"] == "free" and checked["unreadable"] == []
    assert cli(db_url, "status").stdout.startswith("verdict: no leader")


def test_status_healthy_with_a_real_leader_and_standby(db_url: str) -> None:
    assert cli(db_url, "schedules", "add", "tick", "app.tick", "--every", "1h").exit_code == 0
    with connect(db_url, "test") as conn:
        conn.execute("UPDATE pg_beat_schedules SET next_run_at = now() + interval '30 s'")
    with leader(db_url, "alpha") as alpha, leader_standby(db_url, "beta"):
        # The standby queues on the advisory lock in 1 s waits: catch a moment it is queued.
        seen: list[Any] = []

        def standby_queued() -> bool:
            seen.append(ok_json(db_url, "status"))
            return len(seen[-1]["lock"]) == 2 and len(seen[-1]["replicas"]) == 2

        wait_for(standby_queued)
        found = seen[-1]
        assert found["verdict"]["state"] == "healthy", found["verdict"]
        assert "alpha" in found["verdict"]["message"]
        lease = found["lease"]
        assert lease["holder"] == "alpha" and lease["status"] == "held"
        assert lease["epoch"] == alpha.epoch and lease["pid"] == os.getpid()
        assert 0 <= lease["heartbeat_age"] < 2 and lease["expires_in"] > 0
        roles = {r["name"]: (r["role"], r["reported_role"]) for r in found["replicas"]}
        assert roles == {"alpha": ("leader", "leader"), "beta": ("standby", "standby")}
        assert all(r["backend_alive"] for r in found["replicas"])
        lock = {r["role"]: r for r in found["lock"]}
        assert lock["holder"]["pid"] == alpha.backend_pid
        assert lock["holder"]["user_name"] == "postgres"
        assert re.fullmatch(r"pg_beat:[0-9a-f]{8}:beta:standby", lock["waiter"]["application_name"])
        assert found["blocked"] == []  # a standby queued on the lock is not "blocked"
        assert found["blockers"] == []
        assert [t["holder"] for t in found["failovers"]] == ["alpha"]
        assert found["failovers"][0]["reason"] == "free"
        assert [d["name"] for d in found["next_due"]] == ["tick"]
        assert 0 < found["next_due"][0]["due_in"] <= 30

        result = cli(db_url, "check")
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("healthy: leader 'alpha'")
        assert ok_json(db_url, "check")["healthy"] is True

        text = cli(db_url, "status").stdout
        assert text.startswith("verdict: healthy")
        for title in ("Lease", "Replicas", "Advisory lock", "Recent terms", "Failing schedules",
                      "Next due"):  # fmt: skip
            assert f"\n{title}" in text


@contextmanager
def leader_standby(url: str, name: str) -> Iterator[Watchdog]:
    state = LeaderState()
    watchdog = Watchdog(
        Settings(database_url=url, replica_name=name, lease_ttl=3.0, heartbeat_interval=1.0),
        state,
        time.monotonic,
        exit_process=lambda code: None,
    )
    watchdog.start()
    try:
        yield watchdog
    finally:
        watchdog.stop()
        watchdog.join(5)
        if watchdog.conn is not None:
            watchdog.conn.close()
        watchdog.engine.dispose()


def test_check_fails_when_the_loop_stalls(db_url: str) -> None:
    # The loop last progressed 12 s ago; the hang timeout (30 s) still lets the lease renew.
    with leader(db_url, "slow", progress=lambda: time.monotonic() - 12):

        def progress_age() -> float:
            result = cli(db_url, "check", "--json", "--max-stall", "60")
            assert result.exit_code == 0, result.output
            return float(json.loads(result.stdout)["lease"]["progress_age"])

        wait_for(lambda: progress_age() > 11)
        result = cli(db_url, "check")
        assert result.exit_code == 1
        assert "dispatch loop made no progress" in result.stdout
        assert "'slow'" in result.stdout
        assert cli(db_url, "check", "--max-stall", "20").exit_code == 0
        assert ok_json(db_url, "status")["verdict"]["state"] == "leader stale"


def test_status_names_what_a_stale_leader_waits_on(db_url: str) -> None:
    assert cli(db_url, "schedules", "add", "tick", "app.tick", "--every", "1h").exit_code == 0
    with blocked_session(db_url, "pg_beat:0badc0de:hung-1:leader", "tick", hold_key=True) as (
        hung_pid,
        blocker_pid,
    ):
        with connect(db_url, "test") as conn:
            conn.execute(
                """
                INSERT INTO pg_beat_leases (group_name, epoch, holder, host, pid, backend_pid,
                    acquired_at, heartbeat_at, expires_at, progress_at)
                VALUES ('default', 3, 'hung-1', 'host-a', 4242, %s, now() - interval '20 s',
                    now() - interval '10 s', now() - interval '5 s', now() - interval '10 s')
                """,
                (hung_pid,),
            )
        found = ok_json(db_url, "status")
        message = found["verdict"]["message"]
        # Who blocks comes first; then the leader's judgement, with what its backend waits on.
        assert found["verdict"]["state"] == "blocked", message
        assert message.startswith(
            f"blocked: pid {blocker_pid} (admin-psql, user postgres) holds RowShareLock on "
            "pg_beat_schedules for "
        )
        assert (
            f"; pg_beat waits behind it: pid {hung_pid} (pg_beat:0badc0de:hung-1:leader); "
            in message
        )
        assert "; leader stale: 'hung-1' (epoch 3) has not renewed" in message
        assert (
            f"backend {hung_pid} (pg_beat:0badc0de:hung-1:leader) waits on Lock/transactionid"
            in message
        )
        assert f"blocked by pid {blocker_pid} (admin-psql, idle in transaction" in message
        assert found["lease"]["status"] == "hung" and found["lease"]["backend_alive"] is True
        (backend,) = found["leader_backends"]
        assert backend["pid"] == hung_pid and backend["blocked_by"][0]["pid"] == blocker_pid
        assert [b["pid"] for b in found["blockers"]] == [blocker_pid]

        result = cli(db_url, "check")
        assert result.exit_code == 1
        assert result.stdout.startswith("unhealthy: leader stale: 'hung-1'")
        assert "Lock/transactionid" in result.stdout
        assert f"; blocked: pid {blocker_pid} (admin-psql, user postgres)" in result.stdout
        text = cli(db_url, "status").stdout
        assert "Leader's backends" in text and "admin-psql" in text
        assert "\nBlocking pg_beat\n" in text


def test_status_blocked(db_url: str) -> None:
    assert cli(db_url, "schedules", "add", "tick", "app.tick", "--every", "1h").exit_code == 0
    with (
        leader(db_url, "alpha"),
        blocked_session(db_url, "pg_beat:alpha:api", "tick") as (victim, blocker),
    ):
        found = ok_json(db_url, "status")
        message = found["verdict"]["message"]
        assert found["verdict"]["state"] == "blocked", found["verdict"]
        assert message.startswith(f"blocked: pid {blocker} (admin-psql, user postgres) holds ")
        assert f"pg_beat waits behind it: pid {victim} (pg_beat:alpha:api)" in message
        assert "; leader 'alpha' (epoch" in message  # the leader itself is fine
        assert [b["pid"] for b in found["blocked"]] == [victim]
        (blocking,) = found["blockers"]
        assert blocking["pid"] == blocker and blocking["why"] == "blocks"
        assert [w["pid"] for w in blocking["blocks"]] == [victim]
        assert cli(db_url, "check").exit_code == 0  # the leader itself is fine
        assert found["long_transactions"] == []  # open for less than 5 s
        found = ok_json(db_url, "status", "--long-transaction", "0")
        (admin,) = [t for t in found["long_transactions"] if t["pid"] == blocker]
        assert admin["tables"] == ["pg_beat_schedules"]
        assert admin["state"] == "idle in transaction"


# --- the real console script ---------------------------------------------------------------------

HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pg_beat.config import Settings
    from pg_beat.leadership.lease import LeaderState
    from pg_beat.leadership.watchdog import Watchdog

    state = LeaderState()
    settings = Settings(database_url=sys.argv[1], replica_name="paused-1", lease_ttl=1.5,
                        heartbeat_interval=0.3)
    watchdog = Watchdog(settings, state, time.monotonic)
    watchdog.start()
    while state.epoch is None:
        time.sleep(0.05)
    print("leading", flush=True)
    while True:
        time.sleep(1)
    """
)


def test_console_script_sees_a_paused_leader(
    db_url: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER_SCRIPT)
    procs.spawn("holder", [sys.executable, str(script), db_url])
    wait_for(lambda: "leading" in procs.log("holder"), timeout=20)
    env = {**os.environ, "PG_BEAT_DATABASE_URL": db_url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PG_BEAT, *args], env=env, capture_output=True, text=True, timeout=30, check=False
        )

    assert run("check").returncode == 0
    procs.signal("holder", signal.SIGSTOP)
    try:
        with connect(db_url, "test") as conn:
            # Past the 1.5 s lease of the paused holder, by the database clock check goes by.
            expired = "SELECT expires_at < clock_timestamp() FROM pg_beat_leases"
            wait_for(lambda: conn.execute(expired).fetchone() == (True,), timeout=10)
        checked = run("check")
        assert checked.returncode == 1, checked
        assert checked.stdout.startswith("unhealthy: leader stale: 'paused-1'")
        # Idle, or idle in transaction when SIGSTOP fell inside one of its short transactions.
        assert re.search(
            r"is idle( in transaction)? \(the process is not talking to the database",
            checked.stdout,
        ), checked.stdout
        shown = run("status")
        assert shown.returncode == 0 and shown.stderr == ""
        assert shown.stdout.startswith("verdict: leader stale: 'paused-1'")
    finally:
        procs.signal("holder", signal.SIGCONT)


def test_console_script_database_down() -> None:
    url = f"postgresql://beat:s3cret@127.0.0.1:{pg.free_port()}/x"
    done = subprocess.run(
        [PG_BEAT, "--database-url", url, "status"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("pg-beat: error: cannot reach")
    assert "s3cret" not in done.stderr


def test_follow_with_failed_prints_only_failed_runs_but_follows_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pg_beat.cli.runs import Follower, RunFilter

    def run(run_id: int, status: str, outcome: str | None = None) -> dict[str, Any]:
        finished = datetime.now(timezone.utc) if outcome in ("success", "failure") else None
        return dict.fromkeys(RUN_KEYS - {"lateness_ms", "schedule"}) | {
            "id": run_id, "schedule_name": "tick", "status": status, "outcome": outcome,
            "finished_at": finished, "task_id": f"t-{run_id}", "lateness": None,
        }  # fmt: skip

    follower = Follower("default", None, True, keeps=RunFilter(failed=True).keeps)
    follower.start(0, [run(1, "sent"), run(2, "failed"), run(3, "claimed")])
    follower.show([run(1, "sent", "failure"), run(3, "sent", "success")])
    printed = [json.loads(line)["task_id"] for line in capsys.readouterr().out.splitlines()]
    assert printed == ["t-2", "t-1"]  # t-1 once it failed; t-3 succeeded
    assert follower.pending == {} and follower.after == 3
