"""Which lateness is a misfire: only downtime counts (invariant 19). Pure: times are arguments.

A tick's lateness is the part of its wait during which no leader was alive, not the time it
spent in a live leader's queue (a burst claimed over seconds, a backlog, a broker outage the
leader sat out while keeping its lease). Within the current term a leader has been alive
throughout, so a tick due at or after the term began is never late, however long it waited.
Before the term began, the gap from the predecessor's last proof of life to the term's start
was downtime, and a tick due at ``d`` waited ``max(0, started - max(d, predecessor_alive))``
of it. It is late, and goes through its schedule's misfire policy, when that exceeds the grace.

Only the last gap is counted. A tick that waited through an earlier gap too (due before the
previous term began, and that term died before it got to the tick) is judged by the last gap
alone: it may go out where a tick as late under a live successor would have been skipped.
A backlog is drained oldest first, so this needs a leader that died during its first drain.

All datetimes are timezone-aware and from the database clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Term:
    """The current leader's term, as misfires need it.

    ``started``: when the term began. ``predecessor_alive``: the last moment the previous
    leader is known to have been alive; None when there was none (or nothing is known of
    it), so that all time before ``started`` counts as downtime.
    """

    started: datetime
    predecessor_alive: datetime | None = None

    @classmethod
    def after(
        cls,
        started: datetime,
        previous_expires_at: datetime | None,
        previous_ended_at: datetime | None,
        lease_ttl: float,
    ) -> Term:
        """The term that began at ``started`` (the takeover transaction's start), having taken
        over a lease due to expire at ``previous_expires_at`` from a term recorded as ended at
        ``previous_ended_at``; ``lease_ttl`` in seconds.

        - No previous lease: nothing was watched before this term.
        - The previous term ended before this one began: its holder released the lease (a
          graceful stop), alive until then.
        - Otherwise it was taken over (a crash, a hang, a partition, a pause past the lease):
          the last proof of life is its last renewal, the lease's expiry less the TTL. This
          counts a hung leader's last seconds, which still renewed, as time it was alive.
        """
        if previous_expires_at is None:
            return cls(started)
        if previous_ended_at is not None and previous_ended_at < started:
            alive = previous_ended_at
        else:
            alive = previous_expires_at - timedelta(seconds=lease_ttl)
        return cls(started, min(alive, started))


def late_before(term: Term, grace: float) -> datetime | None:
    """The instant before which a due time is late (a misfire); None when none is.

    ``grace`` is in seconds (>= 0). Late means more than ``grace`` seconds of downtime in the
    tick's wait: due before ``started - grace``, and only when the gap before the term is
    itself longer than ``grace`` (a tick due before the gap waited through all of it).
    Exactly ``grace`` is not late.
    """
    if not (math.isfinite(grace) and grace >= 0):
        raise ValueError(f"grace={grace!r} must be a number of seconds >= 0")
    cut = term.started - timedelta(seconds=grace)
    if term.predecessor_alive is not None and term.predecessor_alive >= cut:
        return None  # the gap was within grace: no tick waited longer than that through it
    return cut
