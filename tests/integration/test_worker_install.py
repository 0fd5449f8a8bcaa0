"""The explicit switch, ``pg_beat.worker.install(app)`` (also ``pg_beat.track_runs``), with an
in-process worker (celery.contrib.testing, threads pool, in-memory broker): outcomes recorded,
run once applied, the counters of :func:`pg_beat.worker.stats`, and an app without the switch
left alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from support import worker_side
from support.waiting import wait_for

import pg_beat
import pg_beat.worker
from pg_beat.exceptions import ConfigurationError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app(db_url: str) -> Iterator[Celery]:
    app = Celery(f"install_{id(db_url)}", broker="memory://", set_as_current=False)
    app.conf.update(pg_beat_database_url=db_url, task_default_queue="install")
    yield app


def test_install_records_and_runs_once(app: Celery, db_url: str) -> None:
    bodies: list[str] = []
    release = threading.Event()

    @app.task(bind=True, name="inst.hold")
    def hold(self: Any) -> None:
        bodies.append(self.request.id)
        release.wait(10)

    assert pg_beat.track_runs is pg_beat.worker.install
    pg_beat.track_runs(app)
    schedule_id = worker_side.make_schedule(db_url, "held", "inst.hold")
    due = worker_side.due()
    task_id = worker_side.make_run(db_url, schedule_id, "held", due)
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
        for _ in range(2):
            worker_side.send_tick(app, "install", "inst.hold", task_id, "held", due, run_once=True)
        wait_for(lambda: worker_side.run_row(db_url, task_id)["duplicates"] == 1, 15, "dup")
        release.set()
        wait_for(lambda: worker_side.run_row(db_url, task_id)["outcome"] == "success", 15, "done")
        stats = pg_beat.worker.stats()
    assert bodies == [task_id]
    assert stats["claims"] == 2 and stats["duplicates"] == 1 and stats["dropped"] == 0
    assert stats["recorded"] >= 1


def test_an_app_without_the_switch_is_left_alone(app: Celery, db_url: str) -> None:
    ran = threading.Event()

    @app.task(name="inst.plain")
    def plain() -> None:
        ran.set()

    schedule_id = worker_side.make_schedule(db_url, "plain", "inst.plain")
    due = worker_side.due()
    task_id = worker_side.make_run(db_url, schedule_id, "plain", due)
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False):
        worker_side.send_tick(app, "install", "inst.plain", task_id, "plain", due, run_once=True)
        assert ran.wait(15)
    assert worker_side.executions(db_url, task_id) == []
    assert worker_side.run_row(db_url, task_id)["attempts"] is None
    assert "before_start" not in type(plain).__dict__


def test_install_checks_the_settings() -> None:
    app = Celery("install_bad", broker="memory://", set_as_current=False)
    app.conf.update(pg_beat_database_url="postgresql://x/y", pg_beat_track_queue_size=0)
    with pytest.raises(ConfigurationError, match="pg_beat_track_queue_size"):
        pg_beat.worker.install(app)
