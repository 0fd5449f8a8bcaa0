"""The outcome writer's batching: events wait up to ``pg_beat_track_flush_interval`` for
company, except an urgent one (the run of a skip or buffer_one schedule, whose leader may hold
a tick until it ends), which is written at once. A real database; no worker process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone

import psycopg
import pytest
from support import pg, worker_side
from support.waiting import wait_for

from pg_beat.config import Settings
from pg_beat.store import connections, outcomes
from pg_beat.worker.outage import Outage, Stats
from pg_beat.worker.writer import Writer

pytestmark = pytest.mark.timeout(60)

FLUSH = 5.0  # long, so that waiting for it and not waiting differ by seconds


@pytest.fixture
def writer(db_url: str) -> Iterator[Writer]:
    settings = Settings(database_url=db_url, track_flush_interval=FLUSH)
    outage = Outage("writer-test:1", Stats())
    writer = Writer(settings, connections.Connector(settings), "writer-test:1", 1, outage)
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()


def outcome(db_url: str, task_id: str) -> str | None:
    with psycopg.connect(pg.libpq_url(db_url), autocommit=True) as conn:
        row = conn.execute("SELECT outcome FROM pg_beat_runs WHERE task_id = %s", (task_id,))
        found = row.fetchone()
    return None if found is None else found[0]


def finished(task_id: str) -> outcomes.Finished:
    return outcomes.Finished(
        task_id=task_id,
        attempt=0,
        worker="writer-test:1",
        outcome="success",
        at=datetime.now(timezone.utc),
        runtime=0.01,
        error=None,
    )


def test_an_urgent_outcome_skips_the_batching_wait(writer: Writer, db_url: str) -> None:
    schedule_id = worker_side.make_schedule(db_url, "held", "wt.ok")
    urgent = worker_side.make_run(db_url, schedule_id, "held", worker_side.due(20))
    batched = worker_side.make_run(db_url, schedule_id, "held", worker_side.due(10))

    # Counter-case first: an ordinary outcome waits for the flush interval.
    writer.put(finished(batched))
    time.sleep(1.0)
    assert outcome(db_url, batched) is None, "written before the flush interval"
    wait_for(lambda: outcome(db_url, batched) == "success", FLUSH + 5, "the batched outcome")

    started = time.monotonic()
    writer.put(finished(urgent), urgent=True)
    wait_for(lambda: outcome(db_url, urgent) == "success", FLUSH + 5, "the urgent outcome")
    assert time.monotonic() - started < FLUSH / 2, "the urgent outcome waited for the batch"
