"""Metrics scraped over HTTP from a replica whose watchdog and dispatcher really run."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import pg
from support.inproc import replica, settings_for
from support.waiting import connect

from pg_beat import metrics, store
from pg_beat.api import ScheduleManager
from pg_beat.config import Settings
from pg_beat.dispatch.loop import Dispatcher
from pg_beat.exceptions import ConfigurationError
from pg_beat.leadership.lease import LeaderState
from pg_beat.leadership.watchdog import Watchdog
from pg_beat.metrics import (
    MetricsServer,
    SchedulerLike,
    serve_metrics,
    start_metrics_server,
    stop_metrics,
)
from pg_beat.publish import brokerhealth

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, replica_name: str, **extra: str) -> float | None:
    labels = frozenset({"group": "default", "replica": replica_name, **extra}.items())
    return samples.get((name, labels))


@contextmanager
def metrics_of(scheduler: SchedulerLike) -> Iterator[MetricsServer]:
    server = start_metrics_server(0, scheduler, addr="127.0.0.1")
    try:
        yield server
    finally:
        stop_metrics(scheduler)


def test_leader_metrics(db_url: str) -> None:
    with replica(db_url, replica_name="m1") as leader, metrics_of(leader) as server:
        with ScheduleManager(db_url) as manager:
            for name in ("a", "b", "c"):
                manager.create(name, "app.tick", every="1h")
                manager.run_now(name)  # a new interval first runs one interval after creation
        leader.run_until(lambda: leader.dispatcher.sent_total >= 3)
        samples = scrape(server.port)

        assert value(samples, "pg_beat_is_leader", "m1") == 1
        assert value(samples, "pg_beat_epoch", "m1") == leader.state.epoch
        assert value(samples, "pg_beat_ticks_dispatched_total", "m1") == 3
        assert value(samples, "pg_beat_ticks_failed_total", "m1") == 0
        assert value(samples, "pg_beat_failovers_total", "m1") == 1
        assert value(samples, "pg_beat_lease_renewal_failures_total", "m1") == 0
        assert value(samples, "pg_beat_due_backlog", "m1") == 0
        age = value(samples, "pg_beat_heartbeat_age_seconds", "m1")
        assert age is not None and 0 <= age < 1.5
        lateness = "pg_beat_dispatch_lateness_seconds"
        assert value(samples, f"{lateness}_count", "m1") == 3
        assert value(samples, f"{lateness}_bucket", "m1", le="60.0") == 3
        assert value(samples, f"{lateness}_bucket", "m1", le="+Inf") == 3
        total = value(samples, f"{lateness}_sum", "m1")
        assert total is not None and 0 <= total < 15
        assert value(samples, "pg_beat_metrics_scrape_errors_total", "m1") == 0
        assert value(samples, "pg_beat_broker_up", "m1") == 1
        assert value(samples, "pg_beat_broker_failing_seconds", "m1") == 0
        assert value(samples, "pg_beat_ticks_waiting", "m1") == 0


def test_a_broker_outage_shows_in_the_metrics_and_its_end_too(db_url: str) -> None:
    with replica(db_url, replica_name="o1") as leader, metrics_of(leader) as server:
        with ScheduleManager(db_url) as manager:
            manager.create("a", "app.tick", every="1h")
            manager.run_now("a")
        leader.run_until(lambda: leader.dispatcher.sent_total >= 1)
        leader.outbox.fail = True
        with ScheduleManager(db_url) as manager:
            manager.run_now("a")
        leader.run_until(lambda: leader.dispatcher.publisher.failing_since is not None)
        samples = scrape(server.port)
        assert value(samples, "pg_beat_broker_up", "o1") == 0
        failing = value(samples, "pg_beat_broker_failing_seconds", "o1")
        assert failing is not None and 0 <= failing < 10
        assert value(samples, "pg_beat_ticks_waiting", "o1") == 1
        assert value(samples, "pg_beat_ticks_failed_total", "o1") == 0
        leader.outbox.fail = False
        leader.run_until(lambda: leader.dispatcher.sent_total >= 2)
        samples = scrape(server.port)
        assert value(samples, "pg_beat_broker_up", "o1") == 1
        assert value(samples, "pg_beat_ticks_waiting", "o1") == 0


def test_standby_metrics_and_backlog(db_url: str) -> None:
    with (
        replica(db_url, replica_name="lead") as leader,
        replica(db_url, replica_name="standby", lead=False) as standby,
        metrics_of(standby) as server,
    ):
        with ScheduleManager(db_url) as manager:
            for name in ("a", "b"):
                manager.create(name, "app.tick", every="1h")
                manager.run_now(name)  # due now; nobody drives the leader's dispatch loop
        samples = scrape(server.port)
        assert value(samples, "pg_beat_is_leader", "standby") == 0
        assert value(samples, "pg_beat_epoch", "standby") == leader.state.epoch
        assert value(samples, "pg_beat_due_backlog", "standby") == 2
        assert value(samples, "pg_beat_failovers_total", "standby") == 0
        assert value(samples, "pg_beat_ticks_dispatched_total", "standby") == 0
        age = value(samples, "pg_beat_heartbeat_age_seconds", "standby")
        assert age is not None and 0 <= age < 1.5  # the leader's heartbeat, on the DB clock
        assert value(samples, "pg_beat_broker_up", "standby") is None  # never probed
        assert value(samples, "pg_beat_ticks_waiting", "standby") is None


def test_serve_metrics_on_a_fixed_port(db_url: str) -> None:
    with replica(db_url, replica_name="m1") as leader:
        port = pg.free_port()
        serve_metrics(port, leader, addr="127.0.0.1")
        try:
            assert value(scrape(port), "pg_beat_is_leader", "m1") == 1
        finally:
            stop_metrics(leader)
            stop_metrics(leader)  # idempotent


@dataclass
class Unconnected:
    """A replica whose database is down: no watchdog or dispatcher started yet."""

    settings: Settings
    state: LeaderState = field(default_factory=LeaderState)
    watchdog: Watchdog | None = None
    dispatcher: Dispatcher | None = None

    def broker_health(self) -> brokerhealth.Health:
        return brokerhealth.UNKNOWN


def test_scrape_survives_an_unreachable_database() -> None:
    down = Unconnected(
        settings_for(f"postgresql://u@127.0.0.1:{pg.free_port()}/x", replica_name="lonely")
    )
    with metrics_of(down) as server:
        samples = scrape(server.port)
    assert value(samples, "pg_beat_is_leader", "lonely") == 0
    assert value(samples, "pg_beat_due_backlog", "lonely") is None
    assert value(samples, "pg_beat_epoch", "lonely") is None
    assert value(samples, "pg_beat_metrics_scrape_errors_total", "lonely") == 1


def test_missing_prometheus_client_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    scheduler = Unconnected(settings_for("postgresql://u@127.0.0.1/x"))
    with pytest.raises(ConfigurationError, match=r"pip install 'pg-beat\[metrics\]'"):
        serve_metrics(0, scheduler, addr="127.0.0.1")


def test_the_scheduler_serves_its_metrics_on_the_address_it_is_given(db_url: str) -> None:
    from celery import Celery

    from pg_beat.scheduler import Scheduler

    port = pg.free_port()
    app = Celery("metrics-test", set_as_current=False)
    app.conf.update(
        pg_beat_database_url=db_url,
        pg_beat_replica_name="sched-metrics",
        pg_beat_metrics_port=port,
        pg_beat_metrics_address="127.0.0.1",
        pg_beat_lease_ttl=3.0,
        pg_beat_heartbeat_interval=0.2,
    )
    scheduler = Scheduler(app)
    try:
        samples = scrape(port)
        assert value(samples, "pg_beat_is_leader", "sched-metrics") is not None
        server = next(s for s in metrics_servers() if s.collector.scheduler is scheduler)
        assert server.server.server_address[0] == "127.0.0.1"
    finally:
        scheduler.close()
        app.close()
    with pytest.raises(OSError):
        scrape(port)  # stopped with the scheduler


def metrics_servers() -> list[MetricsServer]:
    from pg_beat import metrics

    return list(metrics._servers)


def test_ticks_that_can_never_be_published_are_counted(db_url: str) -> None:
    with replica(db_url, replica_name="f1") as leader, metrics_of(leader) as server:
        leader.dispatcher.publisher.send = refuse  # e.g. bad options: TypeError, permanent
        with ScheduleManager(db_url) as manager:
            manager.create("bad", "app.tick", every="1h")
            manager.run_now("bad")
        leader.run_until(lambda: leader.dispatcher.publisher.failed_total >= 1)
        assert value(scrape(server.port), "pg_beat_ticks_failed_total", "f1") == 1


def refuse(claim: object, epoch: int) -> None:
    raise TypeError("got multiple values for keyword argument 'task_id' (test)")


def test_task_health_gauges_bounded_and_read_at_most_once_per_ttl(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(db_url, "test") as conn:
        # late-n: every minute, its last run 2 + n minutes ago: all overdue (factor 2).
        conn.execute(
            """
            INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds, next_run_at,
                                           last_run_at)
            SELECT 'late-' || n, 'app.t', 'interval', 60, now() + interval '30 s',
                   now() - make_interval(mins => 2 + n)
            FROM generate_series(1, 12) AS n
            UNION ALL
            SELECT 'flaky', 'app.t', 'interval', 60, now() + interval '30 s', now()
            """
        )
        conn.execute(
            """
            INSERT INTO pg_beat_schedule_health (schedule_id, group_name, last_outcome,
                last_finished_at, last_success_at, consecutive_failures, last_error)
            SELECT id, group_name, 'failure', now(), now() - interval '10 s', 2, 'boom'
            FROM pg_beat_schedules WHERE name = 'flaky'
            """
        )
        conn.execute(
            """
            INSERT INTO pg_beat_runs (group_name, schedule_id, schedule_name, due_at, task_id,
                                      epoch, replica, status, finished_at, outcome)
            SELECT 'default', s.id, s.name, now() - make_interval(secs => n), 'x-' || n, 1,
                   'r', 'sent', now(), CASE WHEN n % 4 = 0 THEN 'failure' ELSE 'success' END
            FROM pg_beat_schedules s, generate_series(1, 20) AS n WHERE s.name = 'flaky'
            """
        )
    reads: list[int] = []
    real = store.health.unhealthy

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(store.health, "unhealthy", counted)
    scheduler = Unconnected(settings_for(db_url, replica_name="h"))
    with metrics_of(scheduler) as server:
        samples = scrape(server.port)
        assert value(samples, "pg_beat_schedules_overdue", "h") == 12
        assert value(samples, "pg_beat_schedules_failing", "h") == 1
        finished = {
            o: value(samples, "pg_beat_runs_finished", "h", outcome=o)
            for o in ("success", "failure", "retry", "revoked", "lost")
        }
        assert finished == {"success": 15, "failure": 5, "retry": 0, "revoked": 0, "lost": 0}
        top = {
            dict(labels)["schedule"]: v
            for (name, labels), v in samples.items()
            if name == "pg_beat_schedule_overdue_seconds"
        }
        assert set(top) == {f"late-{n}" for n in range(3, 13)}  # the ten most overdue
        assert 14 * 60 - 5 < top["late-12"] < 14 * 60 + 30

        # Scrapes within HEALTH_TTL are served from the last read, changes or not.
        with connect(db_url, "test") as conn:
            conn.execute("UPDATE pg_beat_schedule_health SET consecutive_failures = 0")
        for _ in range(5):
            samples = scrape(server.port)
        assert value(samples, "pg_beat_schedules_failing", "h") == 1
        assert len(reads) == 1
        assert value(samples, "pg_beat_metrics_scrape_errors_total", "h") == 0

        monkeypatch.setattr(metrics, "HEALTH_TTL", 0.0)
        samples = scrape(server.port)
        assert value(samples, "pg_beat_schedules_failing", "h") == 0
        assert len(reads) == 2


def test_a_failing_health_read_leaves_its_gauges_out_and_logs_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with connect(db_url, "test") as conn:
        conn.execute("ALTER TABLE pg_beat_schedule_health RENAME TO gone")
    monkeypatch.setattr(metrics, "HEALTH_TTL", 0.0)
    scheduler = Unconnected(settings_for(db_url, replica_name="h"))
    with metrics_of(scheduler) as server:
        for expected_errors in (1, 2):
            samples = scrape(server.port)
            assert value(samples, "pg_beat_due_backlog", "h") == 0  # the snapshot still works
            assert value(samples, "pg_beat_schedules_overdue", "h") is None
            assert value(samples, "pg_beat_runs_finished", "h", outcome="success") is None
            assert value(samples, "pg_beat_metrics_scrape_errors_total", "h") == expected_errors
        with connect(db_url, "test") as conn:
            conn.execute("ALTER TABLE gone RENAME TO pg_beat_schedule_health")
        assert value(scrape(server.port), "pg_beat_schedules_overdue", "h") == 0
    said = [r for r in caplog.records if "cannot read the task health" in r.getMessage()]
    assert len(said) == 1, said
