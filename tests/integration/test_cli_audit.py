"""``pg-beat runs audit`` against real PostgreSQL: run rows written by a real in-process
replica (watchdog, lease, dispatch loop), worker-side data written by hand as the contract
says (pg_beat_executions, the run's outcome columns, pg_beat_schedule_health)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from support.inproc import replica
from support.pg import libpq_url as libpq
from support.waiting import wait_for

from pg_beat.api import ScheduleManager
from pg_beat.cli import audit as cli_audit
from pg_beat.cli import main
from pg_beat.cli.audit import EXIT_FINDINGS

pytestmark = pytest.mark.timeout(60)

#: Ticks each test has the replica send before it looks.
TICKS = 6
#: Seconds a tick may take to be sent or started before the audit judges it.
SETTLE = 0.5


def sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def sent_runs(url: str, name: str) -> list[tuple[datetime, str]]:
    """(due_at, task_id) of the schedule's sent runs, oldest first."""
    return [
        (r[0], r[1])
        for r in sql(
            url,
            "SELECT due_at, task_id FROM pg_beat_runs WHERE schedule_name = %s "
            "AND status = 'sent' ORDER BY due_at",
            name,
        )
    ]


def produce(url: str, *names: str, every: float = 0.2, **create: Any) -> list[Any]:
    """Schedules (``beat`` by default) ticked by a real replica until TICKS runs of each are
    sent; the sent runs of the first."""
    names = names or ("beat",)
    with replica(url) as rep:
        with ScheduleManager(url) as api:  # planned at once, by the next step
            for name in names:
                api.create(name, f"t.{name}", every=every, **create)
        rep.run_until(lambda: all(len(sent_runs(url, n)) >= TICKS for n in names), timeout=20)
    return sent_runs(url, names[0])


def audit(url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["--database-url", url, "runs", "audit", *args], catch_exceptions=False
    )


def settled(url: str) -> None:
    """Wait until every run was sent more than SETTLE ago (by the database clock)."""
    wait_for(
        lambda: sql(
            url,
            "SELECT coalesce(max(sent_at), now()) < clock_timestamp() - %s * interval '1 s' "
            "FROM pg_beat_runs",
            SETTLE,
        )[0][0],
        what="the settle time to pass",
    )


def audit_json(url: str, until: datetime, *args: str) -> tuple[int, dict[str, Any]]:
    """The audit of the last minute up to ``until``, judged with a short settle time."""
    settled(url)
    result = audit(
        url, "--since", "1m", "--until", until.isoformat(), "--settle", str(SETTLE), "--json", *args
    )
    return result.exit_code, json.loads(result.stdout)


def findings(document: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in document["findings"] if f["kind"] == kind]


def track(url: str, task_ids: list[str], worker: str = "w1:100") -> None:
    """What a tracking worker records for runs it executed (contract of migration 0004)."""
    sql(
        url,
        "UPDATE pg_beat_runs SET worker = %s, started_at = sent_at, finished_at = sent_at, "
        "outcome = 'success', runtime = 0.01, attempts = 1 WHERE task_id = ANY(%s)",
        worker,
        task_ids,
    )
    sql(
        url,
        "INSERT INTO pg_beat_executions (task_id, group_name, schedule_id, worker, delivery, "
        "started_at, finished_at, outcome, runtime) "
        "SELECT task_id, group_name, schedule_id, %s, 'first', sent_at, sent_at, 'success', "
        "0.01 FROM pg_beat_runs WHERE task_id = ANY(%s)",
        worker,
        task_ids,
    )
    sql(
        url,
        "INSERT INTO pg_beat_schedule_health (schedule_id, group_name, last_outcome, "
        "last_finished_at, last_success_at) SELECT schedule_id, group_name, 'success', "
        "max(sent_at), max(sent_at) FROM pg_beat_runs WHERE task_id = ANY(%s) "
        "GROUP BY 1, 2 ON CONFLICT (schedule_id) DO NOTHING",
        task_ids,
    )


