"""What becomes of a tick after a try: sent, failed for good, or back in the queue to wait, and
how long the publisher waits before the next try. No threads here: the publisher holds its
lock while it asks, and does the waiting.

Who an error belongs to is :mod:`pg_beat.publish.sending`'s answer (invariant 16): an error of the
message itself fails that tick for good; anything else is transient, retried in order with
back-off from RETRY_FIRST doubling up to RETRY_MAX. The poison rule finds the one tick a
working broker keeps refusing (see :meth:`Settler._one`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pg_beat.publish.lanes import Lanes, Queued
from pg_beat.publish.ledger import Ledger
from pg_beat.publish.sending import NotTried, Result, is_permanent

RETRY_FIRST = 0.1  # seconds before retrying a publish that failed; doubles up to RETRY_MAX
RETRY_MAX = 1.0
SUSPECT_AFTER = 3  # transient failures in a row of one tick before the next one is tried


class Settler:
    """Settles the outcomes of the publisher's tries against its queue and ledger."""

    def __init__(self, queue: Lanes, ledger: Ledger, backlog: Callable[[], int]) -> None:
        self.queue = queue
        self.ledger = ledger
        self.backlog = backlog  # ticks waiting, for the ledger's log lines
        #: A tick that failed SUSPECT_AFTER times in a row, held aside while the next one is
        #: tried (see :meth:`_one`).
        self.suspect: Queued | None = None
        self.delay = RETRY_FIRST  # the next back-off

    def settle(self, items: Sequence[Queued], results: Sequence[Result]) -> float:
        """Record what became of ``items``; return how long to wait before the next try (0:
        at once)."""
        first = results[0]
        if len(items) == 1 and not isinstance(first, NotTried):
            return self._one(items[0], first)
        return self._batch(items, results)

    def _back_off(self) -> float:
        wait, self.delay = self.delay, min(self.delay * 2, RETRY_MAX)
        return wait

    def _batch(self, items: Sequence[Queued], results: Sequence[Result]) -> float:
        """What did not go out is put back in order; a transient failure counts once, against
        the first tick."""
        back = []
        failed: tuple[Queued, BaseException] | None = None
        for item, result in zip(items, results, strict=True):
            if result is None:
                self.ledger.sent(item, waiting=self.backlog() + len(items))
            elif isinstance(result, NotTried):
                back.append(item)
            elif is_permanent(result):  # refused before it was handed over: its own
                self.ledger.failed(item, f"{type(result).__name__}: {result}")
            else:
                if failed is None:
                    failed = item, result
                    item.failures += 1
                    item.error = f"{type(result).__name__}: {result}"
                back.append(item)
        for item in reversed(back):
            self.queue.requeue(item)
        if failed is None:
            if not back:
                self.delay = RETRY_FIRST
            return 0.0
        self.ledger.down(*failed, waiting=self.backlog())
        return self._back_off()

    def _one(self, item: Queued, error: BaseException | None) -> float:
        """One tick's outcome.

        The poison rule (invariant 16), with its counter-cases: a tick that failed
        SUSPECT_AFTER times in a row is held aside as a suspect and the next tick is tried.
        - The next one fails too: the broker is down, not the suspect; both go back, in order.
        - The next one goes out: the broker works. The suspect is tried again at once; if it
          goes out, it was the broker that had been down (an outage that ended between the
          tries), and nothing failed.
        - The suspect fails again right after that success: held aside once more, and the next
          tick tried. Only if that one goes out too (the broker took the ticks right before and
          right after it) is the suspect poison, recorded failed. A broker that flaps between
          the tries makes it a suspect again, never poison.
        """
        if error is None:
            self.ledger.sent(item, waiting=self.backlog())
            if self.suspect is not None:
                suspect, self.suspect = self.suspect, None
                if suspect.after_success:
                    self.ledger.failed(
                        suspect,
                        f"failed {suspect.failures} times in a row while the broker took the "
                        f"ticks tried right before and after it; last error: {suspect.error}",
                    )
                else:
                    suspect.after_success = True
                    self.queue.requeue(suspect)  # tried next: now the broker works
            self.delay = RETRY_FIRST
            return 0.0
        if is_permanent(error):
            self.ledger.failed(item, f"{type(error).__name__}: {error}")
            return 0.0
        item.failures += 1
        item.error = f"{type(error).__name__}: {error}"
        if self.suspect is not None:
            # The next tick failed as well: the broker is down, not the suspect. Both go back,
            # the suspect first, and it gets SUSPECT_AFTER more tries before the next probe.
            suspect, self.suspect = self.suspect, None
            self.queue.requeue(item)
            suspect.failures = 0
            suspect.after_success = False
            self.queue.requeue(suspect)
        elif self._suspicious(item):
            self.suspect = item
            if self.queue:
                return 0.0  # no back-off: the next tick tells at once
            # Nothing to try after it yet: wait, until the back-off ends or a tick comes.
        else:
            self.queue.requeue(item)
        self.ledger.down(item, error, waiting=self.backlog())
        return self._back_off()

    def _suspicious(self, item: Queued) -> bool:
        """Set aside to try the next tick: after SUSPECT_AFTER failures in a row, at once when
        the broker has just taken the tick before it, or when its schedule's last tick was
        poison (the same refusal, most likely: an exchange that does not exist). It is poison
        only by the rule of :meth:`_one`, whatever made it a suspect."""
        return (
            item.after_success
            or item.failures >= SUSPECT_AFTER
            or self.ledger.failing(item.claim.schedule_id)
        )

    def drop(self, epoch: int) -> None:
        """Forget a suspect of ``epoch`` (deposed: the next leader re-publishes it)."""
        if self.suspect is not None and self.suspect.epoch == epoch:
            self.suspect = None

    def release_suspect(self) -> None:
        """Nothing is left to compare the suspect with: it goes back to be retried."""
        if self.suspect is not None and not self.queue:
            self.queue.requeue(self.suspect)
            self.suspect = None
