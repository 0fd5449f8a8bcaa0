"""The run-once claim's rules, one statement on the run row (pg_beat.store.outcomes.CLAIM),
against a real database: each rule and its counter-case."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from support import pg, worker_side

from pg_beat.store import outcomes

GONE_AFTER, MAX_RUNTIME = 60.0, 3600.0


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg.libpq_url(db_url), autocommit=True) as conn:
        yield conn


def claim(
    conn: psycopg.Connection[Any], task_id: str, worker: str, attempt: int = 0, **kw: Any
) -> str | None:
    return outcomes.claim(
        conn,
        task_id=task_id,
        attempt=attempt,
        worker=worker,
        at=datetime.now(timezone.utc),
        gone_after=kw.get("gone_after", GONE_AFTER),
        max_runtime=kw.get("max_runtime", MAX_RUNTIME),
    )


def heartbeat(conn: psycopg.Connection[Any], worker: str) -> None:
    outcomes.heartbeat(conn, worker, "host", 1)


def finish(conn: psycopg.Connection[Any], task_id: str, outcome: str, attempt: int = 0) -> None:
    outcomes.write_finished(
        conn,
        [
            outcomes.Finished(
                task_id=task_id,
                attempt=attempt,
                worker="w1",
                outcome=outcome,  # type: ignore[arg-type]
                at=datetime.now(timezone.utc),
                runtime=0.1,
                error=None,
            )
        ],
    )


@pytest.fixture
def tick(db_url: str) -> str:
    schedule_id = worker_side.make_schedule(db_url, "s", "t.s")
    return worker_side.make_run(db_url, schedule_id, "s", worker_side.due())


def deliveries(conn: psycopg.Connection[Any], task_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT attempt, worker, delivery, outcome FROM pg_beat_executions WHERE task_id = %s "
        "ORDER BY id",
        (task_id,),
    ).fetchall()


def run(conn: psycopg.Connection[Any], task_id: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT attempts, duplicates, worker, outcome, finished_at IS NULL FROM pg_beat_runs "
        "WHERE task_id = %s",
        (task_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_first_then_duplicates_while_running_and_after_finishing(
    conn: psycopg.Connection[Any], tick: str
) -> None:
    heartbeat(conn, "w1")
    assert claim(conn, tick, "w1") == "first"
    assert claim(conn, tick, "w2") == "duplicate"  # w1 is alive and running it
    finish(conn, tick, "success")
    assert claim(conn, tick, "w2") == "duplicate"  # finished
    assert run(conn, tick) == (1, 2, "w1", "success", False)
    assert deliveries(conn, tick) == [
        (0, "w1", "first", "success"),
        (0, "w2", "duplicate", "duplicate"),
        (0, "w2", "duplicate", "duplicate"),
    ]


def test_a_retry_runs_but_a_second_delivery_of_it_does_not(
    conn: psycopg.Connection[Any], tick: str
) -> None:
    heartbeat(conn, "w1")
    assert claim(conn, tick, "w1") == "first"
    finish(conn, tick, "retry")
    assert claim(conn, tick, "w1", attempt=1) == "retry"
    assert claim(conn, tick, "w2", attempt=1) == "duplicate"
    assert claim(conn, tick, "w2", attempt=0) == "duplicate"
    assert run(conn, tick)[:2] == (2, 2)


@pytest.mark.parametrize(
    "lost_by",
    ["stopped", "silent", "max_runtime_setting", "max_runtime_schedule", "leader"],
)
def test_redelivery_after_the_execution_was_lost(
    conn: psycopg.Connection[Any], tick: str, lost_by: str
) -> None:
    heartbeat(conn, "w1")
    heartbeat(conn, "w2")
    assert claim(conn, tick, "w1") == "first"
    kw: dict[str, float] = {}
    if lost_by == "stopped":
        outcomes.stopped(conn, "w1")
    elif lost_by == "silent":
        conn.execute(
            "UPDATE pg_beat_workers SET last_seen_at = now() - interval '61 s' WHERE name = 'w1'"
        )
    elif lost_by == "leader":
        conn.execute("UPDATE pg_beat_runs SET outcome = 'lost', finished_at = now()")
    else:
        conn.execute("UPDATE pg_beat_executions SET started_at = started_at - interval '11 s'")
        if lost_by == "max_runtime_setting":
            kw["max_runtime"] = 10.0
        else:
            conn.execute("UPDATE pg_beat_schedules SET max_runtime = 10")
    assert claim(conn, tick, "w2", **kw) == "redelivery"
    assert run(conn, tick) == (2, 0, "w2", "lost", True)  # lost until the new one finishes
    assert deliveries(conn, tick) == [(0, "w1", "first", "lost"), (0, "w2", "redelivery", None)]
    # The redelivery is running on a live worker: a third delivery is a duplicate.
    assert claim(conn, tick, "w3", **kw) == "duplicate"
    finish(conn, tick, "success")
    assert run(conn, tick)[3:] == ("success", False)


def test_not_lost_while_the_worker_lives_and_within_max_runtime(
    conn: psycopg.Connection[Any], tick: str
) -> None:
    heartbeat(conn, "w1")
    assert claim(conn, tick, "w1") == "first"
    conn.execute("UPDATE pg_beat_workers SET last_seen_at = now() - interval '59 s'")
    conn.execute("UPDATE pg_beat_executions SET started_at = started_at - interval '9 s'")
    assert claim(conn, tick, "w2", max_runtime=10.0) == "duplicate"


def test_no_run_row_means_no_claim(conn: psycopg.Connection[Any], db_url: str) -> None:
    assert claim(conn, "not-a-tick", "w1") is None


def test_two_claims_racing_on_the_row_lock(
    conn: psycopg.Connection[Any], db_url: str, tick: str
) -> None:
    heartbeat(conn, "w1")
    with psycopg.connect(pg.libpq_url(db_url)) as other:
        other.execute("SELECT 1 FROM pg_beat_runs WHERE task_id = %s FOR UPDATE", (tick,))
        import threading

        results: list[str | None] = []
        racer = threading.Thread(target=lambda: results.append(claim(conn, tick, "w1")))
        racer.start()
        assert claim(other, tick, "w2") == "first"  # holds the lock until commit
        other.commit()
        racer.join(10)
    assert results == ["duplicate"]
    assert run(conn, tick)[:2] == (1, 1)


def test_lost_is_not_claimed_when_the_first_is_fresh(
    conn: psycopg.Connection[Any], tick: str
) -> None:
    heartbeat(conn, "w1")
    assert claim(conn, tick, "w1") == "first"
    # A heartbeat 61 s old, measured in the database's clock (not a worker's): lost.
    conn.execute(
        "UPDATE pg_beat_workers SET last_seen_at = %s",
        (datetime.now(timezone.utc) - timedelta(seconds=61),),
    )
    assert claim(conn, tick, "w2") == "redelivery"


def test_health_counts_failures_and_resets_on_success(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    schedule_id = worker_side.make_schedule(db_url, "h", "t.h")
    base = worker_side.due(100)
    ticks = [
        worker_side.make_run(db_url, schedule_id, "h", base + timedelta(seconds=i))
        for i in range(6)
    ]

    def batch(*events: tuple[int, str]) -> tuple[Any, ...]:
        outcomes.write_finished(
            conn,
            [
                outcomes.Finished(
                    task_id=ticks[i],
                    attempt=0,
                    worker="w1",
                    outcome=outcome,  # type: ignore[arg-type]
                    at=base + timedelta(seconds=i, milliseconds=500),
                    runtime=0.5,
                    error=None if outcome == "success" else f"E{i}",
                )
                for i, outcome in events
            ],
        )
        row = conn.execute(
            "SELECT last_outcome, consecutive_failures, last_error, last_success_at IS NOT NULL "
            "FROM pg_beat_schedule_health WHERE schedule_id = %s",
            (schedule_id,),
        ).fetchone()
        assert row is not None
        return tuple(row)

    assert batch((0, "failure")) == ("failure", 1, "E0", False)
    assert batch((1, "lost"), (2, "retry")) == ("lost", 2, "E1", False)  # a retry is not final
    assert batch((3, "success")) == ("success", 0, "E1", True)
    # In one batch: the failures after its last success count.
    assert batch((4, "failure"), (5, "revoked")) == ("revoked", 1, "E4", True)
