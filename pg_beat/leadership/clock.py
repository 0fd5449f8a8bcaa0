"""The clock of every local deadline: it keeps counting while the host is suspended.

``time.monotonic()`` stops while a Linux host or VM is suspended, so a leader that slept
through its lease would wake up believing its deadline still ahead and publish ticks its
successor has already re-sent. ``CLOCK_BOOTTIME`` counts the suspension too; where it does not
exist, ``monotonic`` (which, on macOS and Windows, already counts sleep) is used.
"""

from __future__ import annotations

import time

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def now() -> float:
    """Seconds on a clock that never goes back and keeps counting through suspend."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()
