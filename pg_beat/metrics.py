"""Prometheus metrics of one replica, served over HTTP when ``pg_beat_metrics_port`` is set.

Needs the ``metrics`` extra (``pip install 'pg-beat[metrics]'``). Every metric carries the
labels ``group`` and ``replica``. Values are read from the running scheduler at scrape time;
the two that need the database (backlog, and a standby's view of the leader's heartbeat) come
from one query on a connection of the metrics' own, cached for one second. The task health
figures (outcomes recorded by tracking workers) come from two more queries, run at most once
per ``HEALTH_TTL`` seconds whatever the scrape rate, each bounded at 100,000 schedules: one
pass over the schedules (no per-schedule query) and the run log's last ``RUNS_WINDOW``
seconds (by its ``claimed_at`` index). No per-schedule series but the ``TOP_OVERDUE`` most
overdue.

===================================== ========= =================================================
Metric                                Type      Meaning
===================================== ========= =================================================
``pg_beat_is_leader``                 gauge     1 while this replica holds the lease (and its
                                                local deadline has not passed), else 0
``pg_beat_epoch``                     gauge     lease epoch: the one held, on a standby the
                                                latest read from the database
``pg_beat_ticks_dispatched_total``    counter   ticks this replica published
``pg_beat_ticks_failed_total``        counter   ticks that could never be published (bad
                                                options, over the size limit, refused by the
                                                broker): recorded ``failed``
``pg_beat_dispatch_lateness_seconds`` histogram publish time minus due time of each tick
                                                sent (buckets 5 ms to 60 s; clamped at 0)
``pg_beat_failovers_total``           counter   times this replica took the lease
``pg_beat_lease_renewal_failures_total`` counter renewals that found the lease lost or the
                                                lease connection broken
``pg_beat_heartbeat_age_seconds``     gauge     leader: seconds since its last successful lease
                                                renewal started; standby: the leader's
                                                heartbeat age on the database clock
``pg_beat_due_backlog``               gauge     enabled schedules whose ``next_run_at`` has
                                                passed (database clock)
``pg_beat_broker_up``                 gauge     1 while this replica's broker connection works
                                                (its publishes, or a standby's probes), 0 while
                                                it fails; absent before the first try
``pg_beat_broker_failing_seconds``    gauge     seconds since publishing (or probing) began to
                                                fail; 0 while it works
``pg_beat_ticks_waiting``             gauge     leader: ticks claimed and not yet published
                                                (they wait, in order, through a broker outage)
``pg_beat_metrics_scrape_errors_total`` counter database reads for a scrape that failed
``pg_beat_runs_finished``             gauge     runs claimed in the last hour that finished,
                                                by ``outcome`` (success, failure, retry,
                                                revoked, lost); retry: a retry is pending
``pg_beat_schedules_failing``         gauge     enabled schedules whose last run failed
                                                (consecutive failures > 0)
``pg_beat_schedules_overdue``         gauge     enabled schedules with no success (untracked:
                                                no run) for over pg_beat_overdue_factor periods
``pg_beat_schedule_overdue_seconds``  gauge     seconds since the last success of each of the
                                                ten most overdue schedules (label
                                                ``schedule``), relative to their period
===================================== ========= =================================================

A sample is left out when its value is unknown (e.g. the database is unreachable).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.exc import DBAPIError

from pg_beat import store
from pg_beat.config import Settings
from pg_beat.exceptions import ConfigurationError
from pg_beat.leadership import clock
from pg_beat.leadership.lease import LeaderState

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from pg_beat.dispatch.loop import Dispatcher
    from pg_beat.leadership.watchdog import Watchdog
    from pg_beat.publish.brokerhealth import Health
    from pg_beat.publish.ticks import Claim

logger = logging.getLogger("pg_beat.metrics")

LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SNAPSHOT_TTL = 1.0  # seconds a database read serves scrapes
SNAPSHOT_BACKOFF = 5.0  # seconds before retrying after a failed database read
HEALTH_TTL = 30.0  # seconds the task health figures serve scrapes (read or failed)
RUNS_WINDOW = 3600.0  # seconds of the run log counted by outcome
TOP_OVERDUE = 10  # schedules with a series of their own: the most overdue
OUTCOMES = ("success", "failure", "retry", "revoked", "lost")


class SchedulerLike(Protocol):
    """What the metrics read: ``pg_beat.Scheduler`` has these attributes."""

    settings: Settings
    state: LeaderState
    watchdog: Watchdog | None
    dispatcher: Dispatcher | None

    def broker_health(self) -> Health: ...


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(
            "pg_beat_metrics_port is set but prometheus-client is not installed: "
            "pip install 'pg-beat[metrics]'"
        ) from exc
    return prometheus_client


class SchedulerCollector:
    """A prometheus_client collector reading one scheduler's live values at scrape time."""

    def __init__(self, scheduler: SchedulerLike, registry: Any) -> None:
        prometheus = _prometheus()
        self.scheduler = scheduler
        settings = scheduler.settings
        self.labels = {"group": settings.group, "replica": settings.replica_name}
        self.lateness = prometheus.Histogram(
            "pg_beat_dispatch_lateness_seconds",
            "Publish time minus due time of each tick sent (seconds)",
            list(self.labels),
            registry=registry,
            buckets=LATENESS_BUCKETS,
        ).labels(**self.labels)
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at = float("-inf")
        self._retry_at = 0.0
        self.scrape_errors = 0
        self._health_lock = threading.Lock()
        self._health: dict[str, Any] | None = None
        self._health_at = float("-inf")
        self._health_failing = False
        self._hooked: Dispatcher | None = None
        self.hook_dispatcher()

    # --- dispatch lateness -----------------------------------------------------------------

    def hook_dispatcher(self) -> None:
        """Chain :meth:`observe` into the dispatcher's ``on_sent`` (once per dispatcher)."""
        dispatcher = self.scheduler.dispatcher
        if dispatcher is None or dispatcher is self._hooked:
            return
        previous: Callable[[Claim, float], None] | None = dispatcher.on_sent

        def on_sent(claim: Claim, publish_time: float) -> None:
            self.observe(claim, publish_time)
            if previous is not None:
                previous(claim, publish_time)

        dispatcher.on_sent = on_sent
        self._hooked = dispatcher

    def observe(self, claim: Claim, publish_time: float) -> None:
        # Clock skew between this host and the database can make it slightly negative.
        self.lateness.observe(max(0.0, publish_time - claim.due_at.timestamp()))

    # --- database snapshot -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any] | None:
        """Backlog and lease as last read (at most ``SNAPSHOT_TTL`` old); None when unknown."""
        with self._lock:
            now = time.monotonic()
            if now - self._snapshot_at < SNAPSHOT_TTL or now < self._retry_at:
                return self._snapshot
            settings = self.scheduler.settings
            try:
                if self._engine is None:
                    self._engine = store.connections.make_engine(settings, "metrics", pool_size=1)
                with self._engine.connect() as conn:
                    row = store.diagnostics.metrics_snapshot(conn, settings.group)
                    conn.rollback()
                self._snapshot = dict(row)
                self._snapshot_at = now
            except DBAPIError as exc:
                self.scrape_errors += 1
                self._snapshot, self._retry_at = None, now + SNAPSHOT_BACKOFF
                logger.warning(
                    "metrics: cannot read the database: %s",
                    store.connections.first_line(exc),
                    extra={"action": "metrics_db_error", "replica": settings.replica_name},
                )
            return self._snapshot

    def health(self) -> dict[str, Any] | None:
        """Finished runs by outcome and the failing and overdue schedules, read at most once
        per ``HEALTH_TTL`` seconds (a failed read too: the database is not asked again
        sooner); None when unknown. Read only after :meth:`snapshot` could connect."""
        with self._health_lock:
            now = time.monotonic()
            if now - self._health_at < HEALTH_TTL or self._engine is None:
                return self._health
            self._health_at = now
            settings = self.scheduler.settings
            try:
                with self._engine.connect() as conn:
                    outcomes = store.health.outcome_counts(conn, settings.group, RUNS_WINDOW)
                    found = store.health.unhealthy(
                        conn, settings.group, settings.overdue_factor, TOP_OVERDUE,
                        overdue_only=True,
                    )  # fmt: skip
                    conn.rollback()
                self._health_failing = False
                self._health = {
                    "outcomes": {o: outcomes.get(o, 0) for o in OUTCOMES},
                    "failing": found.failing,
                    "overdue": found.overdue,
                    "top": [(str(r["name"]), float(r["overdue_for"])) for r in found.worst],
                }
            except DBAPIError as exc:
                self.scrape_errors += 1
                self._health = None
                if not self._health_failing:  # once per outage, not per read
                    self._health_failing = True
                    logger.warning(
                        "metrics: cannot read the task health: %s",
                        store.connections.first_line(exc),
                        extra={"action": "metrics_db_error", "replica": settings.replica_name},
                    )
            return self._health

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    # --- collection ------------------------------------------------------------------------

    def describe(self) -> list[Any]:
        return []  # no duplicate-name checks at registration: values exist only at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.hook_dispatcher()
        scheduler, names, values = self.scheduler, list(self.labels), list(self.labels.values())
        watchdog, dispatcher, state = scheduler.watchdog, scheduler.dispatcher, scheduler.state
        held = state.epoch
        snapshot = self.snapshot()

        def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            if value is not None:
                family.add_metric(values, float(value))
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=names)
            family.add_metric(values, float(value))
            return family

        epoch = held if held is not None else (snapshot or {}).get("epoch")
        if held is not None:
            lifetime = scheduler.settings.lease_ttl - scheduler.settings.publish_margin
            heartbeat_age: float | None = max(0.0, lifetime - state.remaining())
        else:
            heartbeat_age = (snapshot or {}).get("heartbeat_age")
            if (snapshot or {}).get("holder") is None:
                heartbeat_age = None
        backlog = None if snapshot is None else snapshot["due_backlog"]

        yield gauge(
            "pg_beat_is_leader", "1 while this replica holds the lease", int(held is not None)
        )
        yield gauge("pg_beat_epoch", "Lease epoch (held, or latest seen on a standby)", epoch)
        yield counter(
            "pg_beat_ticks_dispatched",
            "Ticks this replica published",
            dispatcher.sent_total if dispatcher is not None else 0,
        )
        yield counter(
            "pg_beat_ticks_failed",
            "Ticks that could never be published, recorded as failed (bad options, too big, "
            "refused by the broker)",
            dispatcher.publisher.failed_total if dispatcher is not None else 0,
        )
        yield counter(
            "pg_beat_failovers",
            "Times this replica took the lease",
            watchdog.failovers if watchdog is not None else 0,
        )
        yield counter(
            "pg_beat_lease_renewal_failures",
            "Lease renewals that found the lease lost or its connection broken",
            watchdog.renewal_failures if watchdog is not None else 0,
        )
        yield gauge(
            "pg_beat_heartbeat_age_seconds",
            "Seconds since the last lease renewal (leader) or the leader's heartbeat age (standby)",
            heartbeat_age,
        )
        yield gauge("pg_beat_due_backlog", "Enabled schedules past their next_run_at", backlog)
        health = scheduler.broker_health()
        known = health.checked_at is not None
        failing_for = (
            clock.now() - health.failing_since if health.failing_since is not None else 0.0
        )
        yield gauge(
            "pg_beat_broker_up",
            "1 while this replica's broker connection works, 0 while it fails",
            int(health.working) if known else None,
        )
        yield gauge(
            "pg_beat_broker_failing_seconds",
            "Seconds since publishing (or a standby's probes) began to fail; 0 while it works",
            failing_for if known else None,
        )
        yield gauge(
            "pg_beat_ticks_waiting",
            "Leader: ticks claimed and not yet published",
            health.waiting if held is not None else None,
        )
        yield from self._health_families(names, values, snapshot is not None)
        yield counter(
            "pg_beat_metrics_scrape_errors",
            "Database reads for a scrape that failed",
            self.scrape_errors,
        )

    def _health_families(
        self, names: list[str], values: list[str], reachable: bool
    ) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        found = self.health() if reachable else None
        finished = GaugeMetricFamily(
            "pg_beat_runs_finished",
            f"Runs claimed in the last {RUNS_WINDOW:g}s that finished, by outcome",
            labels=[*names, "outcome"],
        )
        failing = GaugeMetricFamily(
            "pg_beat_schedules_failing",
            "Enabled schedules whose last run failed (consecutive failures > 0)",
            labels=names,
        )
        overdue = GaugeMetricFamily(
            "pg_beat_schedules_overdue",
            "Enabled schedules without a success for over pg_beat_overdue_factor periods",
            labels=names,
        )
        top = GaugeMetricFamily(
            "pg_beat_schedule_overdue_seconds",
            f"Seconds since the last success of the {TOP_OVERDUE} most overdue schedules",
            labels=[*names, "schedule"],
        )
        if found is not None:
            for outcome, count in found["outcomes"].items():
                finished.add_metric([*values, outcome], float(count))
            failing.add_metric(values, float(found["failing"]))
            overdue.add_metric(values, float(found["overdue"]))
            for schedule, late in found["top"]:
                top.add_metric([*values, schedule], late)
        yield from (finished, failing, overdue, top)


