"""Pure lease logic: how a standby classifies the lease row, and the local publish fence."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pg_beat.lease import LeaderState, LeaseStatus, lease_state

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def row(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "epoch": 7,
        "holder": "beat-1",
        "backend_pid": 4242,
        "backend_alive": True,
        "heartbeat_at": NOW - timedelta(seconds=1),
        "expires_at": NOW + timedelta(seconds=4),
    }
    base.update(values)
    return base


@pytest.mark.parametrize(
    ("lease", "status"),
    [
        (None, LeaseStatus.FREE),
        (row(holder=None), LeaseStatus.FREE),
        (row(), LeaseStatus.HELD),
        # The process died: its backend is gone although the lease has not expired yet.
        (row(backend_alive=False), LeaseStatus.HOLDER_GONE),
        # Alive backend, no heartbeat for a whole TTL: hung (SIGSTOP, stuck loop, partition).
        (
            row(heartbeat_at=NOW - timedelta(seconds=6), expires_at=NOW - timedelta(seconds=1)),
            LeaseStatus.STALE,
        ),
        (row(expires_at=NOW), LeaseStatus.STALE),
        # Handed over on purpose (SIGTERM): expired and no backend recorded.
        (row(backend_pid=None, backend_alive=False, expires_at=NOW), LeaseStatus.RELEASED),
        # Gone and expired at once still counts as gone, not as a release.
        (row(backend_alive=False, expires_at=NOW - timedelta(seconds=1)), LeaseStatus.HOLDER_GONE),
    ],
)
def test_lease_state(lease: dict[str, Any] | None, status: LeaseStatus) -> None:
    assert lease_state(lease, NOW).status is status


def test_lease_state_reports_ages_on_the_database_clock() -> None:
    view = lease_state(row(), NOW)
    assert view.heartbeat_age == pytest.approx(1.0)
    assert view.expires_in == pytest.approx(4.0)
    assert (view.epoch, view.holder, view.backend_pid) == (7, "beat-1", 4242)


def test_publishing_needs_the_epoch_and_an_unexpired_local_deadline() -> None:
    state = LeaderState()
    assert state.epoch is None and not state.may_publish(1)
    state.become_leader(3, time.monotonic(), 0.2)
    assert state.epoch == 3 and state.may_publish(3)
    assert not state.may_publish(2)  # a stale epoch never publishes
    time.sleep(0.25)
    assert not state.may_publish(3) and state.epoch is None  # paused past the deadline


def test_extend_moves_the_deadline_only_for_the_current_epoch() -> None:
    state = LeaderState()
    state.become_leader(3, time.monotonic(), 0.1)
    state.extend(2, time.monotonic(), 10.0)
    time.sleep(0.15)
    assert not state.may_publish(3)
    state.become_leader(4, time.monotonic(), 0.1)
    state.extend(4, time.monotonic(), 10.0)
    time.sleep(0.15)
    assert state.may_publish(4)


def test_step_down_stops_publishing_and_signals_the_loop() -> None:
    state = LeaderState()
    state.become_leader(5, time.monotonic(), 10.0)
    state.changed.clear()
    assert state.step_down() == 5
    assert state.changed.is_set() and not state.may_publish(5)
    assert state.step_down() is None


def test_an_epoch_is_held_past_its_deadline_until_stepped_down_or_replaced() -> None:
    state = LeaderState()
    assert not state.holds(1)
    state.become_leader(1, time.monotonic(), 0.05)
    time.sleep(0.1)
    assert state.epoch is None and state.holds(1)  # a renewal may still bring it back
    state.extend(1, time.monotonic(), 10.0)
    assert state.may_publish(1)
    state.become_leader(2, time.monotonic(), 10.0)
    assert not state.holds(1) and state.holds(2)
    state.step_down()
    assert not state.holds(2)
