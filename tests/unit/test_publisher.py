"""The publisher thread against a real LeaderState: order, the deadline, retries, progress."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pg_beat.leadership import clock
from pg_beat.leadership.lease import LeaderState
from pg_beat.publish.publisher import Publisher
from pg_beat.publish.ticks import Claim

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def claim(run_id: int, *, late: bool = False, schedule: int | None = None) -> Claim:
    sid = run_id if schedule is None else schedule
    return Claim(
        run_id,
        sid,
        f"s{sid}",
        "t.task",
        [],
        {},
        {},
        T0 + timedelta(seconds=run_id),
        "",
        1,
        late=late,
    )


class Broker:
    """Records sends; can fail (all, or some run ids) or block on demand.

    A batching broker (as kombu's Redis transport in a batch) buffers what is sent inside a
    batch and delivers it at the flush, which is where it blocks and fails; a message it
    refuses (poison) is refused when it is sent.
    """

    def __init__(self, batching: bool = False) -> None:
        self.sent: list[int] = []
        self.attempts = 0  # round trips: single sends and flushes
        self.flushed: list[list[int]] = []  # what each flush delivered
        self.fail = False
        self.poison: dict[int, BaseException] = {}  # run id -> what its every send raises
        self.gate = threading.Event()
        self.gate.set()
        self.batching = batching
        self.stall = (0, 0.0)  # (run id, seconds): its send takes that long
        self._buffer: list[int] | None = None

    def __call__(self, c: Claim, epoch: int) -> None:
        if c.run_id == self.stall[0]:
            time.sleep(self.stall[1])
        if c.run_id in self.poison:
            self.attempts += self._buffer is None
            raise self.poison[c.run_id]
        if self._buffer is not None:
            self._buffer.append(c.run_id)
            return
        self._deliver([c.run_id])

    def _deliver(self, run_ids: list[int]) -> None:
        self.attempts += 1
        self.gate.wait()
        if self.fail:
            raise ConnectionError("broker down (test)")
        self.sent.extend(run_ids)

    @contextmanager
    def _batch(self) -> Iterator[Broker]:
        self._buffer = []
        try:
            yield self
        finally:
            self._buffer = None  # an error inside discards what was buffered

    def flush(self) -> None:
        assert self._buffer is not None
        buffered, self._buffer = self._buffer, []
        if buffered:
            self._deliver(buffered)
            self.flushed.append(buffered)

    def open_batch(self) -> AbstractContextManager[Broker] | None:
        return self._batch() if self.batching else None

    def publisher(self, state: LeaderState, batch_max: int = 4) -> Publisher:
        return Publisher(state, self, "r", self.open_batch, batch_max=batch_max)


def leader(epoch: int = 1, lifetime: float = 60.0) -> LeaderState:
    state = LeaderState()
    state.become_leader(epoch, clock.now(), lifetime)
    return state


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    yield b
    b.gate.set()


@pytest.fixture(params=["single", "batched"])
def either(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A broker that takes one message per round trip, and one that takes batches."""
    b = Broker(batching=request.param == "batched")
    yield b
    b.gate.set()


def test_sends_in_order_and_hands_back_what_went_out(either: Broker) -> None:
    pub = either.publisher(leader())
    assert pub.stalled_since() is None
    pub.submit([claim(i) for i in range(1, 51)], 1)
    pub.submit([claim(i) for i in range(51, 101)], 1)
    assert pub.wait_below(1, 5.0)
    assert either.sent == list(range(1, 101))
    assert pub.take_outcomes().sent == list(range(1, 101))
    assert pub.take_outcomes().sent == []
    assert pub.sent_total == 100 and pub.backlog == 0 and pub.stalled_since() is None
    if either.batching:
        assert either.flushed and max(map(len, either.flushed)) == 4
    else:  # the transport sends each message at once: the publisher stops asking for batches
        assert not pub.sender.batches and not either.flushed
    pub.stop(5.0)


def test_past_the_deadline_the_queue_waits_for_the_renewal_while_the_epoch_is_held(
    broker: Broker,
) -> None:
    state = leader(lifetime=0.3)
    pub = Publisher(state, broker, "r")
    broker.gate.clear()  # the first send blocks until after the deadline
    pub.submit([claim(i) for i in range(1, 11)], 1)
    until(lambda: broker.attempts == 1 and not state.may_publish(1))
    broker.gate.set()
    until(lambda: broker.sent == [1])
    assert not pub.wait_below(2, 0.3)  # nothing more goes out past the deadline...
    assert broker.sent == [1] and pub.in_flight() >= set(range(2, 11))  # ...and nothing is lost
    state.extend(1, clock.now(), 60.0)  # a late renewal of the same epoch
    assert pub.wait_below(1, 5.0)
    assert broker.sent == list(range(1, 11))  # each once, in order
    pub.stop(5.0)


@pytest.mark.parametrize("stall_on", [3, 4], ids=["while-buffering", "before-the-flush"])
def test_a_batch_that_reaches_the_deadline_before_its_flush_goes_out_not_at_all(
    stall_on: int,
) -> None:
    """Invariant 4 for a batch: the flush is the publish, so the deadline is checked right
    before it; a batch past it is put back whole, in order, and counts as no failure."""
    b = Broker(batching=True)
    state = leader(lifetime=0.3)
    pub = b.publisher(state, batch_max=4)
    b.stall = (stall_on, 0.4)  # the deadline passes while the batch is being made
    # 3 is on time but behind its schedule's late tick 2: it must stay behind it when put back.
    # One submit: the thread takes all four in one batch.
    pub.submit(
        [claim(1), claim(2, late=True, schedule=7), claim(3, schedule=7), claim(4, late=True)], 1
    )
    assert not pub.wait_below(1, 0.6)
    assert b.sent == [] and pub.in_flight() == {1, 2, 3, 4}
    b.stall = (0, 0.0)
    state.extend(1, clock.now(), 60.0)  # a late renewal of the same epoch
    assert pub.wait_below(1, 5.0)
    assert b.sent == [1, 2, 3, 4] and b.flushed == [[1, 2, 3, 4]]
    assert pub.take_outcomes().failed == []
    pub.stop(5.0)


def test_once_stepped_down_the_queue_is_left_for_the_next_leader(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    state = leader(lifetime=0.3)
    pub = Publisher(state, broker, "r")
    broker.gate.clear()
    pub.submit([claim(i) for i in range(1, 11)], 1)
    until(lambda: broker.attempts == 1 and not state.may_publish(1))
    with caplog.at_level(logging.WARNING, logger="pg_beat.dispatch"):
        broker.gate.set()
        state.step_down()
        assert pub.wait_below(1, 5.0)
    # The send that had begun completes and is recorded; nothing after it goes out.
    assert broker.sent == [1] and pub.take_outcomes().sent == [1]
    assert pub.in_flight() == set()
    assert "9 claimed tick(s) left for the next leader" in caplog.text
    pub.stop(5.0)


def test_a_stale_epoch_never_publishes(either: Broker) -> None:
    state = leader(epoch=2)
    pub = either.publisher(state)
    pub.submit([claim(1)], 1)  # claimed under epoch 1, which is no longer ours
    pub.submit([claim(2)], 2)
    assert pub.wait_below(1, 5.0)
    assert either.sent == [2]
    pub.stop(5.0)


def test_a_failed_publish_is_retried_first_and_logged_once(
    either: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    pub = either.publisher(leader())
    either.fail = True
    with caplog.at_level(logging.INFO, logger="pg_beat.dispatch"):
        pub.submit([claim(1), claim(2)], 1)
        until(lambda: either.attempts >= 3)  # backing off between them
        assert either.sent == [] and pub.backlog == 2
        assert pub.in_flight() == {1, 2}  # still ours: never re-claimed as an orphan
        pub.submit([claim(3)], 1)
        either.fail = False
        assert pub.wait_below(1, 5.0)
    assert either.sent == [1, 2, 3]  # oldest first, each once
    failures = [r for r in caplog.records if "publishing failed" in r.getMessage()]
    assert len(failures) == 1 and "'s1'" in failures[0].getMessage()
    assert (
        "epoch 1" in failures[0].getMessage() and "broker down (test)" in failures[0].getMessage()
    )
    (back,) = [r.getMessage() for r in caplog.records if "works again" in r.getMessage()]
    assert "3 tick(s) were waiting" in back  # 1 and 2, and 3 submitted during the outage
    assert [r.levelno for r in caplog.records if "sent " not in r.getMessage()] == [
        logging.ERROR,
        logging.WARNING,
    ]  # the whole outage: two lines
    pub.stop(5.0)


def test_a_blocked_send_shows_as_a_stall_and_its_claim_stays_in_flight(broker: Broker) -> None:
    pub = Publisher(leader(), broker, "r")
    broker.gate.clear()
    before = clock.now()
    pub.submit([claim(1), claim(2)], 1)
    assert not pub.wait_below(1, 0.3)  # times out: the send hangs
    stalled = pub.stalled_since()
    assert stalled is not None and stalled <= before + 0.1
    assert clock.now() - stalled >= 0.3
    assert pub.in_flight() == {1, 2}
    assert pub.thread_id is not None and pub.thread_id != threading.get_ident()
    broker.gate.set()
    assert pub.wait_below(1, 5.0)
    assert pub.stalled_since() is None
    assert pub.in_flight() == {1, 2}  # sent, not yet taken to be marked
    assert pub.take_outcomes().sent == [1, 2] and pub.in_flight() == set()
    pub.stop(5.0)


def test_a_hook_that_raises_does_not_stop_the_thread(either: Broker) -> None:
    pub = either.publisher(leader())

    def hook(c: Claim, published: float) -> None:
        raise RuntimeError("bad hook")

    pub.on_sent = hook
    pub.submit([claim(1), claim(2)], 1)
    assert pub.wait_below(1, 5.0)
    assert either.sent == [1, 2] and pub.take_outcomes().sent == [1, 2]
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


def test_on_time_ticks_go_before_a_late_backlog_but_never_before_their_own_late_ones(
    either: Broker,
) -> None:
    pub = either.publisher(leader())
    either.gate.clear()
    pub.submit([claim(1)], 1)  # being sent while the rest is queued
    until(lambda: either.attempts == 1)
    pub.submit([claim(i, late=True) for i in range(2, 6)], 1)  # a backlog
    pub.submit([claim(6), claim(7, schedule=3)], 1)  # on time; 7 is schedule 3's, late in line
    either.gate.set()
    assert pub.wait_below(1, 5.0)
    assert either.sent == [1, 6, 2, 3, 4, 5, 7]
    pub.stop(5.0)


@pytest.mark.parametrize(
    "error",
    [TypeError("got multiple values for keyword argument 'task_id'"), ValueError("priority")],
)
def test_a_permanent_failure_is_recorded_and_the_queue_moves_on(
    either: Broker, caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    pub = either.publisher(leader())
    either.poison = {2: error}
    with caplog.at_level(logging.INFO, logger="pg_beat.dispatch"):
        pub.submit([claim(1), claim(2, schedule=9), claim(3)], 1)
        assert pub.wait_below(1, 5.0)
        either.poison = {4: error}
        pub.submit([claim(4, schedule=9)], 1)  # the same schedule, failing again: one line
        assert pub.wait_below(1, 5.0)
    assert either.sent == [1, 3]
    assert not either.batching or either.flushed == [[1, 3]]
    outcomes = pub.take_outcomes()
    assert outcomes.sent == [1, 3]
    assert [(run, sid) for run, sid, _ in outcomes.failed] == [(2, 9), (4, 9)]
    assert type(error).__name__ in outcomes.failed[0][2]
    assert pub.failed_total == 2
    lines = [r for r in caplog.records if "cannot be published" in r.getMessage()]
    assert len(lines) == 1 and "'s9'" in lines[0].getMessage()
    pub.stop(5.0)


def test_a_tick_that_fails_between_two_ticks_the_broker_took_is_poison(either: Broker) -> None:
    pub = either.publisher(leader())
    either.poison = {1: ConnectionError("looks transient")}
    pub.submit([claim(1), claim(2), claim(3)], 1)
    assert pub.wait_below(1, 10.0)
    assert either.sent == [2, 3]
    outcomes = pub.take_outcomes()
    assert [run for run, _, _ in outcomes.failed] == [1]
    assert "the broker took the ticks tried right before and after it" in outcomes.failed[0][2]
    assert "looks transient" in outcomes.failed[0][2]
    pub.stop(5.0)


class Recovering:
    """A one-by-one broker that fails its first ``failures`` calls, then works; records the
    run id of every call."""

    def __init__(self, failures: int, fail_again: tuple[int, ...] = ()) -> None:
        self.failures = failures
        self.fail_again = set(fail_again)  # calls (1-based) that fail after the recovery
        self.calls: list[int] = []

    def __call__(self, c: Claim, epoch: int) -> None:
        self.calls.append(c.run_id)
        if len(self.calls) <= self.failures or len(self.calls) in self.fail_again:
            raise ConnectionError("broker down (test)")


def test_a_broker_that_recovers_between_the_tries_of_a_suspect_fails_nothing() -> None:
    """Counter-case of the poison rule: the broker fails 3 times, then works. The suspect's
    probe goes out, and the suspect is tried again, and goes out: nothing is failed."""
    send = Recovering(failures=3)
    pub = Publisher(leader(), send, "r")
    pub.submit([claim(1), claim(2), claim(3)], 1)
    assert pub.wait_below(1, 10.0)
    assert send.calls == [1, 1, 1, 2, 1, 3]
    outcomes = pub.take_outcomes()
    assert outcomes.failed == [] and sorted(outcomes.sent) == [1, 2, 3]
    pub.stop(5.0)


def test_a_broker_that_flaps_between_the_tries_of_a_suspect_fails_nothing() -> None:
    """Counter-case: the probe goes out, then the broker fails the suspect's retry and the next
    probe too. The suspect failed right after a success, but not between two: not poison."""
    send = Recovering(failures=3, fail_again=(5, 6))
    pub = Publisher(leader(), send, "r")
    pub.submit([claim(1), claim(2), claim(3)], 1)
    assert pub.wait_below(1, 10.0)
    assert send.calls[:6] == [1, 1, 1, 2, 1, 3]  # 5th and 6th calls fail: the broker again
    outcomes = pub.take_outcomes()
    assert outcomes.failed == [] and sorted(outcomes.sent) == [1, 2, 3]
    assert sorted(send.calls[6:]) == sorted(set(send.calls[6:]))  # each sent once after
    pub.stop(5.0)


@pytest.mark.parametrize(
    "error",
    [ValueError("looks like bad options"), KeyError("x"), ConnectionError("reset")],
    ids=["ValueError", "KeyError", "ConnectionError"],
)
def test_an_error_of_the_whole_batch_fails_no_tick(error: BaseException) -> None:
    """A flush that raises, whatever the type, is the batch's: every tick is retried."""
    b = Broker(batching=True)
    flushes = 0
    real_flush = b.flush

    def flush() -> None:
        nonlocal flushes
        flushes += 1
        if flushes <= 2:
            raise error
        real_flush()

    b.flush = flush  # type: ignore[method-assign]
    pub = b.publisher(leader(), batch_max=5)
    pub.submit([claim(i) for i in range(1, 6)], 1)
    assert pub.wait_below(1, 10.0)
    assert sorted(b.sent) == [1, 2, 3, 4, 5] and len(b.sent) == 5
    assert pub.take_outcomes().failed == [] and pub.failed_total == 0
    pub.stop(5.0)


def test_a_batch_that_cannot_be_opened_fails_no_tick() -> None:
    b = Broker(batching=True)
    opens = 0

    def open_batch() -> AbstractContextManager[Broker] | None:
        nonlocal opens
        opens += 1
        if opens <= 4:
            raise ValueError("no channel yet")
        return b.open_batch()

    pub = Publisher(leader(), b, "r", open_batch, batch_max=5)
    pub.submit([claim(i) for i in range(1, 6)], 1)
    assert pub.wait_below(1, 10.0)
    assert b.sent == [1, 2, 3, 4, 5]
    assert pub.take_outcomes().failed == []
    pub.stop(5.0)


def test_a_channel_error_on_every_tick_is_an_outage_not_a_failure(broker: Broker) -> None:
    """A permission or routing error the broker gives every tick (AMQP 403 after a grant was
    revoked) fails nothing: the ticks wait until it is mended."""
    from amqp.exceptions import AccessRefused

    pub = Publisher(leader(), broker, "r")
    refused = AccessRefused("ACCESS_REFUSED - write access to exchange 'celery' refused")
    broker.poison = {i: refused for i in range(1, 5)}
    pub.submit([claim(i) for i in range(1, 5)], 1)
    until(lambda: broker.attempts >= 10)
    assert pub.take_outcomes().failed == [] and pub.failing_since is not None
    assert "AccessRefused" in (pub.failing_error or "")
    broker.poison = {}
    assert pub.wait_below(1, 10.0)
    assert broker.sent == [1, 2, 3, 4] and pub.take_outcomes().failed == []
    assert pub.failing_since is None
    pub.stop(5.0)


def test_an_outage_fails_nothing_and_keeps_the_order(either: Broker) -> None:
    pub = either.publisher(leader())
    either.fail = True
    pub.submit([claim(i) for i in range(1, 5)], 1)
    until(lambda: either.attempts >= 8)  # several rounds of probing, all failing
    assert pub.backlog == 4 and pub.take_outcomes().failed == []
    either.fail = False
    assert pub.wait_below(1, 10.0)
    assert either.sent == [1, 2, 3, 4]
    assert pub.take_outcomes().failed == []
    pub.stop(5.0)


def test_a_recovered_schedule_is_reported_once(either: Broker) -> None:
    pub = either.publisher(leader())
    pub.mark_failing({5})
    pub.submit([claim(1, schedule=5), claim(2, schedule=5)], 1)
    assert pub.wait_below(1, 5.0)
    assert pub.take_outcomes().recovered == [5]
    pub.stop(5.0)


def test_retrying_a_failing_broker_is_progress_and_an_outage(either: Broker) -> None:
    """Every call that returns is progress (invariant 15): a broker that fails every call is an
    outage, shown by failing_since, never a stall for the watchdog to act on."""
    pub = either.publisher(leader())
    either.fail = True
    before = clock.now()
    pub.submit([claim(1)], 1)
    until(lambda: either.attempts >= 6)  # about 2 s of capped back-off
    stalled = pub.stalled_since()
    assert stalled is not None and clock.now() - stalled < 1.5
    since = pub.failing_since
    assert since is not None and before <= since <= before + 0.5
    assert "broker down (test)" in (pub.failing_error or "")
    either.fail = False
    assert pub.wait_below(1, 5.0)
    assert pub.stalled_since() is None and pub.failing_since is None
    pub.stop(5.0)


def test_the_thread_survives_an_unexpected_error_and_loses_nothing(broker: Broker) -> None:
    pub = Publisher(leader(), broker, "r")
    calls = 0
    real = pub.sender.publish

    def publish(items: list[Any], send: Any) -> list[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the publish path (test)")
        return real(items, send)

    pub.sender.publish = publish  # type: ignore[method-assign]
    pub.submit([claim(1), claim(2)], 1)
    assert pub.wait_below(1, 5.0)
    assert broker.sent == [1, 2] and pub.alive
    pub.stop(5.0)


def test_each_tick_sent_is_logged_and_a_burst_is_folded(
    either: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    pub = either.publisher(leader())
    with caplog.at_level(logging.INFO, logger="pg_beat.dispatch"):
        pub.submit([claim(1)], 1)
        assert pub.wait_below(1, 5.0)
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sent ")]
        assert line == "sent 's1' (t.task) due 00:00:01Z, task id "
        caplog.clear()
        pub.submit([claim(i) for i in range(2, 2002)], 1)  # a burst of 2,000 ticks
        assert pub.wait_below(1, 20.0)
        time.sleep(1.1)
        pub.log.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 40, len(lines)
    one_by_one = [m for m in lines if m.startswith("sent 's")]
    folded = [m for m in lines if m.startswith("sent ") and "more tick(s)" in m]
    assert one_by_one and folded
    counted = sum(int(m.split()[1]) for m in folded)
    assert len(one_by_one) + counted == 2000  # every tick accounted for
    pub.stop(5.0)


def test_a_poison_tick_costs_no_outage_lines_and_no_broker_down_state(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A tick the broker refuses while it takes the others (an AMQP 404 for one schedule's
    exchange) is settled by the poison rule in well under a second: one line for its failure,
    none saying the broker is down or back, and the broker never reported failing."""
    pub = Publisher(leader(), broker, "r")
    seen_failing: list[float] = []
    real = broker.__call__

    def watching(c: Claim, epoch: int) -> None:
        if pub.ledger.down_since is not None:
            seen_failing.append(pub.ledger.down_since)
        real(c, epoch)

    pub.send = watching
    broker.poison = {2: ConnectionError("NOT_FOUND - no exchange 'x' (test)")}
    with caplog.at_level(logging.INFO, logger="pg_beat.dispatch"):
        pub.submit([claim(1), claim(2, schedule=9), claim(3), claim(4)], 1)
        assert pub.wait_below(1, 10.0)
    assert broker.sent == [1, 3, 4] and seen_failing == []
    lines = [r.getMessage() for r in caplog.records if not r.getMessage().startswith("sent ")]
    assert len(lines) == 1 and "cannot be published" in lines[0], lines
    pub.stop(5.0)


def test_the_next_ticks_of_a_poisoned_schedule_are_suspects_at_once(broker: Broker) -> None:
    """Its last tick was poison: the next one that fails is set aside at once (no three
    back-offs first), and parked only between two ticks the broker took."""
    pub = Publisher(leader(), broker, "r")
    refused = ConnectionError("NOT_FOUND - no exchange 'x' (test)")
    broker.poison = {2: refused, 5: refused}
    pub.submit([claim(1), claim(2, schedule=9), claim(3), claim(4)], 1)
    assert pub.wait_below(1, 10.0)
    before = broker.attempts
    pub.submit([claim(5, schedule=9), claim(6), claim(7)], 1)
    assert pub.wait_below(1, 10.0)
    assert broker.attempts - before == 4  # 5 fails, 6 goes out, 5 fails again, 7 goes out
    assert [run for run, _, _ in pub.take_outcomes().failed] == [2, 5]
    pub.stop(5.0)
