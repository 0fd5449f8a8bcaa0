"""The task id of a tick: deterministic, and pinned, since downstream deduplication keys on it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pg_beat.publish.ticks import task_id_for

DUE = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_a_known_tick_has_a_known_task_id() -> None:
    """uuid5 of (group, schedule, due time in UTC), pinned: code downstream may derive a
    tick's id itself (to find its result), and two groups may each have a schedule of the same
    name, whose ticks must not share ids (one result would stand for both)."""
    assert task_id_for("billing", "nightly-report", DUE) == "e49e9dfd-323d-5e54-8c12-978abd491d81"
    assert task_id_for("default", "nightly-report", DUE) == "4c386f23-2386-5929-a91e-350bfa1b60f3"


def test_the_group_schedule_and_due_time_each_change_the_id() -> None:
    base = task_id_for("billing", "nightly-report", DUE)
    assert task_id_for("reports", "nightly-report", DUE) != base
    assert task_id_for("billing", "nightly-reports", DUE) != base
    assert task_id_for("billing", "nightly-report", DUE + timedelta(microseconds=1)) != base


def test_the_same_instant_in_another_zone_gives_the_same_id() -> None:
    berlin = DUE.astimezone(timezone(timedelta(hours=1)))
    assert task_id_for("billing", "nightly-report", berlin) == task_id_for(
        "billing", "nightly-report", DUE
    )
