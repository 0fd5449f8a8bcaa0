"""The publisher thread: sends claimed ticks, so the dispatch loop can claim the next batch while
this one goes out to the broker; nothing ever stalls behind one tick (invariant 12).

The loop hands over ticks whose claims have committed (invariant 3). This thread:

- sends ticks in the order of :mod:`pg_beat.publish.lanes` (on time before late, never a schedule's
  on-time tick before its own late ones);
- checks the local deadline before every message (invariant 4). Past the deadline it waits
  while the epoch is still ours (a renewal may bring it back) and drops the epoch's ticks once
  it is not (the next leader re-publishes them);
- sends a backlog in batches where the transport can (see :mod:`pg_beat.publish.sending`: one round
  trip for up to BATCH_MAX messages on Redis, the deadline checked again before the flush);
- retries a transient failure in order with capped back-off, and records a permanent one as
  failed and moves on (invariant 16). A tick that fails SUSPECT_AFTER times in a row is held
  aside while the next one is tried; it is poison only when it fails again between two ticks
  the broker took (see :meth:`Publisher._settle`). A broker that fails every tick is an outage:
  the queue waits, in order, and nothing is recorded failed;
- counts every call that returns, with or without an error, as the thread's progress: only a
  call that does not return within the hang timeout is a hang (invariant 15). How long the
  broker has been failing is :attr:`Publisher.failing_since`;
- keeps, under one lock, what is queued, being sent, and done but not yet recorded, so the loop
  records outcomes in its next transaction and never re-publishes one of its own ticks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pg_beat.leadership import clock
from pg_beat.leadership.lease import LeaderState
from pg_beat.publish.lanes import Lanes, Queued
from pg_beat.publish.ledger import Ledger
from pg_beat.publish.sending import OpenBatch, Send, Sender
from pg_beat.publish.sendlog import SendLog
from pg_beat.publish.settling import RETRY_MAX, Settler
from pg_beat.publish.ticks import Claim, Outcomes

logger = logging.getLogger("pg_beat.dispatch")

DEADLINE_POLL = 0.02  # seconds between looks at a passed deadline that a renewal may move
BATCH_MAX = 32  # messages per batch, where the transport batches


class Publisher:
    """One thread per replica, started on first use; ``send`` is only ever called from it."""

    def __init__(
        self,
        state: LeaderState,
        send: Send,
        replica: str,
        open_batch: OpenBatch | None = None,
        batch_max: int = BATCH_MAX,
    ) -> None:
        self.state = state
        self.send = send
        self.replica = replica
        self.sender = Sender(state, open_batch)
        self.batch_max = batch_max
        self.on_sent: Callable[[Claim, float], None] | None = None
        self.log = SendLog(replica)
        self.ledger = Ledger(replica)
        self.thread_id: int | None = None
        self._lock = threading.RLock()  # re-entrant: shutdown may run in a signal handler
        self._work = threading.Condition(self._lock)  # the thread waits for ticks to send
        self._drained = threading.Condition(self._lock)  # wait_below() waits for the backlog
        self._waiting_below: list[int] = []  # thresholds of the current wait_below() calls
        self._queue = Lanes()
        self._sending: list[Queued] = []  # taken from the queue, outcome not yet settled
        self.settler = Settler(self._queue, self.ledger, self._backlog)
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: The last time the thread showed life (a call returned, a wait ended).
        self._progress_at = clock.now()
        self._deadline_logged: int | None = None
        self._crashes = 0  # iterations that raised, in a row

    # --- the loop's side ------------------------------------------------------------------

    def submit(self, claims: list[Claim], epoch: int) -> None:
        """Queue committed claims for sending, after whatever is already queued in their lane."""
        if not claims:
            return
        with self._lock:
            if not self._backlog():
                self._progress_at = clock.now()  # idle until now: not stalled
            for claim in claims:
                self._queue.add(claim, epoch)
            if self._thread is None or not self._thread.is_alive():
                self._start_thread()
            self._work.notify()

    def _start_thread(self) -> None:
        """Start the thread, or start it again if it died (lock held)."""
        if self._thread is not None:
            logger.error(
                "dispatch: the publisher thread had ended; starting it again (replica %s)",
                self.replica,
                extra={"action": "publisher_restart", "replica": self.replica},
            )
            for item in reversed(self._sending):  # what it held goes back, in order
                self._queue.requeue(item)
            self._sending = []
        self._thread = threading.Thread(target=self._run, name="pg_beat-publisher", daemon=True)
        self._thread.start()

    @property
    def sent_total(self) -> int:
        return self.ledger.sent_total

    @property
    def failed_total(self) -> int:
        return self.ledger.failed_total

    @property
    def failing_since(self) -> float | None:
        """The :func:`clock.now` at which publishing began to fail (every try since has
        failed), or None while it works."""
        with self._lock:
            return self.ledger.down_since

    @property
    def failing_error(self) -> str | None:
        """The last error of the current outage, or None while publishing works."""
        with self._lock:
            return self.ledger.down_error

    @property
    def alive(self) -> bool:
        """False when the thread was started and has ended (it is started again on the next
        submit)."""
        thread = self._thread
        return thread is None or thread.is_alive()

    def mark_failing(self, schedule_ids: set[int]) -> None:
        """Schedules the database shows failing (at a takeover): a tick of theirs that goes
        out is reported as recovered, so their ``last_error`` is cleared."""
        with self._lock:
            self.ledger.mark_failing(schedule_ids)

    @property
    def backlog(self) -> int:
        """Ticks handed over and not yet sent or dropped (the one being sent included)."""
        with self._lock:
            return self._backlog()

    def _backlog(self) -> int:
        held = len(self._sending) + (self.settler.suspect is not None)
        return len(self._queue) + held

    def in_flight(self) -> set[int]:
        """Run ids queued, being sent, or done and not yet taken: never orphans of ours."""
        with self._lock:
            ids = {item.claim.run_id for item in self._queue}
            ids.update(self.ledger.run_ids())
            ids.update(item.claim.run_id for item in self._sending)
            if self.settler.suspect is not None:
                ids.add(self.settler.suspect.claim.run_id)
            return ids

    def take_outcomes(self) -> Outcomes:
        """What was sent or failed since the last call, for the loop's next transaction."""
        with self._lock:
            return self.ledger.take()

    def wait_below(self, count: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s until fewer than ``count`` ticks are pending."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiting_below.append(count)
            try:
                while self._backlog() >= count:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._drained.wait(left)
                return True
            finally:
                self._waiting_below.remove(count)

    def _notify_drained(self) -> None:
        """Wake wait_below() callers whose threshold is reached, and only then: waking the
        loop after every message would cost a thread switch per message. Lock held."""
        if self._waiting_below and self._backlog() < max(self._waiting_below):
            self._drained.notify_all()

    def stalled_since(self) -> float | None:
        """While work is pending, the :func:`clock.now` at which the thread last showed life: a
        call that returned (sent or failed) or a wait that ended. A broker that fails every
        call is no stall; a call that never returns is. None when idle."""
        with self._lock:
            if not self._backlog():
                return None
            return self._progress_at

    def stop(self, timeout: float) -> None:
        """Drop what is queued and wait up to ``timeout`` s for a send in progress to end."""
        with self._lock:
            self._stopping = True
            self._queue.clear()
            self.settler.suspect = None
            self._work.notify_all()
            self._drained.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # --- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        self.thread_id = threading.get_ident()
        while True:
            try:
                if not self._iterate():
                    return
            except Exception:
                # Never let the thread die over a bug: what it held goes back to the queue, in
                # order, and the next iteration tries again (one traceback per streak).
                with self._lock:
                    for item in reversed(self._sending):
                        self._queue.requeue(item)
                    self._sending = []
                    self._crashes += 1
                    if self._crashes == 1:
                        logger.exception(
                            "dispatch: unexpected error in the publisher thread (replica %s)",
                            self.replica,
                            extra={"action": "publisher_error", "replica": self.replica},
                        )
                    self._back_off(RETRY_MAX)

    def _iterate(self) -> bool:
        """Send what is next and settle its outcome; False when stopping."""
        with self._lock:
            items = self._take()
            if not items:
                return False
            self._sending = items
        results = self.sender.publish(items, self.send)
        for item, result in zip(items, results, strict=True):
            if result is None:
                self._announce(item)
        with self._lock:
            self._sending = []
            self._crashes = 0
            # Every call that returned is progress, an error too: only a call that never
            # returns is a hang (invariant 15).
            self._progress_at = clock.now()
            wait = self.settler.settle(items, results)
            self._notify_drained()
            if wait:
                self._back_off(wait)
            return True

    def _next(self) -> Queued | None:
        """The next tick to send, waiting for one; None when stopping. Lock held."""
        while True:
            while not self._backlog() and not self._stopping:
                self._work.wait()
            if self._stopping:
                return None
            self.settler.release_suspect()  # when nothing is left to compare it with
            item = self._queue.head()
            assert item is not None  # the backlog is not empty
            if self.state.may_publish(item.epoch):
                return self._queue.pop()
            if self.state.holds(item.epoch):
                # Past the deadline, but the epoch is still ours: a late renewal brings it back,
                # a failed one steps down. Either way these ticks are not lost.
                self._progress_at = clock.now()
                self._work.wait(DEADLINE_POLL)
                continue
            self._drop(item.epoch)

    def _take(self) -> list[Queued]:
        """The next tick, and where the transport batches, the ticks after it of the same epoch
        that have not failed yet, up to ``batch_max``; empty when stopping. A tick being
        retried, or one held as a suspect, goes out alone. Lock held."""
        first = self._next()
        if first is None:
            return []
        items = [first]
        if not self.sender.batches or first.failures or self.settler.suspect is not None:
            return items
        while len(items) < self.batch_max:
            head = self._queue.head()
            if head is None or head.failures or head.epoch != first.epoch:
                break
            items.append(self._queue.pop())
        return items

    def _announce(self, item: Queued) -> None:
        """Log a tick that went out and call the hook. Not under the lock."""
        self.log.sent(item.claim, item.epoch)
        if self.on_sent is not None:
            try:
                self.on_sent(item.claim, time.time())
            except Exception:
                logger.exception("dispatch: on_sent hook failed for %r", item.claim.schedule)

    def _back_off(self, delay: float) -> None:
        """Wait ``delay`` s before the retry. stop() ends the wait early, and so does a tick
        submitted while a suspect waits for one to be tried after it. Lock held."""
        until = time.monotonic() + delay
        while not self._stopping and (left := until - time.monotonic()) > 0:
            if self.settler.suspect is not None and self._queue:
                break
            self._work.wait(left)
        self._progress_at = clock.now()

    def _drop(self, epoch: int) -> None:
        """Deposed: leave this epoch's ticks to the next leader, which re-publishes them (same
        task ids) once the epoch's lease has expired. Lock held."""
        before = self._backlog()
        self.settler.drop(epoch)
        self._queue.drop(epoch)
        if self._deadline_logged != epoch:
            self._deadline_logged = epoch
            logger.warning(
                "dispatch: no longer leading; %d claimed tick(s) left for the next leader "
                "(replica %s, epoch %s)",
                before - self._backlog(),
                self.replica,
                epoch,
                extra={"action": "deadline", "epoch": epoch, "replica": self.replica},
            )
        self._progress_at = clock.now()
        self._notify_drained()
