"""A replica's view of its own broker: a standby's probes, a leader's publisher."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from pg_beat.leadership import clock
from pg_beat.publish import brokerhealth
from pg_beat.publish.brokerhealth import Health, Prober


class Broker:
    def __init__(self) -> None:
        self.down = False
        self.connects = 0

    def connect(self) -> None:
        self.connects += 1
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")


def test_a_probe_records_each_outcome_and_logs_each_change_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Broker()
    prober = Prober(broker.connect, "r1")
    assert prober.health == brokerhealth.UNKNOWN and not prober.health.working
    assert prober.due()
    with caplog.at_level(logging.INFO, logger="pg_beat.broker"):
        assert prober.probe().working
        assert not prober.due()  # the next one PROBE_EVERY seconds later
        broker.down = True
        first = prober.probe()
        second = prober.probe()
        broker.down = False
        assert prober.probe().working
    assert first.failing_since is not None and second.failing_since == first.failing_since
    assert "Connection refused" in (second.error or "")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # down once, up once: not once per probe
    assert "not reachable from this replica (replica r1)" in lines[0]
    assert "reachable again" in lines[1]


@dataclass
class Publishing:
    failing_since: float | None = None
    failing_error: str | None = None
    sent_total: int = 0
    backlog: int = 0


def test_a_leader_reports_what_its_publisher_saw_and_before_any_publish_its_last_probe() -> None:
    probed = Health(None, None, 5.0)
    assert brokerhealth.current(probed, None) is probed  # a standby: its probe
    fresh = brokerhealth.current(probed, Publishing(backlog=3))
    assert fresh == Health(None, None, 5.0, 3)  # nothing published yet: the probe stands
    since = clock.now() - 12
    failing = brokerhealth.current(probed, Publishing(since, "ConnectionError: x", 10, 7))
    assert failing.failing_since == since and failing.waiting == 7 and not failing.working
    assert brokerhealth.current(probed, Publishing(sent_total=10)).working
