"""The health judgement of one schedule (pure): the overdue rule, its states and labels, and
the runtime percentiles."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pg_beat import health

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
HOUR = 3600.0


def row(**overrides: Any) -> dict[str, Any]:
    """A tracked, enabled, hourly schedule whose last run succeeded a minute ago."""
    values: dict[str, Any] = {
        "enabled": True,
        "next_run_at": NOW + timedelta(minutes=59),
        "tracked": True,
        "last_outcome": "success",
        "last_finished_at": NOW - timedelta(minutes=1),
        "last_success_at": NOW - timedelta(minutes=1),
        "consecutive_failures": 0,
        "last_error": None,
        "reference_at": NOW - timedelta(minutes=1),
        "period": HOUR,
    }
    values.update(overrides)
    return values


@pytest.mark.parametrize(
    ("age", "period", "factor", "expected"),
    [
        (HOUR, HOUR, 2.0, None),  # one period: on time
        (2 * HOUR, HOUR, 2.0, None),  # exactly factor periods: not yet
        (2 * HOUR + 1, HOUR, 2.0, 2 * HOUR + 1),  # a second more: overdue
        (3 * HOUR, HOUR, 3.5, None),  # the factor is the user's
        (4 * HOUR, HOUR, 3.5, 4 * HOUR),
        (10 * HOUR, None, 2.0, None),  # period unknown: never overdue
        (10 * HOUR, 0.0, 2.0, None),
        (10 * HOUR, float("inf"), 2.0, None),
        (-60.0, HOUR, 2.0, None),  # reference in the future (clock skew)
    ],
)
def test_overdue_for(age: float, period: float | None, factor: float, expected: Any) -> None:
    reference = NOW - timedelta(seconds=age)
    assert health.overdue_for(reference, period, factor, NOW) == expected


@pytest.mark.parametrize(
    ("overrides", "state", "label"),
    [
        ({}, "ok", "ok"),
        # Outcomes not tracked: measured from the last run, still on time.
        ({"tracked": False, "last_outcome": None, "last_success_at": None}, "untracked",
         "untracked"),
        ({"consecutive_failures": 3, "last_outcome": "failure"}, "failing", "failing x3"),
        # Failing for long enough that its last success is old: overdue too.
        ({"consecutive_failures": 5, "reference_at": NOW - timedelta(hours=3)}, "overdue",
         "failing x5, overdue 3h"),
        # Runs all skipped (nothing finishes): overdue once the last success is old.
        ({"reference_at": NOW - timedelta(hours=2, minutes=30)}, "overdue", "overdue 2h30m"),
        # A new daily schedule, created an hour ago: not overdue.
        ({"tracked": False, "reference_at": NOW - timedelta(hours=1), "period": 86400.0},
         "untracked", "untracked"),
        # Disabled or parked: not expected to run, whatever its age; failures not shown.
        ({"enabled": False, "reference_at": NOW - timedelta(days=9)}, "disabled", "disabled"),
        ({"next_run_at": None, "reference_at": NOW - timedelta(days=9),
          "consecutive_failures": 2}, "parked", "parked"),
    ],
)  # fmt: skip
def test_judge_states_and_labels(overrides: dict[str, Any], state: str, label: str) -> None:
    judged = health.judge(row(**overrides), 2.0, NOW)
    assert judged.state == state
    assert health.label(judged) == label
    assert (judged.overdue_for is not None) == ("overdue" in label)


def test_json_form() -> None:
    judged = health.judge(row(consecutive_failures=1, last_error="boom"), 2.0, NOW)
    assert judged.as_dict() == {
        "state": "failing", "label": "failing x1", "tracked": True, "last_outcome": "success",
        "last_finished_at": NOW - timedelta(minutes=1),
        "last_success_at": NOW - timedelta(minutes=1), "consecutive_failures": 1,
        "last_error": "boom", "overdue": False, "overdue_for": None,
        "reference_at": NOW - timedelta(minutes=1), "period": HOUR,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([4.0], 50, 4.0),
        ([4.0], 95, 4.0),
        ([3.0, 1.0, 2.0], 50, 2.0),  # unsorted in
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),  # interpolated between the two middle ranks
        ([float(v) for v in range(1, 101)], 95, 95.05),
        ([float(v) for v in range(1, 101)], 0, 1.0),
        ([float(v) for v in range(1, 101)], 100, 100.0),
        ([1.0] * 94 + [60.0] * 6, 95, 60.0),  # a slow tail shows in p95, not p50
        ([1.0] * 94 + [60.0] * 6, 50, 1.0),
    ],
)
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    got = health.percentile(values, q)
    assert got == (None if expected is None else pytest.approx(expected))


def test_percentile_refuses_out_of_range() -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        health.percentile([1.0], 101)


def test_runtime_summary() -> None:
    assert health.runtime_summary([2.0, 1.0, 3.0]) == {"runs": 3, "p50": 2.0, "p95": 2.9}
    assert health.runtime_summary([]) == {"runs": 0, "p50": None, "p95": None}
