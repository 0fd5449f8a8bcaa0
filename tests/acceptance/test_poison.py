"""Poison ticks on a real broker: a row whose message can never be published is recorded
``failed`` within seconds, and every healthy tick beside it is still sent once.

A real ``celery beat -S pg_beat:Scheduler`` publishes to the local RabbitMQ (publisher
confirms, so the broker's refusal of one message is reported for that message). Three poison
rows: options made invalid with plain SQL (parked at claim), args over
``pg_beat_max_message_bytes``, and an exchange the broker does not have (404, a channel error,
parked by the poison rule: it fails between ticks the broker takes).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kombu import Connection, Queue
from support.env import unavailable
from support.pg import libpq_url as libpq
from support.procs import ProcessGroup

from pg_beat.api import ScheduleManager

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CELERY = [sys.executable, "-m", "celery", "-A", "e2e_app"]
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
LIMIT = 100_000  # bytes: pg_beat_max_message_bytes for this run
HEALTHY = ("healthy-a", "healthy-b")
POISON = ("bad-options", "too-big", "no-such-exchange")


def sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def rabbit_queue() -> Iterator[str]:
    """A queue of this run on the local RabbitMQ, deleted after the test."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        unavailable(f"RabbitMQ at 127.0.0.1:5672: {exc}")
    name = f"pg_beat_poison_{secrets.token_hex(5)}"
    yield name
    with Connection(AMQP_URL, connect_timeout=5) as conn:
        Queue(name).bind(conn.default_channel).delete()


def drain(queue: str) -> list[dict[str, Any]]:
    """Every message in ``queue`` (consumed): the headers Celery and pg_beat put on it."""
    found = []
    with Connection(AMQP_URL, connect_timeout=5) as conn:
        bound = Queue(queue).bind(conn.default_channel)
        while (message := bound.get(no_ack=True)) is not None:
            found.append(message.headers)
    return found


def test_poison_ticks_are_failed_and_the_healthy_ones_go_out_once(
    db_url: str, rabbit_queue: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    with ScheduleManager(db_url) as api:
        for name in (*HEALTHY, "bad-options"):
            api.create(name, "e2e.record", every=1, options={"queue": rabbit_queue})
        api.create(
            "too-big",
            "e2e.record",
            every=1,
            args=["x" * (LIMIT + 1)],
            options={"queue": rabbit_queue},
        )
        api.create(
            "no-such-exchange",
            "e2e.record",
            every=1,
            options={"exchange": f"pg_beat_none_{secrets.token_hex(4)}", "routing_key": "x"},
        )
    # Plain SQL, bypassing the API's validation: task_id would clash with apply_async's own.
    sql(
        db_url,
        """UPDATE pg_beat_schedules SET options = '{"task_id": "x"}' WHERE name = 'bad-options'""",
    )
    env = {
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "E2E_BROKER_URL": AMQP_URL,
        "E2E_QUEUE": rabbit_queue,
        "E2E_DATABASE_URL": libpq(db_url),
        "E2E_MAX_MESSAGE_BYTES": str(LIMIT),
        "PG_BEAT_DATABASE_URL": db_url,
        "PG_BEAT_REPLICA_NAME": "poison-1",
    }
    started = time.monotonic()
    procs.spawn(
        "beat",
        [*CELERY, "beat", "-l", "info", "-s", str(tmp_path / "schedule"), "-S", "pg_beat"],
        env=env,
        cwd=tmp_path,
    )

    def statuses(name: str) -> list[str]:
        rows = sql(
            db_url,
            "SELECT status FROM pg_beat_runs WHERE schedule_name = %s ORDER BY due_at",
            name,
        )
        return [r[0] for r in rows]

    # Each poison row is failed within 5 s of its first tick (due one second after start).
    deadline = started + 15  # beat's own start (imports, banner) included
    while not all("failed" in statuses(n) for n in POISON):
        assert procs.is_running("beat"), procs.log("beat")[-3000:]
        assert time.monotonic() < deadline, {n: statuses(n) for n in POISON}
        time.sleep(0.2)
    time.sleep(5)  # the healthy ones keep going while the poison keeps failing
    procs.stop("beat")

    for name in HEALTHY:
        recorded = statuses(name)
        assert len(recorded) >= 5 and set(recorded) == {"sent"}, (name, recorded)
    assert statuses("bad-options") == ["failed"]  # parked until edited: one tick, one failure
    recorded = statuses("too-big")
    assert len(recorded) >= 3 and set(recorded) == {"failed"}, recorded
    # A 404 is the broker's word, not the message's: each such tick is parked once the broker
    # took the ticks tried right before and after it, so the last one may still be waiting
    # for a tick after it when beat stops (claimed: the next leader settles it).
    recorded = statuses("no-such-exchange")
    assert len(recorded) >= 3 and set(recorded[:-1]) == {"failed"}, recorded
    assert recorded[-1] in ("failed", "claimed"), recorded
    errors = dict(sql(db_url, "SELECT name, last_error FROM pg_beat_schedules"))
    assert "task_id" in errors["bad-options"]
    assert "pg_beat_max_message_bytes" in errors["too-big"]
    assert "NOT_FOUND" in errors["no-such-exchange"]
    assert all(errors[n] is None for n in HEALTHY)

    # From the broker's side: each healthy tick once, nothing of the poison rows.
    messages = drain(rabbit_queue)
    sent = sql(
        db_url,
        "SELECT task_id FROM pg_beat_runs WHERE status = 'sent' AND schedule_name = ANY(%s)",
        list(HEALTHY),
    )
    ids = [m["id"] for m in messages]
    assert sorted(ids) == sorted(r[0] for r in sent) and len(set(ids)) == len(ids)
    assert {m["pg_beat_schedule"] for m in messages} == set(HEALTHY)

    # Logged once per failing schedule, not once per tick; no traceback.
    log = procs.log("beat")
    assert "Traceback" not in log
    assert len(re.findall(r"cannot be published and is recorded as failed", log)) == 2, log
    assert len(re.findall(r"'bad-options' skipped until it is edited", log)) == 1, log
