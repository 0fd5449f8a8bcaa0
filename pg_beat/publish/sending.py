"""One go of the publisher: a tick alone, or where the transport batches, several at once.

A batch (kombu 5.7's ``Producer.batch()``; on Redis, one pipeline) defers what is sent inside it
to one flush, and discards it if the batch ends in an error. The flush is the publish, so the
local deadline (invariant 4) is checked before each message is buffered and again right before
the flush: a batch past it goes out not at all.

Who an error belongs to (invariant 16): a message refused before it is handed to the broker
(bad options, arguments that do not serialise, too big) fails alone, and the rest of its batch
goes on. Any other error of a batch (opening it, buffering into it, the flush) belongs to the
batch, whatever its type: it is a :class:`BatchFailed`, transient for every tick in it, and
nothing of it is known to have gone out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from pg_beat.leadership.lease import LeaderState
from pg_beat.publish import broker
from pg_beat.publish.lanes import Queued
from pg_beat.publish.ticks import Claim

Send = Callable[[Claim, int], None]


class Batch(Protocol):
    """What a batch context yields: sends made inside it go out at ``flush()``, or, if the
    context exits with an error, not at all."""

    def flush(self) -> None: ...


#: Opens a batch on the broker connection; None where the transport sends each message at once.
OpenBatch = Callable[[], "AbstractContextManager[Batch] | None"]


class NotTried:
    """The outcome of a tick that was not sent: the deadline, or a failure before it, came
    first. It goes back to the queue and counts as no failure of its own."""


NOT_TRIED = NotTried()
#: Per tick: None (sent), the error it failed with, or NOT_TRIED.
Result = BaseException | NotTried | None


class BatchFailed(Exception):
    """An error of a whole batch (opening it, buffering into it, its flush): transient for
    every tick in it, whatever the error's own type (:func:`is_permanent` is False)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


class _PastDeadline(Exception):
    """A batch reached the local deadline before its flush."""


def is_permanent(result: Result) -> bool:
    """True for an error that is this one message's (see
    :func:`pg_beat.publish.broker.is_permanent`); never for a :class:`BatchFailed`."""
    if isinstance(result, BatchFailed):
        return False
    return isinstance(result, BaseException) and broker.is_permanent(result)


class Sender:
    """Sends what the publisher thread took from its queue, and says what became of each."""

    def __init__(self, state: LeaderState, open_batch: OpenBatch | None) -> None:
        self.state = state
        #: None once the transport turned out to send each message at once.
        self.open_batch = open_batch

    @property
    def batches(self) -> bool:
        return self.open_batch is not None

    def publish(self, items: Sequence[Queued], send: Send) -> list[Result]:
        """Send ``items`` in order; the result of each. Where the transport batches, a single
        tick goes in a batch of one too: on Redis that is what pushes it once per task id."""
        if self.open_batch is None:
            return self._each(items, send)
        try:
            opened = self.open_batch()
        except Exception as exc:  # e.g. no broker connection yet: every tick waits
            return [BatchFailed(exc)] * len(items)
        if opened is None:
            self.open_batch = None  # the transport sends each message at once: no more batches
            return self._each(items, send)
        return self._batch(opened, items, send)

    def _each(self, items: Sequence[Queued], send: Send) -> list[Result]:
        """One message at a time; after a transient failure or at the deadline, the rest wait."""
        results: list[Result] = []
        halted = False
        for item in items:
            halted = halted or not self.state.may_publish(item.epoch)
            if halted:
                results.append(NOT_TRIED)
                continue
            try:
                send(item.claim, item.epoch)
            except Exception as exc:
                results.append(exc)
                halted = not is_permanent(exc)
            else:
                results.append(None)
        return results

    def _batch(
        self, opened: AbstractContextManager[Batch], items: Sequence[Queued], send: Send
    ) -> list[Result]:
        results: list[Result] = []
        epoch = items[0].epoch
        try:
            with opened as batch:
                for item in items:
                    if not self.state.may_publish(epoch):
                        raise _PastDeadline
                    try:
                        send(item.claim, item.epoch)
                    except Exception as exc:
                        if not is_permanent(exc):
                            raise
                        results.append(exc)  # refused before it was buffered: the rest go on
                    else:
                        results.append(None)
                if not self.state.may_publish(epoch):
                    raise _PastDeadline  # invariant 4: the flush is the publish
                batch.flush()
        except _PastDeadline:
            failure: Result = NOT_TRIED
        except Exception as exc:
            # Nothing of the batch is known to have gone out: all of it is retried, same task
            # ids, as a single publish whose reply was lost is. The error is the batch's, not
            # any one message's, whatever its type.
            failure = BatchFailed(exc)
        else:
            return results
        unsent = len(items) - len(results)
        return [failure if r is None else r for r in results] + [failure] * unsent
