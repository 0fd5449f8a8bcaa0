"""Per-schedule health, judged from what the workers recorded (pure: rows and ``now`` in).

A schedule is OVERDUE when its reference time is older than ``pg_beat_overdue_factor`` times
its period:

- the reference time is its last success when its outcomes are tracked (it has a row in
  ``pg_beat_schedule_health``; one that never succeeded counts from its creation), else its
  last run (``last_run_at``, the claim of its last tick), else its creation;
- the period is the interval of an interval schedule; for the others the gap between its last
  due time and its next one (``next_run_at - last_due_at``), and before its first tick the wait
  for that tick (``next_run_at - created_at``), the only period known without walking the
  schedule math per row;
- only enabled schedules with a next due time can be overdue: a disabled one is not expected to
  run, and one without a next due time (parked with an error, a clocked one that fired, past its
  end) is not planned.

So a new schedule with a long period is not overdue before ``factor`` periods have passed; a
schedule that runs but keeps failing is overdue once its last success is old, and so is one
whose ticks are all skipped by its overlap policy (a run that never ends): that is the point.
Both the reference and the period are computed by the database (``pg_beat.store.health``),
which applies the same rule to count overdue schedules at scale; this module judges one row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

#: Finished runs of a schedule whose runtimes give its p50 and p95 (the most recent ones).
RUNTIME_WINDOW = 100

State = Literal["ok", "failing", "overdue", "untracked", "disabled", "parked"]


@dataclass(frozen=True)
class ScheduleHealth:
    """What the workers' outcomes say of one schedule, judged at ``now``."""

    #: Whether a worker recorded a final outcome of it (a ``pg_beat_schedule_health`` row).
    tracked: bool
    last_outcome: str | None
    last_finished_at: datetime | None
    last_success_at: datetime | None
    consecutive_failures: int
    last_error: str | None
    #: What "overdue" is measured from (see the module's docstring).
    reference_at: datetime
    #: Seconds between two due times; None when not known (then never overdue).
    period: float | None
    #: Seconds since ``reference_at`` when overdue, else None.
    overdue_for: float | None
    state: State

    @property
    def failing(self) -> bool:
        return self.consecutive_failures > 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``schedules show|list --json``, key ``health``): times as datetimes,
        ``overdue_for`` and ``period`` in seconds, ``label`` as the HEALTH column shows it."""
        return {
            "state": self.state,
            "label": label(self),
            "tracked": self.tracked,
            "last_outcome": self.last_outcome,
            "last_finished_at": self.last_finished_at,
            "last_success_at": self.last_success_at,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "overdue": self.overdue_for is not None,
            "overdue_for": self.overdue_for,
            "reference_at": self.reference_at,
            "period": self.period,
        }


def overdue_for(
    reference_at: datetime, period: float | None, factor: float, now: datetime
) -> float | None:
    """Seconds since ``reference_at`` when that is more than ``factor`` times ``period``, else
    None (also when the period is unknown or not positive)."""
    if period is None or not period > 0 or not math.isfinite(period):
        return None
    age = (now - reference_at).total_seconds()
    return age if age > factor * period else None


def judge(row: Mapping[Any, Any], factor: float, now: datetime) -> ScheduleHealth:
    """The health of the schedule ``row`` (:data:`pg_beat.store.health.HEALTH_COLUMNS`)."""
    tracked = bool(row["tracked"])
    failures = int(row["consecutive_failures"] or 0)
    period = None if row["period"] is None else float(row["period"])
    planned = bool(row["enabled"]) and row["next_run_at"] is not None
    late = overdue_for(row["reference_at"], period, factor, now) if planned else None
    state: State
    if not row["enabled"]:
        state = "disabled"
    elif row["next_run_at"] is None:
        state = "parked"
    elif late is not None:
        state = "overdue"
    elif failures > 0:
        state = "failing"
    elif not tracked:
        state = "untracked"
    else:
        state = "ok"
    return ScheduleHealth(
        tracked=tracked,
        last_outcome=row["last_outcome"],
        last_finished_at=row["last_finished_at"],
        last_success_at=row["last_success_at"],
        consecutive_failures=failures,
        last_error=row["last_error"],
        reference_at=row["reference_at"],
        period=period,
        overdue_for=late,
        state=state,
    )


def label(health: ScheduleHealth) -> str:
    """Short text for a table: ``ok``, ``failing x3``, ``overdue 2h`` (since its reference
    time, in whole minutes from a minute on), ``failing x3, overdue 2h``, ``untracked``,
    ``disabled`` or ``parked``."""
    from pg_beat.schedules import format_duration

    parts = []
    if health.failing and health.state not in ("disabled", "parked"):
        parts.append(f"failing x{health.consecutive_failures}")
    if health.overdue_for is not None:
        # Whole minutes from a minute on: a second more or less says nothing here.
        late = health.overdue_for
        late = round(late / 60) * 60 if late >= 60 else round(late)
        parts.append(f"overdue {format_duration(late)}")
    return ", ".join(parts) if parts else health.state


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated between the two
    nearest ranks; None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def runtime_summary(runtimes: Sequence[float]) -> dict[str, Any]:
    """p50 and p95 (seconds) of ``runtimes``, and how many runs they are from."""
    return {
        "runs": len(runtimes),
        "p50": percentile(runtimes, 50),
        "p95": percentile(runtimes, 95),
    }
