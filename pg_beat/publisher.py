"""The publisher thread: sends claimed ticks, so the dispatch loop can claim the next batch while
this one goes out to the broker; nothing ever stalls behind one tick (invariant 12).

The loop hands over ticks whose claims have committed (invariant 3). This thread:

- sends ticks that are on time before late ones (a backlog after downtime, orphans of a dead
  epoch), each lane in claim order, and never a schedule's on-time tick before its late ones;
- checks the local deadline before every message (invariant 4). Past the deadline it waits
  while the epoch is still ours (a renewal may bring it back) and drops the epoch's ticks once
  it is not (the next leader re-publishes them);
- sends a backlog in batches where the transport can (one round trip for up to BATCH_MAX
  messages on Redis): the deadline is checked again right before the batch is flushed, and
  a batch that is past it goes out not at all;
- retries a transient failure in order, and records a permanent one as failed and moves on. A
  tick that keeps failing while the next one goes out is permanent too (a poison message);
- keeps, under one lock, what is queued, being sent, and done but not yet recorded, so the loop
  records outcomes in its next transaction and never re-publishes one of its own ticks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from pg_beat import broker, clock
from pg_beat.lease import LeaderState
from pg_beat.sendlog import SendLog
from pg_beat.ticks import Claim, Outcomes

logger = logging.getLogger("pg_beat.dispatch")

RETRY_FIRST = 0.1  # seconds before retrying a publish that failed; doubles up to RETRY_MAX
RETRY_MAX = 1.0
SUSPECT_AFTER = 3  # transient failures in a row of one tick before the next one is tried
DEADLINE_POLL = 0.02  # seconds between looks at a passed deadline that a renewal may move
BATCH_MAX = 32  # messages per batch, where the transport batches

Send = Callable[[Claim, int], None]


class Batch(Protocol):
    """What a batch context yields: sends made inside it go out at ``flush()``, or, if the
    context exits with an error, not at all."""

    def flush(self) -> None: ...


#: Opens a batch on the broker connection; None where the transport sends each message at once.
OpenBatch = Callable[[], "AbstractContextManager[Batch] | None"]


class _Deferred(Exception):
    """A batch reached the local deadline before its flush: none of it went out."""


class _NotTried:
    """The outcome of a tick that was not sent because the deadline came first."""


DEFERRED = _NotTried()
_Result = BaseException | _NotTried | None


def _permanent(result: _Result) -> bool:
    return isinstance(result, BaseException) and broker.is_permanent(result)


@dataclass
class _Item:
    claim: Claim
    epoch: int
    in_late: bool = False  # queued in the late lane (an on-time tick behind its late ones)
    failures: int = 0  # transient failures in a row
    error: str = ""  # the last one


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
        self.open_batch = open_batch
        self.batch_max = batch_max
        self.on_sent: Callable[[Claim, float], None] | None = None
        self.log = SendLog(replica)
        self.sent_total = 0
        self.failed_total = 0
        self.thread_id: int | None = None
        self._lock = threading.RLock()  # re-entrant: shutdown may run in a signal handler
        self._work = threading.Condition(self._lock)  # the thread waits for ticks to send
        self._drained = threading.Condition(self._lock)  # wait_below() waits for the backlog
        self._waiting_below: list[int] = []  # thresholds of the current wait_below() calls
        self._on_time: deque[_Item] = deque()
        self._late: deque[_Item] = deque()
        self._late_of: Counter[int] = Counter()  # schedule id -> its ticks in the late lane
        self._sending: list[_Item] = []  # taken from the lanes, outcome not yet settled
        #: A tick that failed SUSPECT_AFTER times in a row, held aside while the next one is
        #: tried: if that goes out, this one is poison; if not, the broker is down.
        self._suspect: _Item | None = None
        self._outcomes = Outcomes()
        self._failing: set[int] = set()  # schedules whose last tick failed for good
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._progress_at = clock.now()
        self._down = False  # the broker looks down: one line when it starts, one when it ends
        self._deadline_logged: int | None = None

    # --- the loop's side ------------------------------------------------------------------

    def submit(self, claims: list[Claim], epoch: int) -> None:
        """Queue committed claims for sending, after whatever is already queued in their lane."""
        if not claims:
            return
        with self._lock:
            if not self._backlog():
                self._progress_at = clock.now()  # idle until now: not stalled
            for claim in claims:
                item = _Item(claim, epoch)
                if claim.late or self._late_of[claim.schedule_id]:
                    item.in_late = True
                    self._late.append(item)
                    self._late_of[claim.schedule_id] += 1
                else:
                    self._on_time.append(item)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pg_beat-publisher", daemon=True
                )
                self._thread.start()
            self._work.notify()

    def mark_failing(self, schedule_ids: set[int]) -> None:
        """Schedules the database shows failing (at a takeover): a tick of theirs that goes
        out is reported as recovered, so their ``last_error`` is cleared."""
        with self._lock:
            self._failing |= schedule_ids

    @property
    def backlog(self) -> int:
        """Ticks handed over and not yet sent or dropped (the one being sent included)."""
        with self._lock:
            return self._backlog()

    def _backlog(self) -> int:
        held = len(self._sending) + (self._suspect is not None)
        return len(self._on_time) + len(self._late) + held

    def in_flight(self) -> set[int]:
        """Run ids queued, being sent, or done and not yet taken: never orphans of ours."""
        with self._lock:
            ids = {item.claim.run_id for item in (*self._on_time, *self._late)}
            ids.update(self._outcomes.sent)
            ids.update(run_id for run_id, _, _ in self._outcomes.failed)
            ids.update(item.claim.run_id for item in self._sending)
            if self._suspect is not None:
                ids.add(self._suspect.claim.run_id)
            return ids

    def take_outcomes(self) -> Outcomes:
        """What was sent or failed since the last call, for the loop's next transaction."""
        with self._lock:
            outcomes, self._outcomes = self._outcomes, Outcomes()
            return outcomes

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
        """The :func:`clock.now` of the last progress while work is pending; None when idle."""
        with self._lock:
            if not self._backlog():
                return None
            return self._progress_at

    def stop(self, timeout: float) -> None:
        """Drop what is queued and wait up to ``timeout`` s for a send in progress to end."""
        with self._lock:
            self._stopping = True
            self._on_time.clear()
            self._late.clear()
            self._late_of.clear()
            self._suspect = None
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
                items = self._take()
                if not items:
                    return
                self._sending = items
            results = self._publish(items)
            for item, result in zip(items, results, strict=True):
                if result is None:
                    self._announce(item)
            with self._lock:
                self._sending = []
                if any(r is None or _permanent(r) for r in results):
                    # Progress means the queue moves on. Retrying a transient failure is not
                    # progress: a leader that cannot publish for the hang timeout is reported
                    # and lets a replica that can take over.
                    self._progress_at = clock.now()
                first = results[0]
                if len(items) == 1 and not isinstance(first, _NotTried):
                    delay = self._settle(items[0], first, delay)
                else:
                    delay = self._settle_batch(items, results, delay)
                self._notify_drained()

    def _next(self) -> _Item | None:
        """The next tick to send, waiting for one; None when stopping. Lock held."""
        while True:
            while not self._backlog() and not self._stopping:
                self._work.wait()
            if self._stopping:
                return None
            if self._suspect is not None and not (self._on_time or self._late):
                self._requeue(self._suspect)  # nothing left to compare it with
                self._suspect = None
            lane = self._on_time if self._on_time else self._late
            item = lane[0]
            if self.state.may_publish(item.epoch):
                return self._pop(lane)
            if self.state.holds(item.epoch):
                # Past the deadline, but the epoch is still ours: a late renewal brings it back,
                # a failed one steps down. Either way these ticks are not lost.
                self._progress_at = clock.now()
                self._work.wait(DEADLINE_POLL)
                continue
            self._drop(item.epoch)

    def _take(self) -> list[_Item]:
        """The next tick, and where the transport batches, the ticks after it of the same epoch
        that have not failed yet, up to ``batch_max``; empty when stopping. A tick being
        retried, or one held as a suspect, goes out alone. Lock held."""
        first = self._next()
        if first is None:
            return []
        items = [first]
        if self.open_batch is None or first.failures or self._suspect is not None:
            return items
        while len(items) < self.batch_max:
            lane = self._on_time if self._on_time else self._late
            if not lane or lane[0].failures or lane[0].epoch != first.epoch:
                break
            items.append(self._pop(lane))
        return items

    def _pop(self, lane: deque[_Item]) -> _Item:
        item = lane.popleft()
        if lane is self._late:
            self._late_of[item.claim.schedule_id] -= 1
        return item

    def _publish(self, items: list[_Item]) -> list[_Result]:
        """Send ``items``, in order; per item None (sent), its error, or DEFERRED (not tried)."""
        if self.open_batch is None or len(items) == 1:
            return self._publish_each(items)
        try:
            opened = self.open_batch()
        except Exception as exc:  # e.g. no broker connection yet
            return [exc, *[DEFERRED] * (len(items) - 1)]
        if opened is None:
            self.open_batch = None  # the transport sends each message at once: no more batches
            return self._publish_each(items)
        return self._publish_batch(opened, items)

    def _publish_batch(
        self, opened: AbstractContextManager[Batch], items: list[_Item]
    ) -> list[_Result]:
        results: list[_Result] = []
        epoch = items[0].epoch
        try:
            with opened as batch:
                for item in items:
                    if not self.state.may_publish(epoch):
                        raise _Deferred
                    try:
                        self.send(item.claim, item.epoch)
                    except Exception as exc:
                        if not _permanent(exc):
                            raise
                        results.append(exc)  # refused before it was buffered: the rest go on
                    else:
                        results.append(None)
                if not self.state.may_publish(epoch):
                    raise _Deferred  # invariant 4: the flush is the publish
                batch.flush()
        except _Deferred:
            failure: _Result = DEFERRED
        except Exception as exc:
            # Nothing of the batch is known to have gone out: all of it is retried, same task
            # ids, as a single publish whose reply was lost is.
            failure = exc
        else:
            return results
        unsent = len(items) - len(results)
        return [failure if r is None else r for r in results] + [failure] * unsent

    def _publish_each(self, items: list[_Item]) -> list[_Result]:
        results: list[_Result] = []
        for item in items:
            if any(r is not None and not _permanent(r) for r in results) or (
                not self.state.may_publish(item.epoch)
            ):
                results.append(DEFERRED)
                continue
            try:
                self.send(item.claim, item.epoch)
            except Exception as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    def _announce(self, item: _Item) -> None:
        """Log a tick that went out and call the hook. Not under the lock."""
        self.log.sent(item.claim, item.epoch)
        if self.on_sent is not None:
            try:
                self.on_sent(item.claim, time.time())
            except Exception:
                logger.exception("dispatch: on_sent hook failed for %r", item.claim.schedule)

    def _settle_batch(self, items: list[_Item], results: list[_Result], delay: float) -> float:
        """Record a batch's outcomes; return the next retry delay. What did not go out is put
        back in order; a transient failure counts once, against the first tick. Lock held."""
        back = []
        failed: tuple[_Item, BaseException] | None = None
        for item, result in zip(items, results, strict=True):
            if result is None:
                self._sent(item)
            elif isinstance(result, _NotTried):
                back.append(item)
            elif _permanent(result):
                self._fail(item, f"{type(result).__name__}: {result}")
            else:
                if failed is None:
                    failed = item, result
                    item.failures += 1
                    item.error = f"{type(result).__name__}: {result}"
                back.append(item)
        for item in reversed(back):
            self._requeue(item)
        if failed is None:
            return delay if back else RETRY_FIRST
        self._report_down(*failed)
        self._back_off(delay)
        return min(delay * 2, RETRY_MAX)

    def _settle(self, item: _Item, error: BaseException | None, delay: float) -> float:
        """Record a send's outcome; return the next retry delay. Lock held."""
        if error is None:
            self._sent(item)
            if self._suspect is not None:  # the tick after it went out: the suspect is poison
                suspect, self._suspect = self._suspect, None
                self._fail(
                    suspect,
                    f"failed {suspect.failures} times in a row while other ticks were "
                    f"published; last error: {suspect.error}",
                )
            return RETRY_FIRST
        if broker.is_permanent(error):
            self._fail(item, f"{type(error).__name__}: {error}")
            return delay
        item.failures += 1
        item.error = f"{type(error).__name__}: {error}"
        if self._suspect is not None:
            # The next tick failed as well: the broker is down, not the suspect. Both go back,
            # the suspect first, and it gets SUSPECT_AFTER more tries before the next probe.
            suspect, self._suspect = self._suspect, None
            self._requeue(item)
            suspect.failures = 0
            self._requeue(suspect)
        elif item.failures >= SUSPECT_AFTER and (self._on_time or self._late):
            self._suspect = item
            return delay  # no back-off: the next tick tells at once
        else:
            self._requeue(item)
        self._report_down(item, error)
        self._back_off(delay)
        return min(delay * 2, RETRY_MAX)

    def _sent(self, item: _Item) -> None:
        claim = item.claim
        self._outcomes.sent.append(claim.run_id)
        self.sent_total += 1
        if claim.schedule_id in self._failing:
            self._failing.discard(claim.schedule_id)
            self._outcomes.recovered.append(claim.schedule_id)
            logger.info(
                "dispatch: %r publishes again (replica %s)",
                claim.schedule,
                self.replica,
                extra={"action": "publish_recovered", "schedule": claim.schedule},
            )
        if self._down:
            self._down = False
            logger.info(
                "dispatch: publishing works again (replica %s, epoch %s)",
                self.replica,
                item.epoch,
                extra={"action": "publish_recovered", "epoch": item.epoch},
            )

    def _requeue(self, item: _Item) -> None:
        """Put a tick back first in its lane, so ticks still go out oldest first."""
        if item.in_late:
            self._late.appendleft(item)
            self._late_of[item.claim.schedule_id] += 1
        else:
            self._on_time.appendleft(item)

    def _fail(self, item: _Item, error: str) -> None:
        """Park a tick that can never go out: recorded failed, the schedule's last_error set."""
        claim = item.claim
        self.failed_total += 1
        self._outcomes.failed.append((claim.run_id, claim.schedule_id, error[:2000]))
        if claim.schedule_id not in self._failing:
            self._failing.add(claim.schedule_id)
            logger.error(
                "dispatch: the tick of %r due %s cannot be published and is recorded as failed "
                "(replica %s, epoch %s): %s",
                claim.schedule,
                claim.due_at.isoformat(),
                self.replica,
                item.epoch,
                error,
                extra={"action": "publish_failed", "schedule": claim.schedule, "epoch": item.epoch},
            )

    def _report_down(self, item: _Item, error: BaseException) -> None:
        if self._down:
            return
        self._down = True
        logger.error(
            "dispatch: publishing %r due %s failed, will retry (replica %s, epoch %s): %s",
            item.claim.schedule,
            item.claim.due_at.isoformat(),
            self.replica,
            item.epoch,
            error,
            extra={"action": "publish_down", "schedule": item.claim.schedule, "epoch": item.epoch},
        )

    def _back_off(self, delay: float) -> None:
        """Wait ``delay`` s before the retry; only stop() ends the wait early. Lock held."""
        until = time.monotonic() + delay
        while not self._stopping and (left := until - time.monotonic()) > 0:
            self._work.wait(left)

    def _drop(self, epoch: int) -> None:
        """Deposed: leave this epoch's ticks to the next leader, which re-publishes them (same
        task ids) once the epoch's lease has expired. Lock held."""
        before = self._backlog()
        if self._suspect is not None and self._suspect.epoch == epoch:
            self._suspect = None
        self._on_time = deque(i for i in self._on_time if i.epoch != epoch)
        self._late = deque(i for i in self._late if i.epoch != epoch)
        self._late_of = Counter(i.claim.schedule_id for i in self._late)
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
