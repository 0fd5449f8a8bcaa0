"""One INFO line per tick sent, as stock beat logs ``Scheduler: Sending due task``, folded into
one summary line per second when more than a few go out in a second.

A newcomer sees beat working at ``-l info``; an operator with 10,000 schedules due at the same
minute gets a few dozen lines, not 10,000.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from pg_beat.publish.ticks import Claim

logger = logging.getLogger("pg_beat.dispatch")

PER_SECOND = 5  # ticks logged one by one in a second; the rest are counted


def format_due(due: datetime) -> str:
    """``12:00:00Z``, with milliseconds when there are any (``12:00:00.500Z``)."""
    due = due.astimezone(timezone.utc)
    text = due.strftime("%H:%M:%S")
    if due.microsecond:
        text += f".{due.microsecond // 1000:03d}"
    return text + "Z"


class SendLog:
    """Logs sent ticks; :meth:`sent` from the publisher thread, :meth:`flush` from the loop."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self._lock = threading.Lock()
        self._second = 0
        self._logged = 0
        self._folded = 0
        self._schedules: set[str] = set()

    def sent(self, claim: Claim, epoch: int) -> None:
        now = int(time.monotonic())
        with self._lock:
            if now != self._second:
                self._summarise()
                self._second, self._logged = now, 0
            if self._logged >= PER_SECOND:
                self._folded += 1
                self._schedules.add(claim.schedule)
                return
            self._logged += 1
        logger.info(
            "sent %r (%s) due %s, task id %s",
            claim.schedule,
            claim.task,
            format_due(claim.due_at),
            claim.task_id,
            extra={"action": "sent", "schedule": claim.schedule, "epoch": epoch},
        )

    def flush(self) -> None:
        """Log the summary of a second that has ended, if any ticks were folded in it."""
        with self._lock:
            if self._folded and int(time.monotonic()) != self._second:
                self._summarise()

    def _summarise(self) -> None:
        """One line for the ticks folded in the last second. Lock held."""
        if not self._folded:
            return
        logger.info(
            "sent %d more tick(s) of %d schedule(s) in that second (replica %s)",
            self._folded,
            len(self._schedules),
            self.replica,
            extra={"action": "sent_summary", "count": self._folded},
        )
        self._folded = 0
        self._schedules.clear()
