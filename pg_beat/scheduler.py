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

import logging
import re
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from celery import beat
from celery import schedules as celery_schedules
from kombu.utils.objects import cached_property
from sqlalchemy.exc import DBAPIError

from pg_beat import broker, clock, migrate, store
from pg_beat.api import ScheduleManager, split_crontab
from pg_beat.config import Settings
from pg_beat.dispatch import Dispatcher
from pg_beat.exceptions import (
    ConfigurationError,
    InvalidSchedule,
    MessageTooLarge,
    PgBeatError,
    SchemaMismatch,
)
from pg_beat.lease import LeaderState
from pg_beat.liveness import LivenessFile
from pg_beat.schedules import MESSAGE_OPTIONS
from pg_beat.ticks import Claim
from pg_beat.urls import describe
from pg_beat.watchdog import Watchdog

logger = logging.getLogger("pg_beat.scheduler")

EX_CONFIG = 78  # sysexits.h: a configuration error; a supervisor should not just restart us
#: Connection failures that waiting will not cure.
_PERMANENT = re.compile(
    r"database \".*\" does not exist|role \".*\" does not exist|password authentication "
    r"failed|no pg_hba\.conf entry|authentication failed"
)


def entry_values(name: str, entry: Mapping[str, Any], default_tz: str) -> dict[str, Any]:
    """Column values for one ``beat_schedule`` entry (Celery's schedule classes in, rows out)."""
    schedule = entry.get("schedule")
    options = dict(entry.get("options") or {})
    values: dict[str, Any] = {
        "task": entry.get("task"),
        "args": list(entry.get("args") or ()),
        "kwargs": dict(entry.get("kwargs") or {}),
        "options": {k: v for k, v in options.items() if k in MESSAGE_OPTIONS},
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
        self.connector = store.Connector(self.settings)
        self.state = LeaderState()
        self.dispatcher: Dispatcher | None = None
        self.watchdog: Watchdog | None = None
        self._closed = False
        self._producer_ready = False
        self._unknown_tasks: set[str] = set()
        self.liveness = (
            LivenessFile(self.settings.liveness_file, self.settings.replica_name)
            if self.settings.liveness_file
            else None
        )
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
            self._start_up()
        finally:
            Scheduler._starting = False
        self.dispatcher = Dispatcher(settings, self.state, self._send, self.connector)
        self.watchdog = Watchdog(
            settings,
            self.state,
            lambda: self.dispatcher.progress_at if self.dispatcher else 0.0,
            dispatch_thread=lambda: self.dispatcher.thread_id if self.dispatcher else None,
            dispatch_backend=lambda: self.dispatcher.backend_pid if self.dispatcher else None,
            connector=self.connector,
        )
        if settings.metrics_port:
            from pg_beat.metrics import serve_metrics

            serve_metrics(settings.metrics_port, self, settings.metrics_address)
        self.watchdog.start()
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
        if not self._producer_ready and self.state.epoch is None:
            self._warm_producer()
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

    @cached_property
    def connection(self) -> Any:
        """The broker connection of the publish path, with timeouts that fit in the publish
        margin (see :mod:`pg_beat.broker`)."""
        transport = str(self.app.connection_for_write().transport_cls)
        options = broker.connection_options(transport, self.settings.publish_margin)
        return self.app.connection_for_write(**options)

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
            f"    . schema -> {self._schema_status()}",
        ]
        return "\n".join(lines)

    # --- start-up ----------------------------------------------------------------------------

    def _schema_status(self) -> str:
        try:
            self._check_schema()
        except SchemaMismatch as exc:
            return f"MISMATCH: {exc}"
        except DBAPIError as exc:
            return f"unknown (database unreachable: {_first_line(exc)})"
        return f"at {migrate.head_revision()} (ok)"

    def _check_schema(self) -> None:
        engine = self.connector.engine("check")
        try:
            with engine.connect() as conn:
                current = migrate.current_revision(conn, self.settings.schema)
        finally:
            engine.dispose()
        head = migrate.head_revision()
        if current != head:
            raise SchemaMismatch(
                f"database schema is at revision {current or 'none (not migrated)'}, pg_beat "
                f"needs {head}: run 'pg-beat db upgrade'"
            )

    def _start_up(self) -> None:
        """Check the schema and sync ``beat_schedule``, retrying (with backoff, one line per
        state change) while the database is unreachable or read-only; exit on what waiting
        cannot cure."""
        delay, failing = 0.5, ""
        where = describe(self.settings.database_url)
        while True:
            try:
                self._check_schema()
                if self.settings.sync_config:
                    self._sync_config()
            except (PgBeatError, DBAPIError) as exc:
                reason = _first_line(exc)
                if not isinstance(exc, DBAPIError) or _PERMANENT.search(str(exc)):
                    logger.critical(
                        "pg_beat: cannot start (database %s): %s",
                        where,
                        reason,
                        extra={"action": "start_failed", "replica": self.settings.replica_name},
                    )
                    raise SystemExit(EX_CONFIG) from None
                if reason != failing:
                    logger.error(
                        "pg_beat: database %s not usable yet (%s); retrying with backoff",
                        where,
                        reason,
                        extra={"action": "db_wait", "replica": self.settings.replica_name},
                    )
                    failing = reason
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if failing:
                logger.info("pg_beat: database reachable again (%s)", where)
            return

    def _sync_config(self) -> None:
        settings = self.settings
        tz = str(self.app.conf.timezone or "UTC")
        entries = {
            name: entry_values(name, entry, tz)
            for name, entry in (self.app.conf.beat_schedule or {}).items()
        }
        owner = settings.config_owner or str(self.app.main or "celery")
        manager = ScheduleManager(settings=settings, connector=self.connector)
        try:
            result = manager.sync_config(entries, owner=owner, prune=settings.config_prune)
        finally:
            manager.close()
        logger.info(
            "pg_beat: beat_schedule of %r synced: %d entries, %d removed",
            owner,
            result.upserted,
            len(result.removed),
            extra={"action": "config_sync", "owner": owner},
        )

    # --- publishing ----------------------------------------------------------------------------

    def _send(self, claim: Claim, epoch: int) -> None:
        """Publish one tick (from the publisher thread); raises on failure, which
        :mod:`pg_beat.broker` classifies as transient or permanent."""
        options = dict(claim.options)
        headers = dict(options.pop("headers", None) or {})
        headers.update(
            pg_beat_schedule=claim.schedule,
            pg_beat_due_at=claim.due_at.isoformat().replace("+00:00", "Z"),
            pg_beat_epoch=epoch,
            pg_beat_claim_epoch=claim.epoch,
            pg_beat_replica=self.settings.replica_name,
        )
        options.pop("expire_seconds", None)
        options.pop("expires", None)
        if claim.expires_at is not None:
            options["expires"] = claim.expires_at  # absolute: due time + expires
        self._check_size(claim)
        task = self.app.tasks.get(claim.task)
        if task is None:
            self._warn_unknown(claim)
        publish = task.apply_async if task is not None else self._send_task(claim.task)
        try:
            # retry=False: the publisher thread retries, in order, within the lease's deadline.
            publish(
                claim.args,
                claim.kwargs,
                task_id=claim.task_id,
                headers=headers,
                producer=self.producer,
                retry=False,
                **options,
            )
        except Exception as exc:
            if broker.is_channel_error(exc):
                self._revive_channel()
            raise

    def _send_task(self, name: str) -> Any:
        return lambda args, kwargs, **options: self.app.send_task(name, args, kwargs, **options)

    def _check_size(self, claim: Claim) -> None:
        from kombu.serialization import dumps

        serializer = self.app.conf.task_serializer
        _, _, body = dumps((claim.args, claim.kwargs, {}), serializer=serializer)  # type: ignore[no-untyped-call]
        size = len(body)
        if size > self.settings.max_message_bytes:
            raise MessageTooLarge(
                f"message of {size} bytes is over pg_beat_max_message_bytes "
                f"({self.settings.max_message_bytes})"
            )

    def _warn_unknown(self, claim: Claim) -> None:
        """Once per schedule: the task may be defined on the workers only, so this is no
        error, but a typo in a task name is otherwise only seen by the workers."""
        if claim.schedule in self._unknown_tasks:
            return
        self._unknown_tasks.add(claim.schedule)
        logger.warning(
            "pg_beat: schedule %r sends task %r, which this app does not know (a typo, or a "
            "task defined on the workers only?)",
            claim.schedule,
            claim.task,
            extra={"action": "unknown_task", "schedule": claim.schedule},
        )

    def _revive_channel(self) -> None:
        """The broker closed the channel over one message: the next one gets a new channel."""
        try:
            self.producer.revive(self.connection.channel())
        except Exception:
            logger.debug("pg_beat: could not open a new broker channel yet", exc_info=True)

    def _release(self, epoch: int | None, lock_backend: int | None) -> None:
        if epoch is None:
            return
        settings = self.settings
        engine = self.connector.engine("shutdown")
        try:
            with engine.connect() as conn, conn.begin():
                store.release(conn, settings.group, epoch, settings.replica_name)
                if lock_backend is not None:
                    # Ends our lease session, and with it the advisory lock, without touching the
                    # connection object the watchdog thread may be using right now.
                    store.terminate_own_session(conn, lock_backend)
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
                _first_line(exc),
            )
        finally:
            engine.dispose()


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__
