"""The HA tier's cluster fixture: clusters made in a test are stopped after it (by the PIDs they
started), and their logs printed when it failed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.ha import SCHEDULES, ClusterFactory

from examples.cluster import Cluster


@pytest.fixture
def make_cluster(
    db_url: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ClusterFactory]:
    clusters: list[Cluster] = []

    def make(**kwargs: Any) -> Cluster:
        kwargs.setdefault("workdir", tmp_path / f"cluster{len(clusters)}")
        database = kwargs.pop("database_url", db_url)
        cluster = Cluster(database, kwargs.pop("broker_url", redis_url), **kwargs)
        clusters.append(cluster)
        cluster.prepare(SCHEDULES)
        return cluster

    yield make
    failed = getattr(request.node, "rep_call", None)
    for cluster in clusters:
        cluster.stop()
        if failed is not None and failed.failed:
            for name in [*cluster.replicas, "worker"]:
                # Without the line per tick sent: the state changes are what tells.
                lines = [line for line in cluster.log(name).splitlines() if "] sent " not in line]
                print(f"----- {name} -----\n" + "\n".join(lines)[-8000:])
