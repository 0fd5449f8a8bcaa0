"""The publisher thread against a real LeaderState: order, the deadline, retries, progress."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import pytest

from pg_beat.dispatch import Claim
from pg_beat.lease import LeaderState
from pg_beat.publisher import Publisher

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def claim(run_id: int) -> Claim:
    return Claim(run_id, f"s{run_id}", "t.task", [], {}, {}, T0 + timedelta(seconds=run_id), "", 1)


class Broker:
    """Records sends; can fail or block on demand."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.attempts = 0
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, c: Claim, epoch: int) -> None:
        self.attempts += 1
        self.gate.wait()
        if self.fail:
            raise ConnectionError("broker down (test)")
        self.sent.append(c.run_id)


def leader(epoch: int = 1, lifetime: float = 60.0) -> LeaderState:
    state = LeaderState()
    state.become_leader(epoch, time.monotonic(), lifetime)
    return state


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    yield b
    b.gate.set()


def test_sends_in_order_and_hands_back_what_went_out(broker: Broker) -> None:
    pub = Publisher(leader(), broker, "r")
    assert pub.stalled_since() is None
    pub.submit([claim(i) for i in range(1, 51)], 1)
    pub.submit([claim(i) for i in range(51, 101)], 1)
    assert pub.wait_below(1, 5.0)
    assert broker.sent == list(range(1, 101))
    assert pub.take_sent() == list(range(1, 101))
    assert pub.take_sent() == []
    assert pub.sent_total == 100 and pub.backlog == 0 and pub.stalled_since() is None
    pub.stop(5.0)


def test_past_the_deadline_the_queue_is_dropped_unsent(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    state = leader(lifetime=0.3)
    pub = Publisher(state, broker, "r")
    broker.gate.clear()  # the first send blocks until after the deadline
    pub.submit([claim(i) for i in range(1, 11)], 1)
    until(lambda: broker.attempts == 1 and not state.may_publish(1))
    with caplog.at_level(logging.WARNING, logger="pg_beat.dispatch"):
        broker.gate.set()
        assert pub.wait_below(1, 5.0)
    # The send that had begun completes and is recorded; nothing after it goes out.
    assert broker.sent == [1] and pub.take_sent() == [1]
    assert pub.in_flight() == set()
    assert "9 claimed tick(s) left for the next leader" in caplog.text
    pub.stop(5.0)


def test_a_stale_epoch_never_publishes(broker: Broker) -> None:
    state = leader(epoch=2)
    pub = Publisher(state, broker, "r")
    pub.submit([claim(1)], 1)  # claimed under epoch 1, which is no longer ours
    pub.submit([claim(2)], 2)
    assert pub.wait_below(1, 5.0)
    assert broker.sent == [2]
    pub.stop(5.0)


def test_a_failed_publish_is_retried_first_and_logged_once(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    pub = Publisher(leader(), broker, "r")
    broker.fail = True
    with caplog.at_level(logging.INFO, logger="pg_beat.dispatch"):
        pub.submit([claim(1), claim(2)], 1)
        until(lambda: broker.attempts >= 3)  # backing off between them
        assert broker.sent == [] and pub.backlog == 2
        assert pub.in_flight() == {1, 2}  # still ours: never re-claimed as an orphan
        pub.submit([claim(3)], 1)
        broker.fail = False
        assert pub.wait_below(1, 5.0)
    assert broker.sent == [1, 2, 3]  # oldest first, each once
    failures = [r for r in caplog.records if "failed, will retry" in r.getMessage()]
    assert len(failures) == 1 and "'s1'" in failures[0].getMessage()
    assert "epoch 1" in failures[0].getMessage()
    assert sum("works again" in r.getMessage() for r in caplog.records) == 1
    pub.stop(5.0)


def test_a_blocked_send_shows_as_a_stall_and_its_claim_stays_in_flight(broker: Broker) -> None:
    pub = Publisher(leader(), broker, "r")
    broker.gate.clear()
    before = time.monotonic()
    pub.submit([claim(1), claim(2)], 1)
    assert not pub.wait_below(1, 0.3)  # times out: the send hangs
    stalled = pub.stalled_since()
    assert stalled is not None and stalled <= before + 0.1
    assert time.monotonic() - stalled >= 0.3
    assert pub.in_flight() == {1, 2}
    assert pub.thread_id is not None and pub.thread_id != threading.get_ident()
    broker.gate.set()
    assert pub.wait_below(1, 5.0)
    assert pub.stalled_since() is None
    assert pub.in_flight() == {1, 2}  # sent, not yet taken to be marked
    assert pub.take_sent() == [1, 2] and pub.in_flight() == set()
    pub.stop(5.0)


def test_a_hook_that_raises_does_not_stop_the_thread(broker: Broker) -> None:
    pub = Publisher(leader(), broker, "r")

    def hook(c: Claim, published: float) -> None:
        raise RuntimeError("bad hook")

    pub.on_sent = hook
    pub.submit([claim(1), claim(2)], 1)
    assert pub.wait_below(1, 5.0)
    assert broker.sent == [1, 2] and pub.take_sent() == [1, 2]
    pub.stop(5.0)


def test_stop_drops_the_queue_and_ends_the_thread(broker: Broker) -> None:
    pub = Publisher(leader(), broker, "r")
    broker.gate.clear()
    pub.submit([claim(i) for i in range(1, 6)], 1)
    until(lambda: broker.attempts == 1)  # the first send has begun, and blocks
    stopper = threading.Thread(target=pub.stop, args=(5.0,))
    stopper.start()
    until(lambda: pub.backlog == 1)  # the queue is dropped; the send in progress remains
    broker.gate.set()
    stopper.join(5.0)
    assert not stopper.is_alive()
    assert broker.sent == [1] and pub.backlog == 0