def test_a_clean_window_is_clean_and_exits_0(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches of one schedule and pages of two runs: the paging is what runs at 100k rows.
    monkeypatch.setattr(cli_audit, "SCHEDULE_BATCH", 1)
    monkeypatch.setattr(cli_audit, "RUN_PAGE", 2)
    runs = produce(db_url, "beat", "other")
    track(db_url, [r[0] for r in sql(db_url, "SELECT task_id FROM pg_beat_runs")])
    until = runs[-1][0]
    settled(db_url)
    result = audit(db_url, "--since", "1m", "--until", until.isoformat(), "--settle", str(SETTLE))
    assert result.exit_code == 0, result.output
    assert "clean: every due time checked in 2 schedule(s) has its run" in result.stdout
    code, document = audit_json(db_url, until)
    assert code == 0
    assert document["clean"] is True and document["total"] == 0 and document["findings"] == []
    # Created inside the window: checked from one interval after that, said as info.
    assert document["info_counts"]["partly_checked"] == 2
    # A run row deleted on a page boundary of the second schedule is found.
    (task_id,) = sql(
        db_url,
        "SELECT task_id FROM pg_beat_runs WHERE schedule_name = 'other' AND due_at <= %s "
        "ORDER BY due_at OFFSET 2 LIMIT 1",
        until,
    )[0]
    sql(db_url, "DELETE FROM pg_beat_runs WHERE task_id = %s", task_id)
    code, document = audit_json(db_url, until)
    assert code == EXIT_FINDINGS
    assert [(f["kind"], f["task_id"]) for f in document["findings"]] == [("missing", task_id)]


def test_a_run_row_deleted_by_hand_is_missing(db_url: str) -> None:
    runs = produce(db_url)
    due, task_id = runs[2]
    sql(db_url, "DELETE FROM pg_beat_runs WHERE task_id = %s", task_id)
    code, document = audit_json(db_url, runs[-1][0])
    assert code == EXIT_FINDINGS
    (missing,) = findings(document, "missing")
    assert missing["task_id"] == task_id  # the deterministic task id of the lost tick
    assert datetime.fromisoformat(missing["due_at"]) == due
    assert missing["why"] is None  # a leader held the lease throughout
    assert document["total"] == 1 and document["counts"]["missing"] == 1
    result = audit(
        db_url, "--since", "1m", "--until", runs[-1][0].isoformat(), "--settle", str(SETTLE)
    )
    assert result.exit_code == EXIT_FINDINGS
    assert "missing: no run row for a due time (1)" in result.stdout
    assert task_id in result.stdout
    assert result.stdout.rstrip().endswith("1 finding(s) in 1 schedule(s): missing 1")


def test_a_duplicate_execution_is_started_twice_and_a_duplicate_delivery_is_info(
    db_url: str,
) -> None:
    runs = produce(db_url)
    track(db_url, [task_id for _, task_id in runs])
    twice, acked = runs[1][1], runs[3][1]
    for task_id, delivery in ((twice, "redelivery"), (acked, "duplicate")):
        sql(
            db_url,
            "INSERT INTO pg_beat_executions (task_id, group_name, schedule_id, worker, "
            "delivery, outcome) SELECT task_id, group_name, schedule_id, 'w2:200', %s, %s "
            "FROM pg_beat_runs WHERE task_id = %s",
            delivery,
            "success" if delivery == "redelivery" else "duplicate",
            task_id,
        )
    code, document = audit_json(db_url, runs[-1][0])
    assert code == EXIT_FINDINGS
    assert [f["task_id"] for f in document["findings"]] == [twice], document["findings"]
    assert findings(document, "started_twice")[0]["what"] == "the task body ran 2 times"
    assert [i["task_id"] for i in document["info"] if i["kind"] == "duplicate_delivery"] == [acked]


def test_ticks_sent_but_never_started_after_the_worker_died(db_url: str) -> None:
    runs = produce(db_url)
    started, lost_ones = runs[:3], runs[3:]
    track(db_url, [task_id for _, task_id in started])  # then the worker went away
    code, document = audit_json(db_url, runs[-1][0])
    assert code == EXIT_FINDINGS
    never = findings(document, "never_started")
    assert [f["task_id"] for f in never] == [task_id for _, task_id in lost_ones]
    assert document["total"] == len(lost_ones)
    # A worker that recorded outcomes before the window (a health row) and was down all
    # through it: every tick of the window was sent, none started.
    sql(db_url, "DELETE FROM pg_beat_executions")
    sql(db_url, "UPDATE pg_beat_runs SET worker = NULL, started_at = NULL, outcome = NULL")
    code, document = audit_json(db_url, runs[-1][0])
    assert document["counts"]["never_started"] == len(runs), document["counts"]
    # Untracked schedules (no executions, no health row) are not judged on starts.
    sql(db_url, "DELETE FROM pg_beat_schedule_health")
    code, document = audit_json(db_url, runs[-1][0])
    assert (code, document["clean"]) == (0, True)


def test_a_failover_gap_under_skip_is_reported_with_the_leaderless_explanation(
    db_url: str,
) -> None:
    with replica(db_url, replica_name="first") as first:
        with ScheduleManager(db_url) as api:
            api.create("beat", "t.beat", every=0.25, misfire_policy="skip")
        first.run_until(lambda: len(sent_runs(db_url, "beat")) >= 3, timeout=20)
    # first released the lease as it stopped: no leader for 2.5 s (ten due times).
    time.sleep(2.5)
    with replica(db_url, replica_name="second", misfire_grace_time=1.0) as second:
        before = len(sent_runs(db_url, "beat"))
        second.run_until(lambda: len(sent_runs(db_url, "beat")) >= before + 3, timeout=20)
    until = sent_runs(db_url, "beat")[-1][0]
    code, document = audit_json(db_url, until, "--grace", "1")
    assert code == EXIT_FINDINGS
    counts = {k: n for k, n in document["counts"].items() if n}
    assert counts.get("missing", 0) >= 4, counts  # passed over by the misfire policy
    assert counts.get("skipped") == 1, counts  # the first one, recorded skipped
    assert set(counts) <= {"missing", "skipped", "late"}, counts
    for finding in document["findings"]:
        assert finding["why"] and "no leader held the lease from" in finding["why"], finding
    (skipped,) = findings(document, "skipped")
    assert skipped["why"].startswith("misfire")
    result = audit(db_url, "--since", "1m", "--until", until.isoformat(), "--settle", str(SETTLE))
    assert result.exit_code == EXIT_FINDINGS
    assert "no leader held the lease from" in result.stdout


def test_json_shape_and_the_usual_errors(db_url: str) -> None:
    runs = produce(db_url)
    code, document = audit_json(db_url, runs[-1][0], "--schedule", "beat")
    assert code == 0, document
    assert set(document) == {
        "group",
        "since",
        "until",
        "now",
        "settle",
        "grace",
        "schedules",
        "clean",
        "total",
        "counts",
        "info_counts",
        "findings",
        "info",
        "truncated",
    }
    assert set(document["counts"]) == {
        "missing",
        "late",
        "unsent",
        "never_started",
        "started_twice",
        "failed",
        "lost",
        "revoked",
        "skipped",
        "expired",
    }
    assert set(document["info_counts"]) == {
        "overlap_skipped",
        "duplicate_delivery",
        "unplanned_run",
        "partly_checked",
    }
    assert (document["group"], document["schedules"], document["settle"]) == ("default", 1, 0.5)
    assert set(document["info"][0]) == {"kind", "schedule", "due_at", "task_id", "what", "why"}

    result = audit(db_url, "--schedule", "nope")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == ["pg-beat: error: schedule 'nope': not found"], lines
    result = audit(db_url, "--settle", "soon")
    assert result.exit_code == 2 and "--settle" in result.stderr
    result = audit(db_url, "--since", "1m", "--until", "2m")
    assert result.exit_code == 2 and "must be before" in result.stderr
