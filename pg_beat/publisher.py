"""The publisher thread: sends claimed ticks in claim order, so the dispatch loop can claim the
next batch while this one goes out to the broker.

The loop hands over ticks whose claims have committed (invariant 3); this thread checks the local
deadline before every message (invariant 4) and keeps, under one lock, what is queued, what is
being sent and what was sent but is not yet recorded, so the loop can mark the sent ones in its
next transaction and never re-publish one of its own ticks as an orphan.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from pg_beat.lease import LeaderState

if TYPE_CHECKING:
    from pg_beat.dispatch import Claim

logger = logging.getLogger("pg_beat.dispatch")

RETRY_FIRST = 0.1  # seconds before retrying a publish that failed; doubles up to RETRY_MAX
RETRY_MAX = 1.0

Send = Callable[["Claim", int], None]


class Publisher:
    """One thread per replica, started on first use; ``send`` is only ever called from it."""

    def __init__(self, state: LeaderState, send: Send, replica: str) -> None:
        self.state = state
        self.send = send
        self.replica = replica
        self.on_sent: Callable[[Claim, float], None] | None = None
        self.sent_total = 0
        self.thread_id: int | None = None
        self._lock = threading.RLock()  # re-entrant: shutdown may run in a signal handler
        self._work = threading.Condition(self._lock)  # the thread waits for ticks to send
        self._drained = threading.Condition(self._lock)  # wait_below() waits for the backlog
        self._waiting_below: list[int] = []  # thresholds of the current wait_below() calls
        self._queue: deque[tuple[Claim, int]] = deque()
        self._current: Claim | None = None
        self._sent: list[int] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._progress_at = time.monotonic()
        self._failing = False
        self._deadline_logged: int | None = None

    # --- the loop's side ------------------------------------------------------------------

    def submit(self, claims: list[Claim], epoch: int) -> None:
        """Queue committed claims for sending, after whatever is already queued."""
        if not claims:
            return
        with self._lock:
            if not self._queue and self._current is None:
                self._progress_at = time.monotonic()  # idle until now: not stalled
            self._queue.extend((claim, epoch) for claim in claims)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pg_beat-publisher", daemon=True
                )
                self._thread.start()
            self._work.notify()

    @property
    def backlog(self) -> int:
        """Ticks handed over and not yet sent or dropped (the one being sent included)."""
        with self._lock:
            return self._backlog()

    def _backlog(self) -> int:
        return len(self._queue) + (self._current is not None)

    def in_flight(self) -> set[int]:
        """Run ids queued, being sent, or sent and not yet taken: never orphans of ours."""
        with self._lock:
            ids = {claim.run_id for claim, _ in self._queue}
            ids.update(self._sent)
            if self._current is not None:
                ids.add(self._current.run_id)
            return ids

    def take_sent(self) -> list[int]:
        """Run ids sent since the last call, for the loop to mark in its next transaction."""
        with self._lock:
            sent, self._sent = self._sent, []
            return sent

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
        """The monotonic time of the last progress while work is pending; None when idle."""
        with self._lock:
            if not self._queue and self._current is None:
                return None
            return self._progress_at

    def stop(self, timeout: float) -> None:
        """Drop what is queued and wait up to ``timeout`` s for a send in progress to end."""
        with self._lock:
            self._stopping = True
            self._queue.clear()
            self._work.notify_all()
            self._drained.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # --- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        self.thread_id = threading.get_ident()
        delay = RETRY_FIRST
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._work.wait()
                if self._stopping:
                    return
                claim, epoch = self._queue[0]
                if not self.state.may_publish(epoch):
                    self._drop(epoch)
                    continue
                self._queue.popleft()
                self._current = claim
            try:
                ok = self._send_one(claim, epoch)
            except Exception:  # the thread must never die; record and go on
                logger.exception("dispatch: publisher error on %r", claim.schedule)
                ok = False
            with self._lock:
                self._current = None
                self._progress_at = time.monotonic()
                if ok:
                    delay = RETRY_FIRST
                    self._sent.append(claim.run_id)
                    self.sent_total += 1
                else:  # keep it first in line, so ticks still go out oldest first
                    self._queue.appendleft((claim, epoch))
                self._notify_drained()
                if not ok:  # back off; only stop() ends the wait early
                    until = time.monotonic() + delay
                    while not self._stopping and (left := until - time.monotonic()) > 0:
                        self._work.wait(left)
                    self._progress_at = time.monotonic()
                    delay = min(delay * 2, RETRY_MAX)

    def _send_one(self, claim: Claim, epoch: int) -> bool:
        try:
            self.send(claim, epoch)
        except Exception as exc:
            if not self._failing:
                logger.error(
                    "dispatch: publishing %r due %s failed, will retry (replica %s, epoch %s): %s",
                    claim.schedule,
                    claim.due_at.isoformat(),
                    self.replica,
                    epoch,
                    exc,
                    extra={"action": "publish_failed", "schedule": claim.schedule, "epoch": epoch},
                )
            self._failing = True
            return False
        if self._failing:
            logger.info(
                "dispatch: publishing works again (replica %s, epoch %s)",
                self.replica,
                epoch,
                extra={"action": "publish_recovered", "epoch": epoch},
            )
            self._failing = False
        if self.on_sent is not None:
            try:
                self.on_sent(claim, time.time())
            except Exception:
                logger.exception("dispatch: on_sent hook failed for %r", claim.schedule)
        return True

    def _drop(self, epoch: int) -> None:
        """Past the deadline or deposed: leave this epoch's ticks to the next leader, which
        re-publishes them (same task ids) once the epoch's lease has expired. Lock held."""
        before = len(self._queue)
        self._queue = deque(item for item in self._queue if item[1] != epoch)
        if self._deadline_logged != epoch:
            self._deadline_logged = epoch
            logger.warning(
                "dispatch: no longer leading (lease deadline passed or stepped down); %d "
                "claimed tick(s) left for the next leader (replica %s, epoch %s)",
                before - len(self._queue),
                self.replica,
                epoch,
                extra={"action": "deadline", "epoch": epoch, "replica": self.replica},
            )
        self._progress_at = time.monotonic()
        self._notify_drained()