class MetricsServer:
    """A running metrics endpoint; :meth:`close` stops the HTTP server and its connection."""

    def __init__(self, scheduler: SchedulerLike, port: int, addr: str = "0.0.0.0") -> None:
        prometheus = _prometheus()
        self.registry = prometheus.CollectorRegistry(auto_describe=False)
        self.collector = SchedulerCollector(scheduler, self.registry)
        self.registry.register(self.collector)
        self.server, self.thread = prometheus.start_http_server(
            port, addr=addr, registry=self.registry
        )
        self.addr = addr
        self.port = int(self.server.server_address[1])
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self.collector.close()


# Strong references: the servers live as long as the process (or until stop_metrics).
_servers: list[MetricsServer] = []


def start_metrics_server(
    port: int, scheduler: SchedulerLike, addr: str = "0.0.0.0"
) -> MetricsServer:
    """Serve ``scheduler``'s metrics on ``addr:port`` (port 0: any free port, see ``.port``)."""
    server = MetricsServer(scheduler, port, addr)
    _servers.append(server)
    logger.info(
        "metrics: serving on http://%s:%d/metrics",
        addr,
        server.port,
        extra={"action": "metrics", "replica": scheduler.settings.replica_name},
    )
    return server


def serve_metrics(port: int, scheduler: SchedulerLike, addr: str = "0.0.0.0") -> None:
    """Start the metrics endpoint of ``scheduler`` (called by ``Scheduler.setup_schedule``)."""
    start_metrics_server(port, scheduler, addr)


def stop_metrics(scheduler: SchedulerLike) -> None:
    """Stop every metrics server serving ``scheduler`` (for ``Scheduler.close``). Idempotent."""
    for server in [s for s in _servers if s.collector.scheduler is scheduler]:
        _servers.remove(server)
        server.close()
