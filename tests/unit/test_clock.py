"""The clock of local deadlines counts suspend: CLOCK_BOOTTIME on Linux (invariant 14)."""

from __future__ import annotations

import sys
import time

import pytest

from pg_beat.leadership import clock

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="CLOCK_BOOTTIME is Linux's")


@linux_only
def test_deadlines_are_read_from_clock_boottime_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLOCK_MONOTONIC stops while a host or VM is suspended: a leader that slept through its
    lease would wake up before its deadline. Which clock is asked is the whole point."""
    asked: list[int] = []

    def clock_gettime(clock_id: int) -> float:
        asked.append(clock_id)
        return 123.5

    monkeypatch.setattr(time, "clock_gettime", clock_gettime)
    assert clock.now() == 123.5
    assert asked == [time.CLOCK_BOOTTIME]


@linux_only
def test_now_reads_the_real_boot_time_clock() -> None:
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    now = clock.now()
    after = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert before <= now <= after
