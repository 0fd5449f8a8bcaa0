"""Fixtures of the acceptance tier."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis


@pytest.fixture
def queue(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue (and exchange) name of this test only; its keys are removed from Redis after."""
    module = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = f"pg_beat_{module}_{secrets.token_hex(6)}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{name}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
