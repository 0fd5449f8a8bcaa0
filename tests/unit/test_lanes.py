"""The publisher's queue: on time before late, claim order in each lane, a schedule's on-time
tick behind its own late ones, and a tick put back where it came from."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pg_beat.publish.lanes import Lanes
from pg_beat.publish.ticks import Claim

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def claim(run_id: int, schedule: int, *, late: bool = False) -> Claim:
    due = T0 + timedelta(seconds=run_id)
    return Claim(run_id, schedule, f"s{schedule}", "t", [], {}, {}, due, "", 1, late=late)


def drain(lanes: Lanes) -> list[int]:
    out = []
    while (head := lanes.head()) is not None:
        item = lanes.pop()
        assert item is head
        out.append(item.claim.run_id)
    return out


def test_on_time_first_but_never_before_the_same_schedules_late_ticks() -> None:
    lanes = Lanes()
    lanes.add(claim(1, 7, late=True), 1)
    lanes.add(claim(2, 8, late=True), 1)
    lanes.add(claim(3, 7), 1)  # on time, but schedule 7 still has a late tick queued
    lanes.add(claim(4, 9), 1)
    assert len(lanes) == 4 and [i.claim.run_id for i in lanes] == [4, 1, 2, 3]
    assert drain(lanes) == [4, 1, 2, 3]
    lanes.add(claim(5, 7), 1)  # its late ticks are gone: on time again
    lanes.add(claim(6, 8, late=True), 1)
    assert drain(lanes) == [5, 6]


def test_a_tick_put_back_returns_to_the_front_of_its_own_lane() -> None:
    lanes = Lanes()
    for c in (claim(1, 7, late=True), claim(2, 7), claim(3, 9)):
        lanes.add(c, 1)
    taken = [lanes.pop() for _ in range(3)]  # 3, then 1 and 2 from the late lane
    assert [i.claim.run_id for i in taken] == [3, 1, 2]
    for item in reversed(taken):
        lanes.requeue(item)
    assert drain(lanes) == [3, 1, 2]  # 2 stays behind 1, though it is an on-time claim


def test_drop_forgets_one_epoch_and_keeps_the_others_order() -> None:
    lanes = Lanes()
    lanes.add(claim(1, 7, late=True), 1)
    lanes.add(claim(2, 7), 2)
    lanes.add(claim(3, 8), 1)
    lanes.add(claim(4, 8), 2)
    lanes.drop(1)
    assert drain(lanes) == [4, 2]
    lanes.add(claim(5, 7), 2)  # schedule 7 has no late tick left: on time
    lanes.add(claim(6, 8, late=True), 2)
    assert drain(lanes) == [5, 6]
    lanes.add(claim(7, 7), 2)
    lanes.clear()
    assert len(lanes) == 0 and lanes.head() is None
