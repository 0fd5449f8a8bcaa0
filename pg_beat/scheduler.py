"""``pg_beat.Scheduler``, the Celery beat scheduler (``beat_scheduler = "pg_beat:Scheduler"``).

Thin by design: configuration, start-up checks, and wiring of the dispatcher (main thread)
and the watchdog (its own thread). Celery builds a ``lazy=True`` instance for its banner;
that one reads at most the schema revision and writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from celery import beat
from celery import schedules as celery_schedules
from sqlalchemy.exc import DBAPIError

from pg_beat import migrate, store
from pg_beat.api import ScheduleManager, split_crontab
from pg_beat.config import Settings
from pg_beat.dispatch import Claim, Dispatcher
from pg_beat.exceptions import InvalidSchedule, SchemaMismatch
from pg_beat.lease import LeaderState
from pg_beat.urls import redact_url
from pg_beat.watchdog import Watchdog

logger = logging.getLogger("pg_beat.scheduler")

_OPTION_KEYS = (
    "queue",
    "exchange",
    "routing_key",
    "priority",
    "headers",
    "expires",
    "expire_seconds",
    "soft_time_limit",
    "time_limit",
)


def entry_values(name: str, entry: Mapping[str, Any], default_tz: str) -> dict[str, Any]:
    """Column values for one ``beat_schedule`` entry (Celery's schedule classes in, rows out)."""
    schedule = entry.get("schedule")
    values: dict[str, Any] = {
        "task": entry.get("task"),
        "args": list(entry.get("args") or ()),
        "kwargs": dict(entry.get("kwargs") or {}),
        "options": {k: v for k, v in dict(entry.get("options") or {}).items() if k in _OPTION_KEYS},
        "description": f"from beat_schedule[{name!r}]",
    }
    if isinstance(schedule, (int, float)):
        values.update(kind="interval", interval_seconds=float(schedule))
    elif isinstance(schedule, timedelta):
        values.update(kind="interval", interval_seconds=schedule.total_seconds())
    elif isinstance(schedule, celery_schedules.crontab):
        expression = " ".join(
            _cron_field(getattr(schedule, attr))
            for attr in (
                "_orig_minute",
                "_orig_hour",
                "_orig_day_of_month",
                "_orig_month_of_year",
                "_orig_day_of_week",
            )
        )
        # An unbound crontab would report the *current* app's zone; the scheduler's app wins.
        tz = schedule.tz if getattr(schedule, "_app", None) is not None else default_tz
        values.update(kind="crontab", timezone=str(tz), **split_crontab(expression, name))
    elif isinstance(schedule, celery_schedules.solar):
        values.update(
            kind="solar", solar_event=schedule.event, latitude=schedule.lat, longitude=schedule.lon
        )
    elif isinstance(schedule, celery_schedules.schedule):
        values.update(kind="interval", interval_seconds=schedule.run_every.total_seconds())
    else:
        raise InvalidSchedule(name, f"unsupported schedule {schedule!r}", field="schedule")
    return values


def _cron_field(value: Any) -> str:
    """A crontab field as Celery keeps it (text, number, or a collection of numbers) as text."""
    if isinstance(value, (list, tuple, set, frozenset, range)):
        return ",".join(str(v) for v in sorted(value))
    return str(value)


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    """A Celery beat scheduler whose schedules live in PostgreSQL and whose replicas elect one
    fenced leader. Settings: the ``pg_beat_*`` keys of the app's configuration."""

    def __init__(self, app: Any, *args: Any, lazy: bool = False, **kwargs: Any) -> None:
        self.settings = Settings.from_celery(app.conf)
        self.connector = store.Connector(self.settings)
        self.state = LeaderState()
        self.dispatcher: Dispatcher | None = None
        self.watchdog: Watchdog | None = None
        self._closed = False
        self._producer_ready = False
        self._lazy = lazy
        #: Kept empty on purpose: schedules are read from the database as they fall due.
        self._empty: dict[str, Any] = {}
        super().__init__(app, *args, lazy=lazy, **kwargs)

    # --- Celery's scheduler interface -----------------------------------------------------

    @property
    def schedule(self) -> dict[str, Any]:
        return self._empty

    def setup_schedule(self) -> None:
        settings = self.settings
        self._wait_for_schema()
        if settings.sync_config:
            self._sync_config()
        self.dispatcher = Dispatcher(settings, self.state, self._send, self.connector)
        self.watchdog = Watchdog(
            settings,
            self.state,
            lambda: self.dispatcher.progress_at if self.dispatcher else time.monotonic(),
            dispatch_thread=lambda: self.dispatcher.thread_id if self.dispatcher else None,
            dispatch_backend=lambda: self.dispatcher.backend_pid if self.dispatcher else None,
            connector=self.connector,
        )
        if settings.metrics_port:
            from pg_beat.metrics import serve_metrics

            serve_metrics(settings.metrics_port, self)
        self.watchdog.start()
        logger.info(
            "pg_beat: replica %s started in group %r (lease ttl %gs, heartbeat %gs)",
            settings.replica_name,
            settings.group,
            settings.lease_ttl,
            settings.heartbeat_interval,
            extra={"action": "start", "replica": settings.replica_name},
        )

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Dispatch what is due, then wait for the next due time or a NOTIFY. Returns 0."""
        if self.dispatcher is None:
            return float(self.max_interval)
        if not self._producer_ready and self.state.epoch is None:
            self._warm_producer()
        delay = self.dispatcher.step()
        self.dispatcher.wait(min(delay, float(self.max_interval)))
        return 0.0

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
            f"database -> {redact_url(settings.database_url)}"
            + (f" (schema {settings.schema})" if settings.schema else ""),
            f"    . group -> {settings.group}, replica -> {settings.replica_name}",
            f"    . lease -> ttl {settings.lease_ttl:g}s, heartbeat "
            f"{settings.heartbeat_interval:g}s, hang timeout {settings.hang_timeout:g}s, "
            f"on hang {settings.on_hang}",
            f"    . misfire -> {settings.misfire_policy} (grace {settings.misfire_grace_time:g}s)"
            f", timezone {self.app.conf.timezone or 'UTC'}",
            f"    . schema -> {self._schema_status()}",
        ]
        return "\n".join(lines)

    # --- internals -------------------------------------------------------------------------

    def _schema_status(self) -> str:
        try:
            self._check_schema()
        except SchemaMismatch as exc:
            return f"MISMATCH: {exc}"
        except DBAPIError as exc:
            return f"unknown (database unreachable: {type(exc.orig).__name__})"
        return f"at {migrate.head_revision()} (ok)"

    def _check_schema(self) -> None:
        settings = self.settings
        engine = self.connector.engine("check")
        try:
            with engine.connect() as conn:
                current = migrate.current_revision(conn, settings.schema)
        finally:
            engine.dispose()
        head = migrate.head_revision()
        if current != head:
            raise SchemaMismatch(
                f"database schema is at revision {current or 'none (not migrated)'}, pg_beat "
                f"needs {head}: run 'pg-beat db upgrade'"
            )

    def _wait_for_schema(self) -> None:
        """Retry (with backoff) until the database answers; stop on a schema mismatch."""
        delay = 0.5
        logged = False
        while True:
            try:
                self._check_schema()
                if logged:
                    logger.info("pg_beat: database reachable")
                return
            except SchemaMismatch as exc:
                logger.critical("pg_beat: %s", exc)
                raise SystemExit(f"pg_beat: {exc}") from exc
            except DBAPIError as exc:
                if not logged:
                    logger.error(
                        "pg_beat: database at %s unreachable (%s); retrying with backoff",
                        redact_url(self.settings.database_url),
                        str(exc.orig).splitlines()[0] if exc.orig else exc,
                        extra={"action": "db_wait", "replica": self.settings.replica_name},
                    )
                    logged = True
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _sync_config(self) -> None:
        tz = str(self.app.conf.timezone or "UTC")
        entries = {
            name: entry_values(name, entry, tz)
            for name, entry in (self.app.conf.beat_schedule or {}).items()
        }
        manager = ScheduleManager(settings=self.settings, connector=self.connector)
        try:
            upserted, removed = manager.sync_config(entries)
        finally:
            manager.close()
        logger.info(
            "pg_beat: beat_schedule synced: %d entries, %d removed",
            upserted,
            removed,
            extra={"action": "config_sync"},
        )

    def _send(self, claim: Claim, epoch: int) -> None:
        options = dict(claim.options)
        headers = dict(options.pop("headers", None) or {})
        headers.update(
            pg_beat_schedule=claim.schedule,
            pg_beat_due_at=claim.due_at.isoformat().replace("+00:00", "Z"),
            pg_beat_epoch=epoch,
            pg_beat_claim_epoch=claim.epoch,
            pg_beat_replica=self.settings.replica_name,
        )
        expire_seconds = options.pop("expire_seconds", None)
        if expire_seconds is not None and "expires" not in options:
            options["expires"] = expire_seconds
        task = self.app.tasks.get(claim.task)
        if task is not None:
            task.apply_async(
                claim.args,
                claim.kwargs,
                task_id=claim.task_id,
                headers=headers,
                producer=self.producer,
                **options,
            )
        else:
            self.app.send_task(
                claim.task,
                claim.args,
                claim.kwargs,
                task_id=claim.task_id,
                headers=headers,
                producer=self.producer,
                **options,
            )

    def _release(self, epoch: int | None, lock_backend: int | None) -> None:
        if epoch is None:
            return
        settings = self.settings
        engine = self.connector.engine("shutdown")
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                store.release(conn, settings.group, epoch, settings.replica_name)
                if lock_backend is not None:
                    # Ends our lease session, and with it the advisory lock, without touching the
                    # connection object the watchdog thread may be using right now.
                    store.terminate_backend(conn, lock_backend)
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
                exc.orig,
            )
        finally:
            engine.dispose()
