"""Pure lease logic: how a standby classifies the lease row, and the local publish fence."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pg_beat.leadership import clock
from pg_beat.leadership.lease import LeaderState, LeaseStatus, lease_state

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def row(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "epoch": 7,
        "holder": "beat-1",
        "backend_pid": 4242,
        "backend_alive": True,
        "heartbeat_at": NOW - timedelta(seconds=1),
        "expires_at": NOW + timedelta(seconds=4),
        "released_at": None,
    }
    base.update(values)
    return base


@pytest.mark.parametrize(
    ("lease", "status"),
    [
        (None, LeaseStatus.FREE),
        (row(holder=None), LeaseStatus.FREE),
        (row(), LeaseStatus.HELD),
        # The process died: its session let go of the lock although the lease has not expired.
        (row(backend_alive=False), LeaseStatus.HOLDER_GONE),
        # Its session still holds the lock, no heartbeat for a whole TTL: hung (SIGSTOP, stuck
        # loop, partition).
        (
            row(heartbeat_at=NOW - timedelta(seconds=6), expires_at=NOW - timedelta(seconds=1)),
            LeaseStatus.HUNG,
        ),
        (row(expires_at=NOW), LeaseStatus.HUNG),
        # Handed over on purpose (SIGTERM): released and expired.
        (
            row(backend_pid=None, backend_alive=False, expires_at=NOW, released_at=NOW),
            LeaseStatus.RELEASED,
        ),
        # Given up while its session may linger: still a release.
        (row(expires_at=NOW, released_at=NOW), LeaseStatus.RELEASED),
        # Gone and expired at once still counts as gone, not as a release.
        (row(backend_alive=False, expires_at=NOW - timedelta(seconds=1)), LeaseStatus.HOLDER_GONE),
        # Taken in transaction-pooling mode: no session recorded, alive until it expires.
        (row(backend_pid=None, backend_alive=False), LeaseStatus.HELD),
        (row(backend_pid=None, backend_alive=False, expires_at=NOW), LeaseStatus.EXPIRED),
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
    state.become_leader(3, clock.now(), 0.2)
    assert state.epoch == 3 and state.may_publish(3)
    assert not state.may_publish(2)  # a stale epoch never publishes
    time.sleep(0.25)
    assert not state.may_publish(3) and state.epoch is None  # paused past the deadline


def test_extend_moves_the_deadline_only_for_the_current_epoch() -> None:
    state = LeaderState()
    state.become_leader(3, clock.now(), 0.1)
    state.extend(2, clock.now(), 10.0)
    time.sleep(0.15)
    assert not state.may_publish(3)
    state.become_leader(4, clock.now(), 0.1)
    state.extend(4, clock.now(), 10.0)
    time.sleep(0.15)
    assert state.may_publish(4)


def test_step_down_stops_publishing_and_signals_the_loop() -> None:
    state = LeaderState()
    state.become_leader(5, clock.now(), 10.0)
    state.changed.clear()
    assert state.step_down() == 5
    assert state.changed.is_set() and not state.may_publish(5)
    assert state.step_down() is None


def test_an_epoch_is_held_past_its_deadline_until_stepped_down_or_replaced() -> None:
    state = LeaderState()
    assert not state.holds(1)
    state.become_leader(1, clock.now(), 0.05)
    time.sleep(0.1)
    assert state.epoch is None and state.holds(1)  # a renewal may still bring it back
    state.extend(1, clock.now(), 10.0)
    assert state.may_publish(1)
    state.become_leader(2, clock.now(), 10.0)
    assert not state.holds(1) and state.holds(2)
    state.step_down()
    assert not state.holds(2)


def test_the_deadline_clock_counts_suspend_where_linux_can() -> None:
    """CLOCK_BOOTTIME keeps counting while a host is suspended; monotonic does not."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        before = time.clock_gettime(time.CLOCK_BOOTTIME)
        assert before <= clock.now() <= time.clock_gettime(time.CLOCK_BOOTTIME)
    a = clock.now()
    assert clock.now() >= a


def test_the_state_lock_is_reentrant_for_a_signal_handler() -> None:
    """Celery's SIGTERM handler may run step_down() while the same thread holds the lock."""
    state = LeaderState()
    state.become_leader(1, clock.now(), 10.0)
    with state._lock:  # as if interrupted inside one of its methods
        assert state.step_down() == 1
