"""The dispatch loop: record, re-publish orphans, plan, claim (fenced), publish; then sleep until
the next due time.

One call of :meth:`Dispatcher.step` runs at most one claim transaction. It proves the lease
epoch (invariant 2) with a lock that a takeover waits for and the holder's renewal does not
(invariant 10), records what the publisher did since the last one, and claims at most
``pg_beat_batch_size`` ticks within a time budget (invariant 11), ticks that are on time before
a backlog. After the commit the claims go to the publisher thread, which checks the local
deadline before every message (invariant 4). When nothing else is due soon, the loop waits for
the batch to go out and records it at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from pg_beat import downtime, store
from pg_beat.config import Settings
from pg_beat.dispatch.dberrors import DbErrors
from pg_beat.dispatch.keeper import ConnectionKeeper
from pg_beat.dispatch.planner import Planner
from pg_beat.dispatch.recorder import FLUSH_WAIT, Recorder
from pg_beat.leadership import clock
from pg_beat.leadership.lease import LeaderState
from pg_beat.publish.publisher import Publisher
from pg_beat.publish.sending import OpenBatch, Send
from pg_beat.publish.ticks import Claim

logger = logging.getLogger("pg_beat.dispatch")

ORPHAN_RECHECK = 0.5
BUSY = 0.05  # seconds: a wait shorter than this means the loop is saturated
BACKLOG_WAIT = 0.5  # seconds: longest wait for the publisher's backlog to shrink, per step
#: Seconds a claim transaction should take at most; the rows per claim adapt to it.
CLAIM_TARGET = 0.045
MIN_CLAIM = 20  # rows per claim, however slow the machine
#: Rows the first claim of a process takes at most, before _pace has timed one: a cold start
#: into a backlog should not begin with the longest transaction of the drain.
FIRST_CLAIM = 100
PRUNE_EVERY = 60.0


class Dispatcher:
    """Runs in the beat process's main thread, driven by ``Scheduler.tick``; sends through a
    :class:`~pg_beat.publish.publisher.Publisher` thread of its own."""

    def __init__(
        self,
        settings: Settings,
        state: LeaderState,
        send: Send,
        connector: store.connections.Connector | None = None,
        open_batch: OpenBatch | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.connector = connector or store.connections.Connector(settings)
        self.keeper = ConnectionKeeper(self.connector)
        self.planner = Planner(settings)
        self.publisher = Publisher(state, send, settings.replica_name, open_batch)
        self.recorder = Recorder(settings, state, self.publisher, self.keeper)
        self._busy = False
        self._behind = False
        self._full = False  # the last claim took as many rows as it could
        # Rows a claim takes at most, adapted by _pace.
        self._limit = min(settings.batch_size, FIRST_CLAIM)
        self._orphan_check_at = 0.0
        self._orphan_epoch: int | None = None
        self._term: tuple[int, downtime.Term] | None = None  # (epoch, what misfires need of it)
        self._prune_at = 0.0
        self.db = DbErrors(settings.replica_name, self.keeper)
        self._progress_at = clock.now()
        self._thread_id: int | None = None

    # --- progress, for the watchdog ------------------------------------------------------------

    def progress(self) -> None:
        self._progress_at = clock.now()
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
    def backend_pid(self) -> int | None:
        return self.keeper.backend_pid

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
        self.publisher.log.flush()
        epoch = self.state.epoch
        try:
            if epoch is None:
                # The publisher keeps an epoch's ticks while the epoch may still come back and
                # drops them once it will not; what did go out is recorded now, so the next
                # leader never re-sends it.
                self.recorder.record()
                self.recorder.disown()
                return self.settings.heartbeat_interval
            delay = self._lead(epoch)
        except (DBAPIError, psycopg.Error) as exc:
            return self.db.failed(exc, epoch, min(self.settings.heartbeat_interval, 1.0))
        self.db.worked(epoch)
        return delay

    def _lead(self, epoch: int) -> float:
        if self._orphan_epoch != epoch:
            self._orphan_epoch, self._orphan_check_at = epoch, 0.0
        if self.recorder.lead(epoch):
            self._load_failing()
        publisher, ahead = self.publisher, self._limit
        if publisher.backlog >= ahead:
            # Claim at most one claim ahead of the broker. A claim that waits long to be sent
            # widens the window in which a crash leaves it to be re-published, and a loop that
            # claims while the publisher is still busy only takes the GIL from it.
            publisher.wait_below(ahead, BACKLOG_WAIT)
            return 0.0
        pending = self.recorder.collect()
        now = clock.now()
        if not (
            pending
            or self._busy
            or self._behind
            or now >= self._orphan_check_at
            or now >= self._prune_at
        ):
            # The common case, nothing due: one cheap read, no fenced transaction.
            with self.keeper.transaction() as conn:
                wake = store.claims.wake(conn, self.settings.group, overlap=self._overlap)
            if not wake.unplanned and (wake.next_due is None or wake.next_due > wake.now):
                return min(self._until(wake), self._orphan_check_at - now, self._prune_at - now)
        claims, wait = self._claim(epoch)
        if wait is None:  # fenced out
            return self.settings.heartbeat_interval
        self._busy = wait <= BUSY  # the next step claims at once: skip its idle read
        wake_at = clock.now() + wait
        publisher.submit(claims, epoch)
        # Busy: the next claim follows at once, while these go out, and its transaction records
        # them. Otherwise wait for them and record them now, keeping the window in which a
        # crash leaves a sent tick to be re-published small.
        if not self._busy and publisher.wait_below(1, wait):
            self.progress()
            self.recorder.record()
        self._housekeeping()
        return max(0.0, min(wake_at, self._orphan_check_at) - clock.now())

    @property
    def _overlap(self) -> store.claims.Overlap:
        return store.claims.Overlap(self.settings.max_runtime, self.settings.worker_gone_after)

    def _until(self, wake: store.claims.Wake) -> float:
        """Seconds until the next due time, at most a heartbeat interval."""
        wait = self.settings.heartbeat_interval
        if wake.next_due is not None:
            wait = min(wait, (wake.next_due - wake.now).total_seconds())
        return max(wait, 0.0)

    # --- the claim transaction -------------------------------------------------------------

    def _claim(self, epoch: int) -> tuple[list[Claim], float | None]:
        """One fenced transaction: record outcomes, re-claim orphans, plan new rows, claim due
        ticks, and find how long to wait after them (None: the epoch is no longer ours)."""
        started = time.perf_counter()
        with self.keeper.transaction() as conn:
            claims, wait = self._claim_in(conn, epoch)
        if wait is not None:  # committed: the outcomes recorded in it are recorded
            self.recorder.committed()
            self._pace(time.perf_counter() - started)
        return claims, wait

    def _pace(self, took: float) -> None:
        """Fit the rows of the next claim to CLAIM_TARGET: a claim transaction holds its locks
        about that long on any machine, however large the backlog (invariant 11)."""
        if not self._full:
            return  # a claim of all that was due says nothing about the limit
        limit = self._limit
        if took > CLAIM_TARGET:
            limit = int(limit * CLAIM_TARGET / took * 0.9)
        elif took < CLAIM_TARGET / 2:
            limit = int(limit * 1.25) + 1
        self._limit = min(self.settings.batch_size, max(MIN_CLAIM, limit))

    def _claim_in(self, conn: Connection, epoch: int) -> tuple[list[Claim], float | None]:
        group, settings = self.settings.group, self.settings
        now = store.claims.fence(conn, group, epoch, settings.replica_name)
        if now is None:
            self.state.step_down()
            logger.warning(
                "dispatch: lease epoch %s is no longer ours; standing by",
                epoch,
                extra={"action": "fenced_out", "epoch": epoch, "replica": settings.replica_name},
            )
            return [], None
        term = self._term_of(conn, epoch, now)
        self.recorder.write(conn)
        claims = self._orphans(conn, epoch, now, term)
        unplanned = store.claims.select_unplanned(conn, group, settings.batch_size)
        plans, parked = self.planner.plan(unplanned, now)  # within its time budget
        store.claims.set_planned(conn, plans)
        store.claims.park_schedules(conn, parked)
        left = len(unplanned) - len(plans) - len(parked)
        overlap = self._overlap
        due = store.claims.select_due(
            conn, group, now, self._limit, settings.misfire_grace_time, overlap
        )
        # Overlap is decided in this fenced transaction, so it holds across failovers: the
        # unfinished runs of the skip and buffer_one rows only (allow rows read nothing more).
        gated = [row["id"] for row in due if self.planner.gated(row)]
        blockers = store.claims.blockers(conn, gated, now, overlap)
        plan = self.planner.claim(due, now, epoch, self._limit, term, blockers)
        store.claims.mark_lost(conn, plan.lost)
        new = store.claims.claim_ticks(
            conn, group, epoch, settings.replica_name, plan.runs, plan.advances
        )
        # A tick whose run row already existed was claimed before: never send it twice.
        claims.extend(
            replace(claim, run_id=new[key]) for key, claim in plan.claims.items() if key in new
        )
        # A full batch, rows left to plan, or a schedule still behind: more to do right now.
        self._full = len(due) >= self._limit or plan.behind
        self._behind = self._full or left > 0 or len(unplanned) >= settings.batch_size
        if self._behind:
            return claims, 0.0
        wake = store.claims.wake(conn, group, after=now, overlap=overlap)
        return claims, 0.0 if wake.unplanned else self._until(wake)

    def _term_of(self, conn: Connection, epoch: int, now: datetime) -> downtime.Term:
        """The fenced term, read once per epoch: misfires count only the downtime before its
        start (invariant 19)."""
        if self._term is None or self._term[0] != epoch:
            got = store.claims.term_history(conn, self.settings.group, epoch)
            term = downtime.Term(now)  # unknown (never, once fenced): as if it began now
            if got is not None:
                term = downtime.Term.after(
                    got.started,
                    got.previous_expires_at,
                    got.previous_ended_at,
                    self.settings.lease_ttl,
                )
            self._term = (epoch, term)
        return self._term[1]

    def _orphans(
        self, conn: Connection, epoch: int, now: datetime, term: downtime.Term
    ) -> list[Claim]:
        if clock.now() < self._orphan_check_at:
            return []
        group = self.settings.group
        # Ours already (queued, being sent, or done and not yet recorded): look again later.
        in_flight = self.publisher.in_flight()
        rows = [
            r
            for r in store.runs.orphaned_claims(conn, group, epoch, self.settings.batch_size)
            if r["id"] not in in_flight
        ]
        left = store.runs.pending_orphans(conn, group, epoch) - len(rows)
        self._orphan_check_at = clock.now() + ORPHAN_RECHECK if left > 0 or rows else float("inf")
        if not rows:
            return []
        send, statuses = self.planner.orphans(rows, now, term)
        store.runs.set_run_statuses(conn, statuses)
        logger.warning(
            "dispatch: %d tick(s) claimed by an earlier epoch were never marked sent: "
            "re-publishing %d (same task ids), %d skipped or expired by their misfire policy",
            len(rows),
            len(send),
            len(statuses),
            extra={"action": "republish", "epoch": epoch, "count": len(send)},
        )
        return send

    def _load_failing(self) -> None:
        """At the start of a term: which schedules' last tick failed, so a tick of theirs that
        goes out clears the error."""
        with self.keeper.transaction() as conn:
            failing = store.claims.failing_schedules(conn, self.settings.group)
        self.publisher.mark_failing(failing)

    def _housekeeping(self) -> None:
        if clock.now() < self._prune_at:
            return
        self._prune_at = clock.now() + PRUNE_EVERY
        with self.keeper.transaction() as conn:
            store.runs.prune_runs(conn, self.settings.run_retention)

    # --- waiting -------------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` s; a schedule change (NOTIFY) or leadership change wakes us."""
        if timeout <= 0:
            return
        try:
            if self.state.epoch is None or self.db.failing:
                self.state.changed.wait(timeout)
                self.state.changed.clear()
                return
            self.keeper.wait(timeout, self.state.changed)
        except psycopg.Error as exc:
            if not self.db.failing:
                logger.warning(
                    "dispatch: LISTEN connection lost: %s",
                    store.connections.first_line(exc),
                    extra={"action": "listen_lost"},
                )
            time.sleep(min(timeout, 0.5))
        finally:
            self.progress()

    # --- shutdown --------------------------------------------------------------------------

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the publisher to send what it has, then record it (from
        the loop's thread only). True when nothing was left to send."""
        drained = self.publisher.wait_below(1, timeout)
        self.recorder.record()
        return drained

    def flush_marks(self) -> None:
        """At shutdown: record what was sent (see :meth:`Recorder.flush`)."""
        self.recorder.flush(self.connector)

    def close(self) -> None:
        self.publisher.stop(FLUSH_WAIT)
        self.keeper.close()
