"""The publish path's batches against a real kombu Redis batch and a real Redis: the local
deadline (invariant 4) holds even where the transport flushes by itself, and the push-once
script leaves one copy of a tick however often it is published."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from kombu import Connection, Producer, Queue

from pg_beat.leadership import clock
from pg_beat.leadership.lease import LeaderState
from pg_beat.publish import dedup
from pg_beat.publish.lanes import Queued
from pg_beat.publish.sending import NOT_TRIED, Sender
from pg_beat.publish.ticks import Claim

pytestmark = pytest.mark.timeout(60)


def queued(n: int) -> Queued:
    due = datetime(2030, 1, 1, tzinfo=timezone.utc)
    claim = Claim(n, n, f"s{n}", "t.task", [n], {}, {}, due, f"task-{n}", 1)
    return Queued(claim, 1)


@pytest.fixture
def producer(redis_url: str) -> Iterator[tuple[Producer, str, redis.Redis]]:
    queue = f"pg_beat_sending_{secrets.token_hex(4)}"
    client = redis.Redis.from_url(redis_url)
    with Connection(redis_url) as conn:
        producer = Producer(conn.default_channel, auto_declare=False)
        Queue(queue, routing_key=queue)(conn.default_channel).declare()
        try:
            yield producer, queue, client
        finally:
            client.delete(queue)
            client.close()


def pushed(client: redis.Redis, queue: str) -> int:
    return int(client.llen(queue))


def test_past_the_deadline_nothing_more_is_buffered_even_where_the_transport_flushes_itself(
    producer: tuple[Producer, str, redis.Redis],
) -> None:
    """kombu flushes a batch by itself once it holds max_size commands. With max_size 2, a
    batch of 4 goes out as two flushes: the deadline passing after the first two must keep the
    last two out of Redis, which only the check before each message can do (the one before the
    final flush comes after kombu's own flush)."""
    prod, queue, client = producer
    state = LeaderState()
    state.become_leader(1, clock.now(), 60.0)
    sender = Sender(state, lambda: prod.batch(max_size=2))
    passed: list[bool] = []

    def send(claim: Claim, epoch: int) -> None:
        prod.publish({"n": claim.run_id}, routing_key=queue)
        if claim.run_id == 2:  # kombu has just flushed 1 and 2; then the deadline passes
            state.become_leader(1, clock.now() - 1.0, 0.5)  # the same term, its deadline gone
            passed.append(not state.may_publish(1))

    results = sender.publish([queued(n) for n in (1, 2, 3, 4)], send)
    assert passed == [True]
    assert pushed(client, queue) == 2, "a message buffered past the deadline went out"
    assert results[2:] == [NOT_TRIED, NOT_TRIED]


def test_the_push_once_script_leaves_one_copy_of_a_tick(
    producer: tuple[Producer, str, redis.Redis], redis_url: str
) -> None:
    prod, queue, client = producer
    publishing: dict[str, Any] = {"id": None}
    assert dedup.install(prod.channel, lambda: publishing["id"])
    state = LeaderState()
    state.become_leader(1, clock.now(), 60.0)
    sender = Sender(state, lambda: prod.batch(max_size=1000))

    def send(claim: Claim, epoch: int) -> None:
        publishing["id"] = claim.task_id
        try:
            prod.publish({"n": claim.run_id}, routing_key=queue)
        finally:
            publishing["id"] = None

    for _ in range(3):  # the same ticks three times: a retry, a re-publish after a failover
        assert sender.publish([queued(n) for n in (1, 2, 3)], send) == [None, None, None]
    assert sender.publish([queued(4)], send) == [None]  # a tick alone goes in a batch of one
    assert pushed(client, queue) == 4
    markers = [dedup.marker_key(f"task-{n}") for n in (1, 2, 3, 4)]
    assert all(0 < int(client.ttl(key)) <= dedup.MARKER_TTL for key in markers)
    client.delete(*markers)
    # Markers gone (an hour later, say): the same tick goes out again.
    assert sender.publish([queued(1)], send) == [None]
    assert pushed(client, queue) == 5
    client.delete(dedup.marker_key("task-1"))
