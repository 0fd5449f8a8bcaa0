"""What the publisher did, kept until the dispatch loop records it in its next transaction,
and the log lines it owes: one per failing streak of a schedule, one when it publishes again,
one when the broker looks down and one when it works again. Not thread-safe: the publisher
holds its lock."""

from __future__ import annotations

import logging

from pg_beat.lanes import Queued
from pg_beat.ticks import Outcomes

logger = logging.getLogger("pg_beat.dispatch")


class Ledger:
    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.sent_total = 0
        self.failed_total = 0
        self._outcomes = Outcomes()
        self._failing: set[int] = set()  # schedules whose last tick failed for good
        self._down = False  # the broker looks down

    def take(self) -> Outcomes:
        """What was sent or failed since the last call."""
        outcomes, self._outcomes = self._outcomes, Outcomes()
        return outcomes

    def run_ids(self) -> set[int]:
        """Run ids done and not yet taken."""
        ids = set(self._outcomes.sent)
        ids.update(run_id for run_id, _, _ in self._outcomes.failed)
        return ids

    def mark_failing(self, schedule_ids: set[int]) -> None:
        """Schedules the database shows failing: a tick of theirs that goes out is reported
        as recovered."""
        self._failing |= schedule_ids

    def sent(self, item: Queued) -> None:
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

    def failed(self, item: Queued, error: str) -> None:
        """A tick that can never go out: recorded failed, the schedule's last_error set."""
        claim = item.claim
        self.failed_total += 1
        self._outcomes.failed.append((claim.run_id, claim.schedule_id, error))
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

    def down(self, item: Queued, error: BaseException) -> None:
        """A transient failure: logged when the first of a streak."""
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
