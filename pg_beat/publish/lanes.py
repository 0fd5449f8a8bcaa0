"""The publisher's queue of claimed ticks: two lanes, on time and late.

Ticks on time go before late ones (a backlog after downtime, orphans of a dead epoch), each lane
in claim order, and a schedule's on-time tick never before its own late ones: while a schedule
has ticks in the late lane, its on-time ticks queue behind them there. A tick put back returns
to the front of the lane it came from. Not thread-safe: the publisher holds its lock.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass

from pg_beat.publish.ticks import Claim


@dataclass
class Queued:
    """A claimed tick waiting to go out, and how its tries went."""

    claim: Claim
    epoch: int
    in_late: bool = False  # queued in the late lane (an on-time tick behind its late ones)
    failures: int = 0  # transient failures in a row
    error: str = ""  # the last one
    #: Its last try came right after the broker published another tick (a probe, while it was
    #: held aside as a suspect): failing again then points at the tick, not at the broker.
    after_success: bool = False


class Lanes:
    def __init__(self) -> None:
        self._on_time: deque[Queued] = deque()
        self._late: deque[Queued] = deque()
        self._late_of: Counter[int] = Counter()  # schedule id -> its ticks in the late lane

    def __len__(self) -> int:
        return len(self._on_time) + len(self._late)

    def __iter__(self) -> Iterator[Queued]:
        yield from self._on_time
        yield from self._late

    def add(self, claim: Claim, epoch: int) -> None:
        """Queue a tick after whatever is already queued in its lane."""
        item = Queued(claim, epoch)
        if claim.late or self._late_of[claim.schedule_id]:
            item.in_late = True
            self._late.append(item)
            self._late_of[claim.schedule_id] += 1
        else:
            self._on_time.append(item)

    def head(self) -> Queued | None:
        """The tick that goes next, left in the queue; None when empty."""
        lane = self._on_time or self._late
        return lane[0] if lane else None

    def pop(self) -> Queued:
        """Take the tick :meth:`head` shows."""
        if self._on_time:
            return self._on_time.popleft()
        item = self._late.popleft()
        self._late_of[item.claim.schedule_id] -= 1
        return item

    def requeue(self, item: Queued) -> None:
        """Put a tick back first in the lane it came from, so ticks still go out oldest first."""
        if item.in_late:
            self._late.appendleft(item)
            self._late_of[item.claim.schedule_id] += 1
        else:
            self._on_time.appendleft(item)

    def drop(self, epoch: int) -> None:
        """Forget the ticks of ``epoch``."""
        self._on_time = deque(i for i in self._on_time if i.epoch != epoch)
        self._late = deque(i for i in self._late if i.epoch != epoch)
        self._late_of = Counter(i.claim.schedule_id for i in self._late)

    def clear(self) -> None:
        self._on_time.clear()
        self._late.clear()
        self._late_of.clear()
