"""The broker side of the publish path: a claimed tick made a Celery message (its task id,
headers naming the schedule, due time, epoch, replica and group, and whether the worker runs
it once (``pg_beat_run_once``) and the schedule's overlap policy (``pg_beat_overlap``);
``expires`` from the due time) and
handed to kombu on the scheduler's producer, from the publisher thread. Raises what the
broker or the message raised, which :mod:`pg_beat.publish.sending` and
:mod:`pg_beat.publish.broker` classify.

Where the transport batches (kombu 5.7+ on Redis), sends go through a batch, and every message
is pushed once per task id (:mod:`pg_beat.publish.dedup`). After a connection error the connection
and the producer's channel are made anew before the next send, with one quick try.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from pg_beat.config import Settings
from pg_beat.exceptions import MessageTooLarge
from pg_beat.publish import broker, dedup
from pg_beat.publish.publisher import BATCH_MAX
from pg_beat.publish.sending import Batch
from pg_beat.publish.ticks import Claim

logger = logging.getLogger("pg_beat.scheduler")

#: Schedules warned about one by one per task name this app does not know.
UNKNOWN_TASK_SCHEDULES = 5
#: kombu's own flush threshold in a batch, in broker commands: never reached by a batch of the
#: publisher's (one or two commands per message), whose flush checks the deadline first.
BATCH_BUFFER = BATCH_MAX * 4


class Outbound:
    """``producer`` and ``connection`` return the scheduler's (Celery's cached properties)."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        producer: Callable[[], Any],
        connection: Callable[[], Any],
    ) -> None:
        self.app = app
        self.settings = settings
        self.producer = producer
        self.connection = connection
        self._broken = False  # the broker connection failed: reconnect before the next send
        self._publishing: str | None = None  # the task id being published (pg_beat.publish.dedup)
        #: Per unknown task name, the schedules warned about (see _warn_unknown).
        self._unknown_tasks: dict[str, set[str]] = {}

    def send(self, claim: Claim, epoch: int) -> None:
        """Publish one tick (from the publisher thread); raises on failure, which
        :mod:`pg_beat.publish.broker` classifies as transient or permanent."""
        options = dict(claim.options)
        headers = dict(options.pop("headers", None) or {})
        headers.update(
            pg_beat_schedule=claim.schedule,
            pg_beat_due_at=claim.due_at.isoformat().replace("+00:00", "Z"),
            pg_beat_epoch=epoch,
            pg_beat_claim_epoch=claim.epoch,
            pg_beat_replica=self.settings.replica_name,
            pg_beat_group=self.settings.group,
            pg_beat_run_once=claim.run_once,
            pg_beat_overlap=claim.overlap,
        )
        options.pop("expire_seconds", None)
        options.pop("expires", None)
        if claim.expires_at is not None:
            options["expires"] = claim.expires_at  # absolute: due time + expires
        self._check_size(claim)
        if self._broken:
            self._reconnect()
        task = self.app.tasks.get(claim.task)
        if task is None:
            self._warn_unknown(claim)
        publish = task.apply_async if task is not None else self._send_task(claim.task)
        self._publishing = claim.task_id
        try:
            # retry=False: the publisher thread retries, in order, within the lease's deadline.
            publish(
                claim.args,
                claim.kwargs,
                task_id=claim.task_id,
                headers=headers,
                producer=self.producer(),
                retry=False,
                **options,
            )
        except Exception as exc:
            if broker.is_channel_error(exc):
                self._revive_channel()
            elif broker.is_broker_error(exc):
                self._broken = True
            raise
        finally:
            self._publishing = None

    def open_batch(self) -> AbstractContextManager[Batch] | None:
        """A batch on the producer (kombu 5.7+), where the transport defers the messages sent
        inside it to one flush (Redis: one pipeline) and each message is pushed once per task
        id (:mod:`pg_beat.publish.dedup`); None where each would go out at once. kombu's own size
        limit is set above the publisher's, so only our flush sends."""
        if self._broken:
            self._reconnect()
        producer = self.producer()
        if not hasattr(producer, "batch") or not producer.supports_batch_publish:
            return None
        if not dedup.install(producer.channel, lambda: self._publishing):
            return None  # no push-once: a batch's lost reply would duplicate all of it
        return producer.batch(max_size=BATCH_BUFFER)  # type: ignore[no-any-return]

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
        """Once per schedule whose task this app does not know: the task may be defined on the
        workers only, so this is no error, but a typo in a task name is otherwise only seen by
        the workers. At most UNKNOWN_TASK_SCHEDULES schedules per task name, then one line
        saying the rest go unlogged: 10,000 schedules of a task defined elsewhere make a few
        lines, not 10,000."""
        warned = self._unknown_tasks.setdefault(claim.task, set())
        if claim.schedule in warned or len(warned) > UNKNOWN_TASK_SCHEDULES:
            return
        warned.add(claim.schedule)
        extra = {"action": "unknown_task", "schedule": claim.schedule}
        if len(warned) > UNKNOWN_TASK_SCHEDULES:
            logger.warning(
                "pg_beat: more schedules send task %r, which this app does not know (%r too); "
                "not logged for each",
                claim.task,
                claim.schedule,
                extra=extra,
            )
            return
        logger.warning(
            "pg_beat: schedule %r sends task %r, which this app does not know: a typo, or a "
            "task defined on the workers only?",
            claim.schedule,
            claim.task,
            extra=extra,
        )

    def _revive_channel(self) -> None:
        """The broker closed the channel over one message: the next one gets a new channel."""
        try:
            self.producer().revive(self.connection().channel())
        except Exception:
            logger.debug("pg_beat: could not open a new broker channel yet", exc_info=True)

    def _reconnect(self) -> None:
        """After a connection error: a new connection and a producer channel on it, one quick
        try (raises what connecting raised: transient). Redis needs none of it (each publish
        takes a client from the pool, which reconnects), AMQP does."""
        connection = self.connection()
        if not connection.connected:
            connection.ensure_connection(max_retries=0)
        self.producer().revive(connection.default_channel)
        self._broken = False
