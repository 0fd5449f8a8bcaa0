"""A claimed tick and what became of its publish: the types the dispatch loop, the publisher
thread and the Celery scheduler share (so none of them imports another for them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

TASK_ID_NAMESPACE = uuid.UUID("6f1c7a52-4b8e-4c53-9a57-2d0b5f3e8a11")


def task_id_for(group: str, schedule: str, due_at: datetime) -> str:
    """The deterministic task id of one tick: the same (schedule, due time) gives the same id."""
    due = due_at.astimezone(timezone.utc).isoformat()
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{group}\x1f{schedule}\x1f{due}"))


@dataclass(frozen=True)
class Claim:
    """A claimed tick, ready to publish.

    ``epoch`` is the epoch that claimed it (an orphan keeps its own); ``late`` ticks (a backlog
    after downtime, orphans of a dead epoch) go out after the ticks that are on time;
    ``expires_at`` is the absolute expiry the message carries (its due time plus the schedule's
    ``expires``), or None. ``run_once``: the schedule's ``run_once``, or the beat's
    ``pg_beat_run_once`` where the row has none (the message's ``pg_beat_run_once`` header).
    ``overlap``: the schedule's effective overlap policy (the ``pg_beat_overlap`` header: a
    worker writes the outcome of a run whose leader may be waiting for it at once).
    """

    run_id: int
    schedule_id: int
    schedule: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    due_at: datetime
    task_id: str
    epoch: int
    late: bool = False
    expires_at: datetime | None = None
    run_once: bool = False
    overlap: str = "allow"


@dataclass
class Outcomes:
    """What the publisher did since the loop last asked, for the loop's next transaction."""

    sent: list[int] = field(default_factory=list)  # run ids
    #: (run id, schedule id, error) of ticks that can never be published (parked as failed)
    failed: list[tuple[int, int, str]] = field(default_factory=list)
    #: schedules whose tick went out after an earlier one of theirs had failed
    recovered: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sent or self.failed or self.recovered)

    def extend(self, other: Outcomes) -> None:
        self.sent.extend(other.sent)
        self.failed.extend(other.failed)
        self.recovered.extend(other.recovered)
