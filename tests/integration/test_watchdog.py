"""The watchdog against real PostgreSQL: hangs, dead and hung holders, missing privileges."""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest
from support.inproc import replica
from support.pg import libpq_url
from support.waiting import wait_for

from pg_beat.api import ScheduleManager


def lease(url: str) -> tuple[int, str | None, bool]:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(
            "SELECT epoch, holder, expires_at > clock_timestamp() FROM pg_beat_leases"
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_a_stuck_loop_is_reported_with_its_blocker_and_the_lease_released(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", every=3600)
    exits: list[int] = []
    with (
        psycopg.connect(libpq_url(db_url)) as holder,
        psycopg.connect(libpq_url(db_url), autocommit=True) as victim,
    ):
        holder.execute("SELECT * FROM pg_beat_schedules WHERE name = 's' FOR UPDATE")
        stuck = threading.Thread(
            target=lambda: victim.execute("UPDATE pg_beat_schedules SET task = 'x' WHERE name='s'"),
            daemon=True,
        )
        stuck.start()
        holder_pid = holder.info.backend_pid
        with replica(db_url, hang_timeout=1.0, on_hang="exit") as rep:
            rep.watchdog.exit_process = exits.append
            # The loop's backend is the blocked session, the loop thread is the blocked thread.
            rep.watchdog.dispatch_backend = lambda: victim.info.backend_pid
            rep.watchdog.dispatch_thread = lambda: stuck.ident
            epoch = rep.wait_leader()
            with caplog.at_level(logging.CRITICAL, logger="pg_beat.watchdog"):
                wait_for(lambda: exits, timeout=10)
            assert exits == [70]
            assert rep.state.epoch is None
        holder.rollback()
        stuck.join(timeout=5)
    text = caplog.text
    assert "dispatch loop stuck" in text
    assert f"blocked by pid {holder_pid}" in text
    assert "UPDATE pg_beat_schedules" in text  # what the stuck backend runs
    assert lease(db_url)[:2] == (epoch, "test-replica") and lease(db_url)[2] is False


def test_a_publish_stuck_while_the_loop_runs_on_is_a_hang(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop keeps claiming and waking; the publisher thread is stuck in the broker."""
    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", every=0.2)
    exits: list[int] = []
    release = threading.Event()

    def broker_never_answers(claim: object, epoch: int) -> None:
        release.wait(30)

    try:
        with replica(db_url, hang_timeout=1.0, on_hang="exit") as rep:
            rep.watchdog.exit_process = exits.append
            rep.dispatcher.publisher.send = broker_never_answers
            epoch = rep.wait_leader()
            deadline = time.monotonic() + 15
            with caplog.at_level(logging.CRITICAL, logger="pg_beat.watchdog"):
                while not exits:
                    assert time.monotonic() < deadline, "the stuck publisher went unnoticed"
                    rep.dispatcher.wait(min(rep.dispatcher.step(), 0.05))
            assert exits == [70]
            assert rep.state.epoch is None
    finally:
        release.set()
    text = caplog.text
    assert "dispatch loop stuck" in text
    assert "broker_never_answers" in text  # the stack is the publisher thread's
    assert lease(db_url)[:2] == (epoch, "test-replica") and lease(db_url)[2] is False


def test_a_renewal_blocked_by_a_row_lock_is_logged_as_blocked_not_unreachable(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="pg_beat.watchdog"),
        replica(db_url, lock_timeout=0.3) as rep,
        psycopg.connect(libpq_url(db_url)) as admin,
    ):
        epoch = rep.wait_leader()
        admin.execute("SELECT * FROM pg_beat_leases FOR UPDATE")  # an admin's open transaction
        wait_for(lambda: not rep.state.holds(epoch), timeout=10)
        admin.rollback()
    text = caplog.text
    assert "lease statement blocked" in text
    assert "a lease statement was blocked (sqlstate 55P03)" in text
    assert "database unreachable" not in text


def test_standby_takes_over_when_the_leaders_backend_is_terminated(db_url: str) -> None:
    with (
        replica(db_url, replica_name="one") as one,
        replica(db_url, replica_name="two", lead=False) as two,
    ):
        first = one.wait_leader()
        with psycopg.connect(libpq_url(db_url), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (one.watchdog.backend_pid,))
        wait_for(
            lambda: two.state.epoch is not None or one.state.epoch not in (None, first),
            timeout=10,
            what="a takeover",
        )
        assert lease(db_url)[0] > first
        # The old leader notices at its next renewal and stops publishing under its epoch.
        wait_for(lambda: not one.state.may_publish(first), timeout=5)


def test_standby_terminates_a_hung_holder(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with replica(db_url, replica_name="one") as one:
        first = one.wait_leader()
        # Freeze the leader's watchdog with its session (and the lock) still open.
        one.watchdog.stop()
        one.watchdog.join(timeout=5)
        with (
            caplog.at_level(logging.WARNING, logger="pg_beat.watchdog"),
            replica(db_url, replica_name="two", lead=False) as two,
        ):
            started = time.monotonic()
            second = two.wait_leader(timeout=15)
            took = time.monotonic() - started
        assert second > first
        assert took < one.settings.lease_ttl + 5
        assert "hung" in caplog.text and "still held the lock: terminated it" in caplog.text


def test_on_hang_release_gives_the_lease_up_and_stays_up(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """pg_beat_on_hang = release: no exit; the lease is released at once for a standby, and
    this replica leads again only once its own loop moves."""
    exits: list[int] = []
    release = threading.Event()

    def broker_never_answers(claim: object, epoch: int) -> None:
        release.wait(30)

    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", every=0.2)
    try:
        with replica(db_url, hang_timeout=1.0, on_hang="release") as rep:
            rep.watchdog.exit_process = exits.append
            rep.dispatcher.publisher.send = broker_never_answers
            first = rep.wait_leader()
            deadline = time.monotonic() + 15
            with caplog.at_level(logging.INFO, logger="pg_beat.watchdog"):
                while rep.state.holds(first):
                    assert time.monotonic() < deadline, "the stuck publisher went unnoticed"
                    rep.dispatcher.wait(min(rep.dispatcher.step(), 0.05))
            with psycopg.connect(libpq_url(db_url)) as conn:
                released = conn.execute("SELECT released_at FROM pg_beat_leases").fetchone()
            assert released is not None and released[0] is not None  # handed over at once
            time.sleep(1.5)
            assert rep.state.epoch is None  # its loop is still stuck: it does not lead
            release.set()  # the broker answers again
            rep.run_until(lambda: rep.state.epoch is not None and rep.state.epoch > first, 15)
    finally:
        release.set()
    assert exits == []
    assert "dispatch loop stuck" in caplog.text and "released the lease" in caplog.text


def test_replica_rows_not_seen_for_long_are_pruned(db_url: str) -> None:
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pg_beat_replicas (group_name, name, host, pid, role, version, "
            "started_at, last_seen_at) VALUES "
            "('default', 'long-gone', 'h', 1, 'standby', '0', now() - interval '2 hours', "
            " now() - interval '1 hour'), "
            "('default', 'just-seen', 'h', 2, 'standby', '0', now(), now())"
        )
    with replica(db_url, replica_stale_after=60.0) as rep:
        rep.wait_leader()

        def names() -> set[str]:
            with psycopg.connect(libpq_url(db_url)) as conn:
                return {r[0] for r in conn.execute("SELECT name FROM pg_beat_replicas")}

        wait_for(lambda: "long-gone" not in names(), timeout=5)
        assert names() == {"just-seen", "test-replica"}
