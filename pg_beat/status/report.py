"""What status and check found: :class:`ClusterStatus` (``pg-beat status``) and
:class:`Health` (``pg-beat check``), read by the gathering, shown by the text and JSON
renderings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pg_beat.leadership.lease import LeaseView, lease_state
from pg_beat.status.judge import DEFAULT_MAX_STALL, Verdict, replica_gone_after
from pg_beat.status.locks import Blocker
from pg_beat.status.rows import Row

__all__ = ["ClusterStatus", "Health", "TaskHealth"]


@dataclass(frozen=True)
class TaskHealth:
    """What the tracking workers' outcomes say of the group's schedules: how many are failing
    (enabled, their last run failed) and overdue (:mod:`pg_beat.health`), and the worst of
    them (each a :data:`pg_beat.store.health.HEALTH_OF` row). Not part of the verdict: a
    failing task is the task's problem, not the scheduler's."""

    failing_count: int
    overdue_count: int
    #: Failing, overdue or both.
    unhealthy_count: int
    worst: Sequence[Row]
    overdue_factor: float

    @property
    def clean(self) -> bool:
        return self.failing_count == 0 and self.overdue_count == 0


@dataclass(frozen=True)
class ClusterStatus:
    """Everything ``pg-beat status`` shows, as read at database time ``now``; a section that
    could not be read is None, and named with the reason in ``unreadable``."""

    group: str
    now: datetime
    verdict: Verdict
    lease: Row | None
    locks: Sequence[Row] | None
    blockers: Sequence[Blocker]
    replicas: Sequence[Row] | None
    blocked: Sequence[Row] | None
    leader_backends: Sequence[Row] | None
    failovers: Sequence[Row] | None
    next_due: Sequence[Row] | None
    failing: Sequence[Row] | None
    failing_count: int | None
    long_transactions: Sequence[Row] | None
    #: None when it could not be read (named in ``unreadable``) or was not asked for.
    task_health: TaskHealth | None = None
    max_stall: float = DEFAULT_MAX_STALL
    unreadable: Mapping[str, str] = field(default_factory=dict)
    show_queries: bool = False

    @property
    def lease_view(self) -> LeaseView | None:
        return None if "lease" in self.unreadable else lease_state(self.lease, self.now)

    @property
    def replica_gone_after(self) -> float:
        """Seconds of silence after which a replica without a session of its own is gone."""
        return replica_gone_after(None if "lease" in self.unreadable else self.lease)


@dataclass(frozen=True)
class Health:
    """What ``pg-beat check`` says: the leader's verdict, and the line to print."""

    verdict: Verdict
    message: str
    lease: Row | None
    now: datetime
    unreadable: Mapping[str, str]

    @property
    def healthy(self) -> bool:
        return self.verdict.healthy
