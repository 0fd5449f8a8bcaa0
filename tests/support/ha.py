"""What the HA tests share: three 1-second schedules on a real cluster (examples/cluster.py),
settled before a fault, and every tick of the window checked on the worker afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from examples.cluster import Cluster, utcnow

SCHEDULES = [("every-second-a", 1.0), ("every-second-b", 1.0), ("every-second-c", 1.0)]
STEADY = 3.0  # seconds of normal running before and after each fault

ClusterFactory = Callable[..., Cluster]


def settle(cluster: Cluster) -> tuple[str, int]:
    """Start the cluster and let it run steadily: (leader, epoch)."""
    cluster.start()
    leader, epoch = cluster.wait_for_leader(timeout=60)
    time.sleep(STEADY)
    return leader, epoch


def assert_every_tick_once(cluster: Cluster, start: Any) -> None:
    """From the worker's side: every tick due since ``start`` ran exactly once."""
    time.sleep(2 * STEADY)
    end = utcnow() - timedelta(seconds=1)
    cluster.wait_executed_until(end, timeout=60)
    verdict = cluster.verify(start, end)
    assert verdict.expected >= 3 * 4, verdict.summary()
    assert verdict.ok, (
        verdict.summary(),
        verdict.missed[:5],
        verdict.duplicates[:5],
        verdict.republished[:5],
        verdict.unexpected[:5],
    )
