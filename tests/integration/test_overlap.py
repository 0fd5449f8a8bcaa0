"""Overlap policies against real PostgreSQL: the dispatch loop in process, the worker side
simulated by writing the run row as a worker does (started_at, worker, finished_at, outcome),
and the NOTIFY a worker sends when it finishes a run whose schedule holds a tick back."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery
from support.inproc import Replica, replica
from support.pg import libpq_url as libpq
from support.waiting import wait_for

from pg_beat import store
from pg_beat.api import ScheduleManager
from pg_beat.publish.ticks import Claim, task_id_for
from pg_beat.scheduler import Scheduler

pytestmark = pytest.mark.timeout(90)


def sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def run_rows(url: str, name: str) -> list[tuple[Any, ...]]:
    """(due_at, status, reason, task_id, outcome, finished_at is set) oldest first."""
    return sql(
        url,
        "SELECT due_at, status, reason, task_id, outcome, finished_at IS NOT NULL "
        "FROM pg_beat_runs WHERE schedule_name = %s ORDER BY due_at",
        name,
    )


def finish(url: str, task_id: str, outcome: str = "success", notify: bool = False) -> None:
    """What the worker side records for a final outcome (and its NOTIFY, in one transaction,
    when the schedule holds a tick back)."""
    with psycopg.connect(libpq(url)) as conn:
        conn.execute(
            "UPDATE pg_beat_runs SET finished_at = clock_timestamp(), outcome = %s, "
            "started_at = coalesce(started_at, clock_timestamp()) WHERE task_id = %s",
            (outcome, task_id),
        )
        if notify:
            conn.execute("SELECT pg_notify(%s, 'default')", (store.connections.NOTIFY_CHANNEL,))


def sent_names(rep: Replica, name: str) -> list[Claim]:
    return [c for c, _ in rep.outbox.sent if c.schedule == name]


@pytest.mark.parametrize("unblock", ["finished", "failed-to-publish"])
def test_skip_never_sends_while_the_previous_run_is_unfinished(db_url: str, unblock: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", every=0.2, overlap_policy="skip")
    with replica(db_url) as rep:
        rep.run_until(lambda: len(sent_names(rep, "s")) == 1)
        first = sent_names(rep, "s")[0]
        rep.run_for(1.0)  # five ticks come due while it runs
        assert len(sent_names(rep, "s")) == 1
        rows = run_rows(db_url, "s")
        skipped = [r for r in rows if r[1] == "skipped"]
        assert len(skipped) >= 3 and len(rows) == len(skipped) + 1
        assert {r[2] for r in skipped} == {f"overlap: previous run {first.task_id} still running"}
        # Counter-case: a run that finished (any outcome), or that never went out, no longer
        # blocks: the next tick on the grid is sent.
        if unblock == "finished":
            finish(db_url, first.task_id, outcome="failure")
        else:
            sql(
                db_url,
                "UPDATE pg_beat_runs SET status = 'failed' WHERE task_id = %s",
                first.task_id,
            )
        rep.run_until(lambda: len(sent_names(rep, "s")) == 2, timeout=5)
    assert sent_names(rep, "s")[1].due_at > skipped[-1][0]  # the grid moved on meanwhile


def test_allow_sends_every_tick_whatever_runs(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("a", "t.a", every=0.2)  # overlap_policy NULL: the setting, allow
    with replica(db_url) as rep:
        rep.run_until(lambda: len(sent_names(rep, "a")) >= 4)
    statuses = {r[1] for r in run_rows(db_url, "a")}
    assert statuses == {"sent"}  # none finished, none skipped


def test_buffer_one_holds_one_tick_and_a_finish_notify_sends_it_within_milliseconds(
    db_url: str,
) -> None:
    with ScheduleManager(db_url) as api:
        api.create("b", "t.b", every=3600, overlap_policy="buffer_one")
        api.run_now("b")
    with replica(db_url) as rep:
        rep.run_until(lambda: len(sent_names(rep, "b")) == 1)
        first = sent_names(rep, "b")[0]
        with ScheduleManager(db_url) as api:
            api.run_now("b")
            rep.run_for(0.3)
            held = api.get("b").buffered_due_at
            assert held is not None  # held back, not sent, no run row
            api.run_now("b")
            rep.run_for(0.3)
            assert api.get("b").buffered_due_at == held  # the one held stays
        assert len(sent_names(rep, "b")) == 1
        rows = run_rows(db_url, "b")
        assert [(r[1], r[2]) for r in rows] == [
            ("sent", None),
            ("skipped", "overlap: a tick is already buffered"),
        ]
        # Nothing due for an hour: the loop sleeps until the NOTIFY of the finish.
        assert rep.step() > 0.1
        sent_at: list[float] = []
        rep.dispatcher.on_sent = lambda claim, at: sent_at.append(time.monotonic())
        finished: list[float] = []

        def worker_finishes() -> None:
            finish(db_url, first.task_id, notify=True)
            finished.append(time.monotonic())

        threading.Timer(0.3, worker_finishes).start()
        rep.dispatcher.wait(5.0)
        rep.step()
        wait_for(lambda: sent_at, 5, "the held tick sent")
        took = sent_at[0] - finished[0]
        assert took < 0.5, took  # measured: a few ms (see benchmarks/bench_overlap.py)
        second = sent_names(rep, "b")[1]
    assert second.due_at == held and second.task_id == task_id_for("default", "b", held)
    row = next(r for r in run_rows(db_url, "b") if r[0] == held)
    assert (row[1], row[2]) == ("sent", "buffered: sent when the previous run finished")
    with ScheduleManager(db_url) as api:
        assert api.get("b").buffered_due_at is None


def test_a_run_past_max_runtime_stops_blocking_and_is_recorded_lost(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("m", "t.m", every=0.2, overlap_policy="skip", max_runtime=1.0)
    with replica(db_url) as rep:
        rep.run_until(lambda: len(sent_names(rep, "m")) == 1)
        first = sent_names(rep, "m")[0]
        sql(
            db_url,
            "UPDATE pg_beat_runs SET started_at = clock_timestamp(), worker = 'w:1' "
            "WHERE task_id = %s",
            first.task_id,
        )
        started = time.monotonic()
        rep.run_until(lambda: len(sent_names(rep, "m")) == 2, timeout=5)
        assert time.monotonic() - started > 0.8  # blocked for its max_runtime, no longer
    lost = [r for r in run_rows(db_url, "m") if r[3] == first.task_id]
    assert [(r[4], r[5]) for r in lost] == [("lost", True)]
    assert any(r[1] == "skipped" for r in run_rows(db_url, "m"))


def test_a_worker_known_gone_unblocks_at_once(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("g", "t.g", every=0.2, overlap_policy="skip")
    sql(
        db_url,
        "INSERT INTO pg_beat_workers (name, hostname, pid) VALUES ('host:42', 'host', 42)",
    )
    with replica(db_url) as rep:
        rep.run_until(lambda: len(sent_names(rep, "g")) == 1)
        first = sent_names(rep, "g")[0]
        sql(
            db_url,
            "UPDATE pg_beat_runs SET started_at = clock_timestamp(), worker = 'host:42' "
            "WHERE task_id = %s",
            first.task_id,
        )
        rep.run_for(0.6)
        assert len(sent_names(rep, "g")) == 1  # its worker is alive: it blocks
        sql(db_url, "UPDATE pg_beat_workers SET stopped_at = now() WHERE name = 'host:42'")
        started = time.monotonic()
        rep.run_until(lambda: len(sent_names(rep, "g")) == 2, timeout=5)
        assert time.monotonic() - started < 1.0  # at once, not after max_runtime (3600 s)
    assert [r[4] for r in run_rows(db_url, "g") if r[3] == first.task_id] == ["lost"]


def test_a_failover_keeps_the_held_tick_and_the_skip_decision(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("f", "t.f", every=3600, overlap_policy="buffer_one")
        api.run_now("f")
    with replica(db_url, replica_name="first") as first:
        first.run_until(lambda: len(sent_names(first, "f")) == 1)
        blocker = sent_names(first, "f")[0]
        with ScheduleManager(db_url) as api:
            api.run_now("f")
        first.run_for(0.3)
        first_epoch = first.wait_leader()
    with ScheduleManager(db_url) as api:
        held = api.get("f").buffered_due_at
        assert held is not None
        api.run_now("f")  # due while the first replica is gone
    with replica(db_url, replica_name="second") as second:
        assert second.wait_leader() > first_epoch
        second.run_for(0.5)
        assert sent_names(second, "f") == []  # the new epoch holds it back too
        assert [r[1:3] for r in run_rows(db_url, "f")][-1] == (
            "skipped",
            "overlap: a tick is already buffered",
        )
        finish(db_url, blocker.task_id, notify=True)
        second.run_until(lambda: len(sent_names(second, "f")) == 1, timeout=5)
        assert sent_names(second, "f")[0].due_at == held


def test_an_orphan_republished_after_a_failover_keeps_its_schedules_run_once(
    db_url: str,
) -> None:
    with ScheduleManager(db_url) as api:
        api.create("o", "t.o", every=3600, run_once=True)
        api.run_now("o")
    with replica(db_url, replica_name="first") as first:
        first.outbox.fail = True  # the broker is down: claimed, never sent
        first.run_until(lambda: len(run_rows(db_url, "o")) == 1)
    with replica(db_url, replica_name="second", run_once=False) as second:
        second.run_until(lambda: bool(second.outbox.sent), timeout=10)
        (claim, _), *_ = second.outbox.sent
    assert claim.run_once is True  # the row's, read with the orphan, not the beat's setting


def test_an_invalid_policy_written_by_hand_is_refused_by_the_database(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("x", "t.x", every=60)
    with pytest.raises(psycopg.errors.CheckViolation):
        sql(db_url, "UPDATE pg_beat_schedules SET overlap_policy = 'sometimes'")
    with pytest.raises(psycopg.errors.CheckViolation):
        sql(db_url, "UPDATE pg_beat_schedules SET max_runtime = 0")


def test_the_blocker_read_walks_the_runs_unique_index_from_its_end(db_url: str) -> None:
    """Not a seq scan of the run log: seq scans are turned off, so this only shows that the
    index path exists and is taken (benchmarks/bench_overlap.py EXPLAINs it at 10,000 rows)."""
    statement = (
        str(store.claims.SELECT_BLOCKERS)
        .replace(":ids", "%(ids)s")
        .replace(":now", "%(now)s")
        .replace(":gone_after", "%(gone)s")
    )
    with psycopg.connect(libpq(db_url), autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        rows = conn.execute(
            "EXPLAIN " + statement, {"ids": [1, 2], "now": datetime.now(timezone.utc), "gone": 60.0}
        )
        plan = "\n".join(row[0] for row in rows)
    assert "Index Scan Backward using uq_pg_beat_runs_schedule_id" in plan, plan


# --- a real scheduler and Redis: headers, beat_schedule ---------------------------------------


@pytest.fixture
def app(redis_url: str, db_url: str) -> Iterator[Celery]:
    queue = f"pg_beat_overlap_{secrets.token_hex(4)}"
    app = Celery(f"pg_beat_overlap_{secrets.token_hex(3)}", broker=redis_url, set_as_current=False)
    app.conf.update(
        pg_beat_database_url=db_url,
        pg_beat_replica_name=f"overlap-{secrets.token_hex(4)}",
        pg_beat_lease_ttl=3.0,
        pg_beat_heartbeat_interval=0.2,
        pg_beat_hang_timeout=30.0,
        pg_beat_run_once=True,
        task_default_queue=queue,
        beat_schedule={
            "cfg": {
                "task": "t.cfg",
                "schedule": 0.3,
                "pg_beat": {"overlap_policy": "skip", "max_runtime": 120, "run_once": False},
            },
            "plain": {"task": "t.plain", "schedule": 3600},
        },
    )
    client = redis.Redis.from_url(redis_url)
    try:
        yield app
    finally:
        client.delete(queue)
        client.close()
        app.close()


def test_messages_carry_group_run_once_and_overlap_and_beat_schedule_sets_the_fields(
    app: Celery, db_url: str, redis_url: str
) -> None:
    scheduler = Scheduler(app)
    try:
        with ScheduleManager(db_url) as api:
            cfg = api.get("cfg")
            assert (cfg.overlap_policy, cfg.max_runtime, cfg.run_once) == ("skip", 120.0, False)
            plain = api.get("plain")
            assert (plain.overlap_policy, plain.max_runtime, plain.run_once) == (None,) * 3
            api.run_now("plain")
        queue = app.conf.task_default_queue
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 10
        while client.llen(queue) < 2:
            assert time.monotonic() < deadline, client.llen(queue)
            scheduler.tick()
        until = time.monotonic() + 1.0  # ticks of cfg come due; its first run never finishes
        while time.monotonic() < until:
            scheduler.tick()
            time.sleep(0.05)
        messages = [json.loads(m) for m in client.lrange(queue, 0, -1)]
        client.close()
    finally:
        scheduler.close()
    headers = {m["headers"]["pg_beat_schedule"]: m["headers"] for m in messages}
    assert sorted(headers) == ["cfg", "plain"] and len(messages) == 2  # cfg sent once
    assert headers["cfg"]["pg_beat_group"] == "default"
    assert headers["cfg"]["pg_beat_run_once"] is False  # the row's own
    assert headers["plain"]["pg_beat_run_once"] is True  # NULL: the beat's setting
    # The worker writes the outcome of a run its leader may wait for without batching.
    assert headers["cfg"]["pg_beat_overlap"] == "skip"
    assert headers["plain"]["pg_beat_overlap"] == "allow"  # NULL: the beat's setting
    skipped = sql(db_url, "SELECT count(*) FROM pg_beat_runs WHERE status = 'skipped'")
    assert skipped[0][0] >= 2
