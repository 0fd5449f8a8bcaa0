"""What the publisher did, kept until the dispatch loop records it in its next transaction,
and the log lines it owes: one per failing streak of a schedule, one when it publishes again,
one when an outage is confirmed (with the error) and one when publishing works again (with
how long it failed and how many ticks waited). Not thread-safe: the publisher holds its lock.

A streak of failures is an outage once two different ticks have failed in a row, or once it
has lasted OUTAGE_AFTER seconds; until then it may be one tick the broker refuses (a poison
message, settled in well under that), which costs no outage lines and no broker-down state."""

from __future__ import annotations

import logging

from pg_beat.leadership import clock
from pg_beat.publish.lanes import Queued
from pg_beat.publish.ticks import Outcomes

logger = logging.getLogger("pg_beat.dispatch")

OUTAGE_AFTER = 1.0  # seconds of failing, one tick alone, after which it is an outage


class Ledger:
    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.sent_total = 0
        self.failed_total = 0
        self._outcomes = Outcomes()
        self._failing: set[int] = set()  # schedules whose last tick failed for good
        #: When publishing began to fail (clock.now), and the last error; None while it works.
        self.down_error: str | None = None
        self._streak_since: float | None = None  # the first failure of the current streak
        self._streak_ticks: set[int] = set()  # the run ids that failed in it
        self._streak_first: Queued | None = None
        self._outage = False  # the streak is confirmed as an outage (and was logged)
        self._waited = 0  # most ticks waiting at once during the current outage

    @property
    def down_since(self) -> float | None:
        """When publishing began to fail, once that is an outage (see the module); else None."""
        return self._streak_since if self._outage else None

    def failing(self, schedule_id: int) -> bool:
        """The schedule's last tick failed for good (until one of its ticks goes out)."""
        return schedule_id in self._failing

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

    def sent(self, item: Queued, waiting: int = 0) -> None:
        """A tick that went out; ``waiting``: the ticks still queued behind it."""
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
        if self._streak_since is None:
            return
        failed_for = clock.now() - self._streak_since
        waited = max(self._waited, waiting + 1)
        outage, self._outage = self._outage, False
        self._streak_since, self._streak_first, self.down_error = None, None, None
        self._waited = 0
        self._streak_ticks.clear()
        if outage:
            logger.warning(
                "dispatch: publishing works again after failing for %.1fs; %d tick(s) were "
                "waiting and go out now, in order (replica %s, epoch %s)",
                failed_for,
                waited,
                self.replica,
                item.epoch,
                extra={
                    "action": "publish_recovered",
                    "epoch": item.epoch,
                    "failed_for": round(failed_for, 3),
                    "waited": waited,
                },
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

    def down(self, item: Queued, error: BaseException, waiting: int = 0) -> None:
        """A transient failure (``waiting``: the ticks queued now): logged once the streak is
        an outage. The lease is kept; every tick waits, in order, and is retried."""
        now = clock.now()
        self.down_error = f"{type(error).__name__}: {error}"
        self._waited = max(self._waited, waiting)
        if self._streak_since is None:
            self._streak_since, self._streak_first = now, item
        self._streak_ticks.add(item.claim.run_id)
        if self._outage:
            return
        if len(self._streak_ticks) < 2 and now - self._streak_since < OUTAGE_AFTER:
            return  # maybe one tick the broker refuses: the poison rule tells soon
        self._outage = True
        first = self._streak_first or item
        logger.error(
            "dispatch: publishing failed; keeping the lease and retrying in order while ticks "
            "wait (replica %s, epoch %s, first failed: %r due %s): %s",
            self.replica,
            item.epoch,
            first.claim.schedule,
            first.claim.due_at.isoformat(),
            self.down_error,
            extra={"action": "publish_down", "schedule": first.claim.schedule, "epoch": item.epoch},
        )
