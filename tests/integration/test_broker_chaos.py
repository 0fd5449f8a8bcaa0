"""A backlog published while a Redis of the test's own stops and resumes at random points: no
tick failed, none lost, none twice, the lease kept (see support/chaos.py; the benchmark
``benchmarks/bench_broker_chaos.py`` runs the same code over many more seeds)."""

from __future__ import annotations

import pytest
from support import chaos
from support.env import unavailable
from support.procs import ProcessGroup

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_redis_that_stalls_at_random_points_of_a_backlog(
    db_url: str, procs: ProcessGroup, seed: int
) -> None:
    try:
        result = chaos.run(db_url, procs, seed)
    except chaos.RedisUnavailable as exc:
        unavailable(str(exc))
    assert result.ok, result
