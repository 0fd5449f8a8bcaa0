"""The dispatch loop: plan, claim (fenced), publish, mark sent; then sleep until the next due time.

One call of :meth:`Dispatcher.step` claims at most ``pg_beat_batch_size`` due ticks in one
transaction that also proves the lease epoch (invariant 2) and hands them, after the commit, to
the publisher thread, which checks the local deadline before every message (invariant 4). Ticks
sent are marked in the loop's next transaction; when nothing else is due soon, the loop waits
for the batch to go out and marks it at once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import psycopg
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DBAPIError

from pg_beat import schedules, store
from pg_beat.api import spec_from_row
from pg_beat.config import Settings
from pg_beat.lease import LeaderState
from pg_beat.publisher import Publisher, Send

logger = logging.getLogger("pg_beat.dispatch")

TASK_ID_NAMESPACE = uuid.UUID("6f1c7a52-4b8e-4c53-9a57-2d0b5f3e8a11")
ORPHAN_RECHECK = 0.5
BUSY = 0.05  # seconds: a wait shorter than this means the loop is saturated
BACKLOG_WAIT = 0.5  # seconds: longest wait for the publisher's backlog to shrink, per step
FLUSH_WAIT = 2.0  # seconds: how long shutdown waits for a send in progress
CONTENTION_RETRY = 0.05


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None)


def task_id_for(group: str, schedule: str, due_at: datetime) -> str:
    """The deterministic task id of one tick: the same (schedule, due time) gives the same id."""
    due = due_at.astimezone(timezone.utc).isoformat()
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{group}\x1f{schedule}\x1f{due}"))


@dataclass(frozen=True)
class Claim:
    """A claimed tick, ready to publish."""

    run_id: int
    schedule: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    due_at: datetime
    task_id: str
    epoch: int


class Dispatcher:
    """Runs in the beat process's main thread, driven by ``Scheduler.tick``; sends through a
    :class:`~pg_beat.publisher.Publisher` thread of its own."""

    def __init__(
        self,
        settings: Settings,
        state: LeaderState,
        send: Send,
        connector: store.Connector | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.connector = connector or store.Connector(settings)
        # One session of its own, kept open: no pool checkout or ping on the hot path.
        self.engine = self.connector.engine("dispatch", dispatch=True)
        self._conn: Connection | None = None
        self._reused = False  # the last transaction ran on a connection opened earlier
        self._busy = False
        self._listen: psycopg.Connection[Any] | None = None
        self.publisher = Publisher(state, send, settings.replica_name)
        self._unmarked: list[int] = []  # sent, taken from the publisher, not yet recorded
        self._behind = False
        self._orphan_check_at = 0.0
        self._orphan_epoch: int | None = None
        self._led_epoch: int | None = None  # the last epoch we claimed under, until disowned
        self._prune_at = 0.0
        self._failing: str | None = None
        self._progress_at = time.monotonic()
        self._thread_id: int | None = None
        self.backend_pid: int | None = None

    # --- progress, for the watchdog ------------------------------------------------------------

    def progress(self) -> None:
        self._progress_at = time.monotonic()
        self._thread_id = threading.get_ident()

    @property
    def progress_at(self) -> float:
        """The older of the loop's last progress and, while it has work, the publisher's."""
        publishing = self.publisher.stalled_since()
        if publishing is None:
            return self._progress_at
        return min(self._progress_at, publishing)

    @property
    def thread_id(self) -> int | None:
        """The thread that made no progress for longest: the one whose stack tells a hang."""
        publishing = self.publisher.stalled_since()
        if publishing is not None and publishing < self._progress_at:
            return self.publisher.thread_id
        return self._thread_id

    @property
    def sent_total(self) -> int:
        return self.publisher.sent_total

    @property
    def on_sent(self) -> Callable[[Claim, float], None] | None:
        """Called from the publisher thread after each message, with its UNIX publish time."""
        return self.publisher.on_sent

    @on_sent.setter
    def on_sent(self, hook: Callable[[Claim, float], None] | None) -> None:
        self.publisher.on_sent = hook

    # --- one step ------------------------------------------------------------------------

    def step(self) -> float:
        """Do what is due now; return how long to wait before the next step (seconds)."""
        self.progress()
        epoch = self.state.epoch
        try:
            if epoch is None:
                # The publisher drops what is still queued: the next leader re-publishes those.
                # What did go out is recorded now, so it never does.
                self._mark_sent()
                self._disown()
                return self.settings.heartbeat_interval
            delay = self._lead(epoch)
        except (DBAPIError, psycopg.Error) as exc:
            if _sqlstate(exc) in store.TRANSIENT_SQLSTATES:
                self._contended(exc, epoch)
                return CONTENTION_RETRY
            if self._kept_connection_lost(exc, epoch):
                return 0.0  # a new connection, at once: a takeover must not wait for it
            self._database_failed(exc, epoch)
            return min(self.settings.heartbeat_interval, 1.0)
        if self._failing and self._failing.startswith("contended:"):
            self._failing = None
        elif self._failing:
            logger.info(
                "dispatch: database reachable again (epoch %s)",
                epoch,
                extra={"action": "db_recovered", "epoch": epoch},
            )
            self._failing = None
        return delay

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        self._reused = True
        if self._conn is None or self._conn.invalidated or self._conn.closed:
            self._reused = False
            self._conn = self.engine.connect()
            self.backend_pid = store.backend_pid(self._conn)
            self._conn.commit()
        with self._conn.begin():
            yield self._conn

    def _lead(self, epoch: int) -> float:
        if self._orphan_epoch != epoch:
            self._orphan_epoch, self._orphan_check_at = epoch, 0.0
        if self._led_epoch != epoch:
            self._disown()  # an earlier epoch of ours, lost and won again between two steps
            self._led_epoch = epoch
        publisher, batch = self.publisher, self.settings.batch_size
        if publisher.backlog >= batch:
            # Claim at most one batch ahead of the broker: a claim that waits long to be sent
            # widens the window in which a crash leaves it to be re-published.
            publisher.wait_below(batch, BACKLOG_WAIT)
            return 0.0
        self._unmarked.extend(publisher.take_sent())
        now = time.monotonic()
        if not (
            self._unmarked or self._busy or now >= self._orphan_check_at or now >= self._prune_at
        ):
            # The common case, nothing due: one cheap read, no fenced transaction.
            with self._transaction() as conn:
                idle = store.idle_check(conn, self.settings.group)
            if not idle.unplanned and (idle.next_due is None or idle.next_due > idle.now):
                idle_wait = self.settings.heartbeat_interval
                if idle.next_due is not None:
                    idle_wait = min(idle_wait, (idle.next_due - idle.now).total_seconds())
                return min(idle_wait, self._orphan_check_at - now, self._prune_at - now)
        claims, wait = self._claim(epoch)
        if wait is None:  # fenced out
            return self.settings.heartbeat_interval
        self._busy = wait <= BUSY  # the next step claims at once: skip its idle read
        wake_at = time.monotonic() + wait
        publisher.submit(claims, epoch)
        # Busy: the next claim follows at once, while these go out, and its transaction records
        # them as sent. Otherwise wait for them and record them now, keeping the window in which
        # a crash leaves a sent tick to be re-published small.
        if not self._busy and publisher.wait_below(1, wait):
            self.progress()
            self._mark_sent()
        self._housekeeping()
        return max(0.0, min(wake_at, self._orphan_check_at) - time.monotonic())

    def _claim(self, epoch: int) -> tuple[list[Claim], float | None]:
        """One fenced transaction: record what was sent, re-claim orphans, plan new rows, claim
        due ticks, and find how long to wait after them (None: the epoch is no longer ours)."""
        with self._transaction() as conn:
            claims, wait = self._claim_in(conn, epoch, self._unmarked)
        if wait is not None:  # committed: what was marked in that transaction is recorded
            self._unmarked = []
        return claims, wait

    def _claim_in(
        self, conn: Connection, epoch: int, marking: list[int]
    ) -> tuple[list[Claim], float | None]:
        group, settings = self.settings.group, self.settings
        now = store.fence(conn, group, epoch, settings.replica_name)
        if now is None:
            self.state.step_down()
            logger.warning(
                "dispatch: lease epoch %s is no longer ours; standing by",
                epoch,
                extra={"action": "fenced_out", "epoch": epoch, "replica": settings.replica_name},
            )
            return [], None
        store.mark_sent(conn, marking)
        claims = self._orphans(conn, epoch)
        unplanned = store.select_unplanned(conn, group, settings.batch_size)
        self._plan(conn, unplanned, now)
        due = store.select_due(conn, group, now, settings.batch_size)
        claims.extend(self._claim_due(conn, due, now, epoch))
        # Full batch, rows left to plan, or a schedule still behind: more to do right now.
        full = len(due) >= settings.batch_size or len(unplanned) >= settings.batch_size
        if full or self._behind:
            return claims, 0.0
        wake = store.next_wake(conn, group, now)
        if wake.unplanned:
            return claims, 0.0
        wait = settings.heartbeat_interval
        if wake.next_due is not None:
            wait = min(wait, (wake.next_due - wake.now).total_seconds())
        return claims, max(wait, 0.0)

    def _orphans(self, conn: Connection, epoch: int) -> list[Claim]:
        if time.monotonic() < self._orphan_check_at:
            return []
        group = self.settings.group
        # Ours already (queued, being sent, or a failed publish retried): look again later.
        in_flight = self.publisher.in_flight()
        rows = [
            r
            for r in store.orphaned_claims(conn, group, epoch, self.settings.batch_size)
            if r["id"] not in in_flight
        ]
        left = store.pending_orphans(conn, group, epoch) - len(rows)
        self._orphan_check_at = (
            time.monotonic() + ORPHAN_RECHECK if left > 0 or rows else float("inf")
        )
        if rows:
            logger.warning(
                "dispatch: re-publishing %d tick(s) claimed by an earlier epoch but never "
                "marked sent (same task ids)",
                len(rows),
                extra={"action": "republish", "epoch": epoch, "count": len(rows)},
            )
        return [
            Claim(
                r["id"],
                r["schedule_name"],
                r["task"],
                r["args"],
                r["kwargs"],
                r["options"],
                r["due_at"],
                r["task_id"],
                r["epoch"],
            )
            for r in rows
        ]

    def _plan(self, conn: Connection, rows: Sequence[RowMapping], now: datetime) -> None:
        plans: list[tuple[int, datetime | None]] = []
        for row in rows:
            try:
                spec = spec_from_row(row)
                schedules.validate(spec)
                plans.append((row["id"], schedules.first_due(spec, now, row["last_due_at"])))
            except Exception as exc:
                self._park(conn, row, exc)
        store.set_planned(conn, plans)

    def _claim_due(
        self, conn: Connection, rows: Sequence[RowMapping], now: datetime, epoch: int
    ) -> list[Claim]:
        settings = self.settings
        ticks: list[store.Tick] = []
        candidates: dict[tuple[int, datetime], Claim] = {}
        for row in rows:
            due: datetime = row["next_run_at"]
            try:
                spec = spec_from_row(row)
                decision = schedules.resolve_misfire(
                    spec,
                    due,
                    now,
                    row["misfire_policy"] or settings.misfire_policy,
                    settings.misfire_grace_time,
                    # The limit counts every late tick sent, this one included.
                    (row["catch_up_limit"] or settings.catch_up_limit) - 1,
                )
            except Exception as exc:
                self._park(conn, row, exc)
                continue
            task_id = task_id_for(settings.group, row["name"], due)
            ticks.append(
                store.Tick(row["id"], row["name"], due, task_id, decision.fire, decision.next_due)
            )
            if decision.fire:
                candidates[(row["id"], due)] = Claim(
                    0,
                    row["name"],
                    row["task"],
                    row["args"],
                    row["kwargs"],
                    row["options"],
                    due,
                    task_id,
                    epoch,
                )
        self._behind = any(t.next_run_at is not None and t.next_run_at <= now for t in ticks)
        new = store.claim_ticks(conn, settings.group, epoch, settings.replica_name, ticks)
        # A tick whose run row already existed was claimed before: never send it twice.
        return [replace(c, run_id=new[key]) for key, c in candidates.items() if key in new]

    def _park(self, conn: Connection, row: RowMapping, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        logger.error(
            "dispatch: schedule %r skipped until it is edited: %s",
            row["name"],
            message,
            extra={"action": "parked", "schedule": row["name"]},
        )
        store.park_schedule(conn, row["id"], message)

    # --- recording what was sent --------------------------------------------------------------

    def _disown(self) -> None:
        """Once we have stepped down from the epoch we last led and nothing of it is being
        sent, say so in the database (with the marks of what was sent, in one transaction), so
        the next leader re-publishes its unsent claims now, not when its lease would expire.
        Never merely past the local deadline: a renewal may still bring that epoch back."""
        epoch = self._led_epoch
        if epoch is None or self.state.holds(epoch) or self.publisher.backlog:
            return
        self._unmarked.extend(self.publisher.take_sent())
        with self._transaction() as conn:
            store.mark_sent(conn, self._unmarked)
            store.disown(conn, self.settings.group, epoch, self.settings.replica_name)
        self._unmarked = []
        self._led_epoch = None
        logger.info(
            "dispatch: gave up epoch %s; its unsent claims are the next leader's to send "
            "(replica %s)",
            epoch,
            self.settings.replica_name,
            extra={"action": "disowned", "epoch": epoch, "replica": self.settings.replica_name},
        )

    def _mark_sent(self) -> None:
        """Record what was published; kept and retried if the database fails, so a lost mark
        never makes a later leader re-send a tick."""
        self._unmarked.extend(self.publisher.take_sent())
        if self._unmarked:
            with self._transaction() as conn:
                store.mark_sent(conn, self._unmarked)
            self._unmarked = []

    def _housekeeping(self) -> None:
        if time.monotonic() < self._prune_at:
            return
        self._prune_at = time.monotonic() + 60.0
        with self._transaction() as conn:
            store.prune_runs(conn, self.settings.run_retention)

    def _contended(self, exc: Exception, epoch: int | None) -> None:
        """A deadlock or lock/statement timeout: the transaction rolled back; just try again."""
        state = f"contended:{_sqlstate(exc)}"
        if self._failing != state:
            logger.warning(
                "dispatch: %s (sqlstate %s), retrying (epoch %s)",
                str(getattr(exc, "orig", exc)).splitlines()[0],
                _sqlstate(exc),
                epoch,
                extra={
                    "action": "contention",
                    "epoch": epoch,
                    "replica": self.settings.replica_name,
                },
            )
        self._failing = state

    def _kept_connection_lost(self, exc: Exception, epoch: int | None) -> bool:
        """The connection kept open between steps was found closed, e.g. terminated while this
        replica stood by and did not use it: replace it at once rather than back off. If the
        server is really gone, the new connection fails and the usual back-off follows."""
        lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
        if not (lost and self._reused and self._failing is None):
            return False
        logger.info(
            "dispatch: the kept-open database connection was closed (%s); reconnecting "
            "(replica %s, epoch %s)",
            str(getattr(exc, "orig", exc)).splitlines()[0],
            self.settings.replica_name,
            epoch,
            extra={"action": "reconnect", "epoch": epoch, "replica": self.settings.replica_name},
        )
        self._drop_connection()
        return True

    def _database_failed(self, exc: Exception, epoch: int | None) -> None:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if self._failing is None:
            logger.error(
                "dispatch: database error, not dispatching until it recovers (epoch %s): %s",
                epoch,
                reason,
                extra={"action": "db_error", "epoch": epoch, "replica": self.settings.replica_name},
            )
        self._failing = reason
        self._drop_connection()
        self._close_listen()

    # --- waiting -------------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` s; a schedule change (NOTIFY) or leadership change wakes us."""
        if timeout <= 0:
            return
        if self.state.epoch is None or self._failing:
            self.state.changed.wait(timeout)
            self.state.changed.clear()
            return
        try:
            if self._listen is None or self._listen.closed:
                self._listen = self.connector.listen("listen")
            if self._listen is None:  # transaction pooling: no LISTEN, look again soon
                self.state.changed.wait(min(timeout, self.settings.poll_interval))
                self.state.changed.clear()
                return
            for _ in self._listen.notifies(timeout=timeout, stop_after=1):
                break
            # Drain whatever else arrived, so a burst of edits costs one wake-up.
            for _ in self._listen.notifies(timeout=0.0):
                pass
        except psycopg.Error as exc:
            self._close_listen()
            if self._failing is None:
                logger.warning(
                    "dispatch: LISTEN connection lost: %s", exc, extra={"action": "listen_lost"}
                )
            time.sleep(min(timeout, 0.5))
        finally:
            self.progress()

    def _close_listen(self) -> None:
        if self._listen is not None:
            try:
                self._listen.close()
            except Exception:
                logger.debug("dispatch: closing LISTEN connection failed", exc_info=True)
            self._listen = None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:
                logger.debug("dispatch: closing the dispatch connection failed", exc_info=True)
        self._conn = None
        self.backend_pid = None
        self.engine.dispose()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the publisher to send what it has, then record it (from
        the loop's thread only). True when nothing was left to send."""
        drained = self.publisher.wait_below(1, timeout)
        self._mark_sent()
        return drained

    def flush_marks(self) -> None:
        """At shutdown, before the lease is released: record what was sent, on a connection
        of its own (this may run in a signal handler, mid-transaction on the usual one). The
        lease is already stepped down, so the publisher drops its queue and ends its send."""
        self.publisher.wait_below(1, FLUSH_WAIT)
        self._unmarked.extend(self.publisher.take_sent())
        if not self._unmarked:
            return
        engine = self.connector.engine("shutdown", dispatch=True)
        try:
            with engine.begin() as conn:
                store.mark_sent(conn, self._unmarked)
            self._unmarked = []
        except DBAPIError as exc:
            logger.warning(
                "dispatch: could not record %d sent tick(s) at shutdown: %s",
                len(self._unmarked),
                exc.orig,
            )
        finally:
            engine.dispose()

    def close(self) -> None:
        self.publisher.stop(FLUSH_WAIT)
        self._close_listen()
        self._drop_connection()
