"""A pg_beat replica's parts run in the test process: a real watchdog winning a real lease."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pg_beat import store
from pg_beat.config import Settings
from pg_beat.dispatch.loop import Dispatcher
from pg_beat.leadership.lease import LeaderState
from pg_beat.leadership.watchdog import Watchdog
from pg_beat.publish import brokerhealth
from pg_beat.publish.ticks import Claim


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "replica_name": "test-replica",
        "lease_ttl": 3.0,
        "heartbeat_interval": 0.2,
        "hang_timeout": 30.0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Outbox:
    """Collects what the dispatcher publishes (the broker boundary, not the database)."""

    sent: list[tuple[Claim, int]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, claim: Claim, epoch: int) -> None:
        if self.fail:
            raise ConnectionError("broker down (test)")
        self.sent.append((claim, epoch))

    def names(self) -> list[str]:
        return [c.schedule for c, _ in self.sent]


@dataclass
class Replica:
    settings: Settings
    state: LeaderState
    dispatcher: Dispatcher
    watchdog: Watchdog
    outbox: Outbox

    def broker_health(self) -> brokerhealth.Health:
        return _broker_health(self.state, self.dispatcher)

    def wait_leader(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            epoch = self.state.epoch
            if epoch is not None:
                return epoch
            time.sleep(0.02)
        raise AssertionError(f"replica {self.settings.replica_name} did not become leader")

    def run_for(self, seconds: float) -> None:
        """Drive the dispatch loop as ``Scheduler.tick`` does, for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            delay = self.dispatcher.step()
            self.dispatcher.wait(min(delay, max(0.0, deadline - time.monotonic())))
        self.settle()

    def run_until(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            delay = self.dispatcher.step()
            self.dispatcher.wait(min(delay, 0.05))
        self.settle()

    def step(self) -> float:
        """One step, then what it claimed is sent and recorded before the test looks."""
        delay = self.dispatcher.step()
        self.settle()
        return delay

    def settle(self, timeout: float = 5.0) -> None:
        """Let the publisher thread send what was claimed, and record it as sent: tests look
        at the outbox and the run rows as a whole. Not while the broker is down on purpose:
        the publisher retries until it is back."""
        if not self.outbox.fail:
            self.dispatcher.drain(timeout)


def _broker_health(state: LeaderState, dispatcher: Dispatcher) -> brokerhealth.Health:
    """As ``Scheduler.broker_health``, with no standby probe (the outbox is no broker)."""
    publisher = dispatcher.publisher if state.epoch is not None else None
    return brokerhealth.current(brokerhealth.UNKNOWN, publisher)


@contextmanager
def replica(url: str, *, lead: bool = True, **overrides: Any) -> Iterator[Replica]:
    settings = settings_for(url, **overrides)
    state = LeaderState()
    outbox = Outbox()
    # One Connector, as in a beat process: its sessions share one token in their names.
    connector = store.connections.Connector(settings)
    dispatcher = Dispatcher(settings, state, outbox, connector)
    watchdog = Watchdog(
        settings,
        state,
        lambda: dispatcher.progress_at,
        dispatch_thread=lambda: dispatcher.thread_id,
        dispatch_backend=lambda: dispatcher.backend_pid,
        exit_process=lambda code: None,
        broker_health=lambda: _broker_health(state, dispatcher),
        connector=connector,
    )
    watchdog.start()
    rep = Replica(settings, state, dispatcher, watchdog, outbox)
    try:
        if lead:
            rep.wait_leader()
        yield rep
    finally:
        watchdog.stop()
        watchdog.join(timeout=10)
        watchdog.release()
        watchdog.close()
        dispatcher.close()
