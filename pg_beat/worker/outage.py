"""One database outage, as the worker process's writer and run-once claimer see it together:
one warning line when the first of them cannot reach the database, one line when either
reaches it again, whatever the number of tasks in between."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

logger = logging.getLogger("pg_beat.worker")


@dataclass
class Stats:
    """Counters of one worker process (see :func:`pg_beat.worker.stats`)."""

    recorded: int = 0  # events written
    dropped: int = 0  # events lost: queue full or database away
    outages: int = 0  # times the database became unreachable
    claims: int = 0  # run-once claims made
    duplicates: int = 0  # deliveries acknowledged without running
    claim_failures: int = 0  # claims that could not reach the database (the task ran)


class Outage:
    """Whether the database is away for this process, with the transitions logged once."""

    def __init__(self, worker: str, stats: Stats) -> None:
        self.worker = worker
        self.stats = stats
        self.down = False
        self._lock = threading.Lock()

    def failed(self, what: str, error: str) -> None:
        """``what`` (``record outcomes``, ``claim``) could not reach the database."""
        with self._lock:
            if self.down:
                return
            self.down = True
            self.stats.outages += 1
        logger.warning(
            "pg_beat: worker %s cannot reach the database to %s (%s): task outcomes are "
            "dropped and tasks run without run-once claims until it is back; tasks are not "
            "slowed",
            self.worker,
            what,
            error,
            extra={"action": "track_outage", "worker": self.worker},
        )

    def recovered(self) -> None:
        with self._lock:
            if not self.down:
                return
            self.down = False
        logger.warning(
            "pg_beat: worker %s reaches the database again (%d outcomes dropped, %d tasks run "
            "without a run-once claim so far)",
            self.worker,
            self.stats.dropped,
            self.stats.claim_failures,
            extra={"action": "track_recovered", "worker": self.worker},
        )
