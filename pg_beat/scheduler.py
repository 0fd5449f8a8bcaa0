"""``pg_beat.Scheduler``, the Celery beat scheduler (``beat_scheduler = "pg_beat:Scheduler"``).

Thin by design: configuration, start-up, and wiring of the dispatcher (main thread), the
watchdog (its own thread) and the publish path. Celery builds a ``lazy=True`` instance for its
banner; that one reads at most the schema revision and writes nothing.

Start-up waits for the database with one log line per state change, and can be stopped at
any point: Celery's SIGTERM/SIGINT handler builds a second scheduler to close while the first
is still starting, and that second one ends the process at once. A database or role that does
not exist, a failed password, a bad setting and a schema mismatch are not retried: beat exits
with one line and a non-zero status.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery import beat
from kombu.utils.objects import cached_property
from sqlalchemy.exc import DBAPIError

from pg_beat import startup, store
from pg_beat.config import Settings
from pg_beat.dispatch.loop import Dispatcher
from pg_beat.exceptions import ConfigurationError
from pg_beat.leadership import clock
from pg_beat.leadership.lease import LeaderState
from pg_beat.leadership.watchdog import Watchdog
from pg_beat.liveness import LivenessFile
from pg_beat.publish import broker, brokerhealth
from pg_beat.publish.brokerhealth import Health, Prober, probe_connection
from pg_beat.publish.outbound import Outbound
from pg_beat.urls import describe

logger = logging.getLogger("pg_beat.scheduler")


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    """A Celery beat scheduler whose schedules live in PostgreSQL and whose replicas elect one
    fenced leader. Settings: the ``pg_beat_*`` keys of the app's configuration."""

    #: True while a (non-lazy) instance waits for its database at start.
    _starting = False

    def __init__(self, app: Any, *args: Any, lazy: bool = False, **kwargs: Any) -> None:
        if Scheduler._starting and not lazy:
            # Celery's SIGTERM/SIGINT handler is closing a scheduler that is still starting (it
            # builds a new one to close): stop here. The SystemExit unwinds the handler and the
            # start-up it interrupted.
            raise SystemExit(0)
        try:
            self.settings = Settings.from_celery(app.conf)
        except ConfigurationError as exc:
            raise SystemExit(f"pg_beat: {exc}") from None
        self.connector = store.connections.Connector(self.settings)
        self.state = LeaderState()
        self.dispatcher: Dispatcher | None = None
        self.watchdog: Watchdog | None = None
        self._closed = False
        self._producer_ready = False
        self.liveness = (
            LivenessFile(self.settings.liveness_file, self.settings.replica_name)
            if self.settings.liveness_file
            else None
        )
        self.prober = Prober(lambda: probe_connection(self.connection), self.settings.replica_name)
        self.outbound = Outbound(app, self.settings, lambda: self.producer, lambda: self.connection)
        #: Kept empty on purpose: schedules are read from the database as they fall due.
        self._empty: dict[str, Any] = {}
        super().__init__(app, *args, lazy=lazy, **kwargs)

    # --- Celery's scheduler interface -----------------------------------------------------

    @property
    def schedule(self) -> dict[str, Any]:
        return self._empty

    def setup_schedule(self) -> None:
        settings = self.settings
        Scheduler._starting = True
        try:
            startup.start_up(self.app, settings, self.connector)
        finally:
            Scheduler._starting = False
        outbound = self.outbound
        self.dispatcher = Dispatcher(
            settings, self.state, outbound.send, self.connector, outbound.open_batch
        )
        self.watchdog = Watchdog(
            settings,
            self.state,
            lambda: self.dispatcher.progress_at if self.dispatcher else 0.0,
            dispatch_thread=lambda: self.dispatcher.thread_id if self.dispatcher else None,
            dispatch_backend=lambda: self.dispatcher.backend_pid if self.dispatcher else None,
            connector=self.connector,
            broker_health=self.broker_health,
        )
        if settings.metrics_port:
            from pg_beat.metrics import serve_metrics

            serve_metrics(settings.metrics_port, self, settings.metrics_address)
        self.watchdog.start()
        # What start-up left alive (Celery, kombu, SQLAlchemy and the app: most of the process's
        # objects) lives as long as the process; every full collection would walk it again, in
        # the dispatch loop's thread, inside a claim transaction (30-60 ms here). Frozen, it is
        # never walked again (after one last collection, so that no garbage is frozen with it).
        gc.collect()
        gc.freeze()
        logger.info(
            "pg_beat: replica %s started in group %r (lease ttl %gs, heartbeat %gs, %s mode)",
            settings.replica_name,
            settings.group,
            settings.lease_ttl,
            settings.heartbeat_interval,
            self.connector.mode,
            extra={"action": "start", "replica": settings.replica_name},
        )

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Dispatch what is due, then wait for the next due time or a NOTIFY. Returns 0."""
        if self.dispatcher is None:
            return float(self.max_interval)
        if self.state.epoch is None:
            if not self._producer_ready:
                self._warm_producer()
            if self.prober.due():
                self.prober.probe()
        delay = self.dispatcher.step()
        if self.liveness is not None and self.watchdog is not None:
            stalled = self.dispatcher.publisher.stalled_since()
            self.liveness.beat(
                leader=self.state.epoch is not None,
                watchdog_alive=self.watchdog.is_alive(),
                stalled_for=None if stalled is None else clock.now() - stalled,
            )
        self.dispatcher.wait(min(delay, float(self.max_interval)))
        return 0.0

    def broker_health(self) -> Health:
        """This replica's broker, as its publishes (leader) or its probes (standby) show it."""
        leading = self.dispatcher is not None and self.state.epoch is not None
        publisher = self.dispatcher.publisher if self.dispatcher is not None else None
        return brokerhealth.current(self.prober.health, publisher if leading else None)

    @cached_property
    def connection(self) -> Any:
        """The broker connection of the publish path, with timeouts that fit in the publish
        margin (see :mod:`pg_beat.publish.broker`)."""
        transport = str(self.app.connection_for_write().transport_cls)
        options = broker.connection_options(transport, self.settings.publish_margin)
        return self.app.connection_for_write(**options)

    def _ensure_connected(self) -> Any:
        """The broker connection, connected with one quick try (Celery's own retries up to
        ``broker_connection_max_retries`` times, minutes in all, with a log line each: a
        publish blocked that long would be a hang, and the lines a flood). A failure is the
        publisher's transient error: it retries, with capped back-off, in order."""
        return self.connection.ensure_connection(max_retries=0)

    def _warm_producer(self) -> None:
        """Connect to the broker while standing by, so a takeover's first publish does not pay
        for the connection (most of a hand-over's cost otherwise)."""
        self._producer_ready = True
        try:
            # One quick try: a broker that is down must not block the standby's loop here.
            self.connection.ensure_connection(max_retries=1)
            self.producer.connection.default_channel  # noqa: B018 - opens the channel
        except Exception as exc:
            logger.warning(
                "pg_beat: broker not reachable yet (%s); will connect on first send",
                exc,
                extra={"action": "broker_wait"},
            )

    def sync(self) -> None:
        """Nothing to flush: every claim is committed before its message is sent."""

    def close(self) -> None:
        """Hand over at once: expire the lease and drop the lock. Safe to call twice, and from a
        signal handler (it uses a connection of its own)."""
        if self._closed:
            return
        self._closed = True
        epoch = self.state.step_down()
        if self.dispatcher is not None:
            self.dispatcher.flush_marks()
        if self.watchdog is not None:
            self.watchdog.stop()
            epoch = epoch if epoch is not None else self.watchdog.epoch
            self._release(epoch, self.watchdog.backend_pid)
            self.watchdog.join(timeout=self.settings.heartbeat_interval + 2)
            if not self.watchdog.is_alive():
                # It may have won the lease while we were releasing: give that up too.
                self.watchdog.release()
            self.watchdog.close()
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.settings.metrics_port:
            from pg_beat.metrics import stop_metrics

            stop_metrics(self)
        super().close()

    @property
    def info(self) -> str:
        settings = self.settings
        lines = [
            f"database -> {describe(settings.database_url)}"
            + (f" (schema {settings.schema})" if settings.schema else ""),
            f"    . group -> {settings.group}, replica -> {settings.replica_name}",
            f"    . lease -> ttl {settings.lease_ttl:g}s, heartbeat "
            f"{settings.heartbeat_interval:g}s, hang timeout {settings.hang_timeout:g}s, "
            f"on hang {settings.on_hang}, pool mode {settings.pool_mode}",
            f"    . misfire -> {settings.misfire_policy} (grace {settings.misfire_grace_time:g}s)"
            f", timezone {self.app.conf.timezone or 'UTC'}",
            f"    . schema -> {startup.schema_status(self.connector, settings.schema)}",
        ]
        return "\n".join(lines)

    def _release(self, epoch: int | None, lock_backend: int | None) -> None:
        if epoch is None:
            return
        settings = self.settings
        engine = self.connector.engine("shutdown")
        try:
            with engine.connect() as conn, conn.begin():
                store.lease.release(conn, settings.group, epoch, settings.replica_name)
                if lock_backend is not None:
                    # Ends our lease session, and with it the advisory lock, without touching the
                    # connection object the watchdog thread may be using right now; only while
                    # it is ours and holds the lock (invariant 13): after a restart of the
                    # server the pid may be any client's.
                    store.lease.terminate_own_session(
                        conn, settings.group, lock_backend, self.connector.token
                    )
            logger.info(
                "pg_beat: released the lease on shutdown (epoch %s)",
                epoch,
                extra={"action": "released", "epoch": epoch},
            )
        except DBAPIError as exc:
            logger.warning(
                "pg_beat: could not release the lease on shutdown (epoch %s): %s; it "
                "expires by itself",
                epoch,
                store.connections.first_line(exc),
            )
        finally:
            engine.dispose()
