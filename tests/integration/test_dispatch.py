"""The dispatch loop against real PostgreSQL: grid, edits by SQL, bad rows, fencing, orphans."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from support.env import require_module
from support.inproc import replica, settings_for
from support.pg import libpq_url as libpq

from pg_beat import store
from pg_beat.api import ScheduleInfo, ScheduleManager
from pg_beat.publish.ticks import Claim, task_id_for


def sql(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def get(url: str, name: str) -> ScheduleInfo:
    with ScheduleManager(url) as api:
        return api.get(name)


def create_due_now(url: str, name: str, task: str, **kwargs: object) -> None:
    """A new schedule whose first tick is due at once (a new interval waits one interval, as
    in Celery)."""
    with ScheduleManager(url) as api:
        api.create(name, task, **kwargs)  # type: ignore[arg-type]
        api.run_now(name)


def runs(url: str, name: str) -> list[tuple[datetime, str, int]]:
    return [
        (r[0], str(r[1]), int(r[2]))  # type: ignore[arg-type]
        for r in sql(
            url,
            "SELECT due_at, status, epoch FROM pg_beat_runs WHERE schedule_name = %s "
            "ORDER BY due_at",
            name,
        )
    ]


def test_interval_stays_on_its_grid_and_each_tick_is_claimed_once(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("tick", "t.tick", every=0.2)
    with replica(db_url) as rep:
        rep.run_until(lambda: len(rep.outbox.sent) >= 10)
    rows = runs(db_url, "tick")
    assert len(rows) >= 10
    dues = [r[0] for r in rows]
    steps = {round((b - a).total_seconds(), 6) for a, b in pairwise(dues)}
    assert steps == {0.2}, steps  # on the grid: no drift, no gaps, no repeats
    assert all(status == "sent" for _, status, _ in rows)
    sent = rep.outbox.sent
    assert [c.due_at for c, _ in sent] == dues
    assert all(c.task_id == task_id_for("default", "tick", c.due_at) for c, _ in sent)
    assert get(db_url, "tick").total_run_count == len(rows)


def test_plain_sql_insert_and_edit_take_effect_without_restart(db_url: str) -> None:
    with replica(db_url) as rep:
        rep.run_for(0.3)
        sql(
            db_url,
            "INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds) "
            "VALUES ('from-sql', 't.sql', 'interval', 0.5)",
        )
        rep.run_until(lambda: "from-sql" in rep.outbox.names(), timeout=5)
        # Changing the definition re-plans it: 3600 s becomes 0.1 s at once.
        sql(db_url, "UPDATE pg_beat_schedules SET interval_seconds = 0.1 WHERE name = 'from-sql'")
        rep.run_until(lambda: rep.outbox.names().count("from-sql") >= 4, timeout=5)


def test_a_notify_wakes_the_sleeping_loop(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("later", "t.later", every=3600)
    with replica(db_url) as rep:
        rep.run_for(0.3)
        rep.outbox.sent.clear()
        delay = rep.step()
        assert delay > 0.1  # nothing due: it would sleep
        # Later than the 0.5 s a failed LISTEN sleeps before trying again: only a NOTIFY can
        # end this wait between 0.7 s and the 5 s asked for.
        threading.Timer(
            0.7,
            sql,
            (db_url, "UPDATE pg_beat_schedules SET next_run_at = now() WHERE name = 'later'"),
        ).start()
        started = time.monotonic()
        rep.dispatcher.wait(5.0)
        woke_after = time.monotonic() - started
        assert 0.65 < woke_after < 2.0, woke_after
        assert rep.dispatcher.keeper._listen is not None  # it did LISTEN
        rep.step()
        assert rep.outbox.names() == ["later"]


def test_behind_a_transaction_pool_edits_are_polled(db_url: str) -> None:
    """No LISTEN in transaction-pooling mode: an edit is seen within pg_beat_poll_interval."""
    with ScheduleManager(db_url) as api:
        api.create("later", "t.later", every=3600)
    with replica(db_url, pool_mode="transaction", poll_interval=0.5) as rep:
        assert rep.dispatcher.connector.transaction_pooled
        rep.run_for(0.3)
        assert rep.step() > 0.1  # nothing due for an hour: it would sleep
        sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = now() WHERE name = 'later'")
        started = time.monotonic()
        rep.dispatcher.wait(5.0)
        assert time.monotonic() - started < 1.0  # the poll interval, not the 5 s asked for
        rep.step()
        assert rep.outbox.names() == ["later"]
        assert rep.dispatcher.keeper._listen is None  # polled, never LISTENed
        assert lease_row(db_url)[2] is None  # the lease records no session to watch


def test_a_row_broken_by_sql_is_parked_and_the_others_keep_running(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("good", "t.good", every=0.1)
        api.create("bad", "t.bad", crontab="* * * * *")
    sql(db_url, "UPDATE pg_beat_schedules SET cron_minute = '61' WHERE name = 'bad'")

    def last_error() -> object:
        return sql(db_url, "SELECT last_error FROM pg_beat_schedules WHERE name = 'bad'")[0][0]

    with replica(db_url) as rep:
        rep.run_until(lambda: rep.outbox.names().count("good") >= 5 and last_error() is not None)
    error = last_error()
    assert "cron_minute" in str(error) and "61" in str(error)
    assert rep.outbox.names().count("good") >= 5
    assert "bad" not in rep.outbox.names()
    # Fixing the row by SQL clears the error and plans it again.
    sql(db_url, "UPDATE pg_beat_schedules SET cron_minute = '*' WHERE name = 'bad'")
    row = sql(db_url, "SELECT last_error, next_run_at FROM pg_beat_schedules WHERE name = 'bad'")
    assert row[0][0] is None


def test_one_off_runs_once_and_disables_itself(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("once", "t.once", every=0.1, one_off=True)
    with replica(db_url) as rep:
        rep.run_until(lambda: rep.outbox.names() == ["once"])
        assert get(db_url, "once").enabled is False  # in the claim's own transaction
        rep.run_for(0.3)  # three of its intervals: no second tick
    assert rep.outbox.names() == ["once"]


def test_end_time_stops_the_schedule(db_url: str) -> None:
    end = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    with ScheduleManager(db_url) as api:
        api.create("short", "t.short", every=0.1, end_time=end)
    with replica(db_url) as rep:
        rep.run_until(lambda: not get(db_url, "short").enabled)  # past its end: disabled
    assert all(c.due_at <= end for c, _ in rep.outbox.sent)
    assert 3 <= len(rep.outbox.sent) <= 7


def test_start_time_in_the_future_waits(db_url: str) -> None:
    start = datetime.now(timezone.utc) + timedelta(seconds=0.6)
    with ScheduleManager(db_url) as api:
        api.create("later", "t.later", every=0.2, start_time=start)
    with replica(db_url) as rep:
        rep.run_until(lambda: bool(rep.outbox.sent))
    assert min(c.due_at for c, _ in rep.outbox.sent) >= start


@pytest.mark.parametrize(
    ("policy", "late_ticks"),
    [("catch_up", 10), ("fire_once", 1), ("skip", 0)],
)
def test_misfire_policy_after_downtime(db_url: str, policy: str, late_ticks: int) -> None:
    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", every=60, misfire_policy=policy, catch_up_limit=10)
    # Its grid is at :30 of a minute; it last ran an hour ago: 60 ticks were missed while no
    # beat ran, the oldest due 59.5 minutes ago.
    (missed,) = sql(
        db_url,
        "UPDATE pg_beat_schedules SET next_run_at = now() - interval '3570 s', "
        "last_due_at = now() - interval '3630 s' WHERE name = 's' RETURNING next_run_at",
    )[0]
    assert isinstance(missed, datetime)
    with replica(db_url) as rep:
        # Resolved (in one claim) once the schedule is due after now again.
        rep.run_until(lambda: (get(db_url, "s").next_run_at or missed) > datetime.now(timezone.utc))
    grid = [missed + timedelta(seconds=60 * k) for k in range(61)]
    sent = [c.due_at for c, _ in rep.outbox.sent]
    # catch_up: the oldest missed ticks first, at most the limit; fire_once: the oldest, once;
    # skip: none. Nothing is sent twice, all on the grid.
    assert sent == grid[:late_ticks]
    recorded = runs(db_url, "s")
    assert [status for _, status, _ in recorded] == ["sent"] * late_ticks + (
        ["skipped"] if policy == "skip" else []
    )
    # The next run is back on the grid, after now.
    next_run = get(db_url, "s").next_run_at
    assert next_run is not None and next_run > datetime.now(timezone.utc) - timedelta(seconds=1)
    assert next_run in grid or (next_run - missed).total_seconds() % 60 == 0
    assert next_run - timedelta(seconds=60) < datetime.now(timezone.utc)


def test_a_row_locked_by_another_session_delays_only_that_schedule(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("locked", "t.locked", every=0.1)
        api.create("free", "t.free", every=0.1)
    with replica(db_url) as rep:
        rep.run_for(0.3)
        with psycopg.connect(libpq(db_url)) as admin:  # an admin's open transaction in psql
            admin.execute("SELECT * FROM pg_beat_schedules WHERE name = 'locked' FOR UPDATE")
            rep.outbox.sent.clear()
            rep.run_until(lambda: rep.outbox.names().count("free") >= 6)
            assert "locked" not in rep.outbox.names()
            admin.rollback()
        rep.outbox.sent.clear()
        rep.run_until(lambda: "locked" in rep.outbox.names())


def test_a_deposed_leader_claims_nothing(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", every=0.1)
    with replica(db_url) as rep:
        epoch = rep.wait_leader()
        rep.run_for(0.3)
        # Someone else takes the lease (e.g. after judging us hung): the epoch moves on.
        sql(db_url, "UPDATE pg_beat_leases SET epoch = epoch + 1, holder = 'other'")
        before = len(runs(db_url, "s"))
        rep.run_for(0.5)
        assert len(runs(db_url, "s")) == before
        # Its next claim or renewal found the epoch gone: it no longer publishes under it.
        assert rep.state.may_publish(epoch) is False


def test_past_the_local_deadline_nothing_is_published(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", every=0.1)
    with replica(db_url) as rep:
        epoch = rep.wait_leader()
        rep.watchdog.stop()  # renewals stop, as when the process is paused
        rep.watchdog.join(timeout=5)
        wait_until(lambda: rep.state.epoch is None, timeout=rep.settings.lease_ttl + 2)
        assert rep.state.may_publish(epoch) is False
        rep.outbox.sent.clear()
        rep.step()
        assert rep.outbox.sent == []


def test_unsent_claims_of_a_dead_epoch_are_republished_with_the_same_task_id(
    db_url: str,
) -> None:
    create_due_now(db_url, "s", "t.s", every=3600)
    with replica(db_url, replica_name="first") as first:
        first.outbox.fail = True  # the broker is down: claimed, never sent
        first.run_until(lambda: len(runs(db_url, "s")) == 1)
        first_epoch = first.wait_leader()
    claimed = runs(db_url, "s")
    assert [(status, epoch) for _, status, epoch in claimed] == [("claimed", first_epoch)]
    with replica(db_url, replica_name="second") as second:
        second.run_until(lambda: bool(second.outbox.sent), timeout=10)
        claim, epoch = second.outbox.sent[0]
        assert epoch > first_epoch and claim.epoch == first_epoch
        assert claim.task_id == task_id_for("default", "s", claimed[0][0])
    assert [status for _, status, _ in runs(db_url, "s")] == ["sent"]


def lease_row(url: str) -> tuple[int, str | None, int | None, bool]:
    (row,) = sql(
        url,
        "SELECT epoch, holder, backend_pid, expires_at > clock_timestamp() FROM pg_beat_leases",
    )
    return row  # type: ignore[return-value]


def test_a_leader_that_stepped_down_hands_its_unsent_claims_over_at_once(db_url: str) -> None:
    """Without this the next leader waits for the old lease to expire (here 30 s)."""
    create_due_now(db_url, "s", "t.s", every=3600)
    with replica(db_url, replica_name="first", lease_ttl=30.0) as first:
        first_epoch = first.wait_leader()
        first.outbox.fail = True  # claimed, never sent
        first.run_until(lambda: len(runs(db_url, "s")) == 1)
        assert [status for _, status, _ in runs(db_url, "s")] == ["claimed"]
        first.state.step_down()  # as the watchdog does when it loses the lease connection
        first.run_until(lambda: not lease_row(db_url)[3])  # its loop gives the epoch up
        epoch, holder, backend, fresh = lease_row(db_url)
        assert (epoch, holder, fresh) == (first_epoch, "first", False)  # expired
        assert backend is not None  # kept: a standby may still have to terminate that session
        started = time.monotonic()
        with replica(db_url, replica_name="second", lease_ttl=30.0) as second:
            second.run_until(lambda: bool(second.outbox.sent), timeout=10)
            took = time.monotonic() - started
            claim, epoch = second.outbox.sent[0]
    assert epoch > first_epoch and claim.epoch == first_epoch
    assert took < 10, took
    assert first.outbox.sent == []
    assert [status for _, status, _ in runs(db_url, "s")] == ["sent"]


def test_past_the_deadline_alone_the_epoch_is_not_given_up(db_url: str) -> None:
    """A renewal may still bring the epoch back: its claims are kept, not handed over."""
    create_due_now(db_url, "s", "t.s", every=3600)
    with replica(db_url) as rep:
        epoch = rep.wait_leader()
        rep.outbox.fail = True
        rep.run_until(lambda: len(runs(db_url, "s")) == 1)
        rep.watchdog.stop()  # renewals stop, as when they are slow: the deadline passes
        rep.watchdog.join(timeout=5)
        wait_until(lambda: rep.state.epoch is None, timeout=rep.settings.lease_ttl + 2)
        assert rep.state.holds(epoch)
        rep.outbox.fail = False
        assert not rep.dispatcher.publisher.wait_below(1, 0.5)  # kept, and not sent
        assert rep.outbox.sent == []
        rep.run_for(0.3)
        assert lease_row(db_url)[2] is not None  # still ours: not released
        assert sql(db_url, "SELECT count(*) FROM pg_beat_leader_terms") == [(1,)]


class RenewalGate:
    """Holds the watchdog's renewals while closed, as a paused or starved thread would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.open.set()
        renew = store.lease.renew

        def gated(*args: Any, **kwargs: Any) -> Any:
            self.open.wait()
            return renew(*args, **kwargs)

        monkeypatch.setattr(store.lease, "renew", gated)


@pytest.mark.parametrize("pause", [2.4, 3.6])
def test_a_pause_past_the_local_deadline_loses_no_tick_with_one_replica(
    db_url: str, monkeypatch: pytest.MonkeyPatch, pause: float
) -> None:
    """Deadline 2 s and lease 3 s after a renewal. Paused 2.4 s: the same epoch renews and
    sends what it held. Paused 3.6 s: the lease expired, cannot be renewed, and is taken again
    as a new epoch, which re-publishes the old one's unsent claims (all of them: catch_up)."""
    gate = RenewalGate(monkeypatch)
    create_due_now(db_url, "s", "t.s", every=0.2, misfire_policy="catch_up")
    with replica(db_url, lease_ttl=3.0, heartbeat_interval=0.2, publish_margin=1.0) as rep:
        first = rep.wait_leader()
        rep.run_for(0.5)
        rep.outbox.fail = True  # ticks are claimed, not sent...
        rep.run_for(0.5)
        gate.open.clear()  # ...and renewals stop
        rep.run_for(pause)
        assert rep.state.epoch is None and rep.state.holds(first)
        rep.outbox.fail = False
        gate.open.set()
        rep.wait_leader()
        rep.run_for(1.5)
        epochs = {epoch for _, epoch in rep.outbox.sent}
    assert (epochs == {first}) is (pause < 3.0), epochs
    recorded = runs(db_url, "s")
    dues = [due for due, _, _ in recorded]
    assert [c.due_at for c, _ in rep.outbox.sent if c.due_at in set(dues)] == sorted(
        set(c.due_at for c, _ in rep.outbox.sent)
    )
    assert len({c.due_at for c, _ in rep.outbox.sent}) == len(rep.outbox.sent)  # each once
    assert {status for _, status, _ in recorded} == {"sent"}  # none left claimed or lost
    steps = {round((b - a).total_seconds(), 6) for a, b in pairwise(dues)}
    assert steps == {0.2}, steps  # every tick of the grid, none missing


def test_broker_failure_is_retried_by_the_same_leader(db_url: str) -> None:
    create_due_now(db_url, "s", "t.s", every=3600)
    with replica(db_url) as rep:
        rep.outbox.fail = True
        rep.run_until(lambda: len(runs(db_url, "s")) == 1)
        assert rep.outbox.sent == []
        rep.outbox.fail = False
        rep.run_until(lambda: bool(rep.outbox.sent))
        assert rep.outbox.names() == ["s"]
    assert [status for _, status, _ in runs(db_url, "s")] == ["sent"]


def test_ticks_claimed_while_the_broker_is_down_go_out_once_when_it_returns(
    db_url: str,
) -> None:
    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", every=0.1)
    with replica(db_url) as rep:
        rep.outbox.fail = True
        rep.run_until(lambda: len(runs(db_url, "s")) >= 6)
        rep.outbox.fail = False
        rep.run_until(lambda: len(rep.outbox.sent) >= 8)
    dues = [c.due_at for c, _ in rep.outbox.sent]
    assert len(dues) == len(set(dues)) >= 8
    assert dues == sorted(dues)
    assert {status for _, status, _ in runs(db_url, "s")} == {"sent"}
    assert len(runs(db_url, "s")) == len(dues)


def test_claims_run_ahead_of_a_slow_broker_by_at_most_one_batch(db_url: str) -> None:
    """The loop claims while the publisher thread sends, but never more than a batch ahead."""
    at = datetime.now(timezone.utc) + timedelta(seconds=1)
    with ScheduleManager(db_url) as api:
        for i in range(40):
            api.create(f"s{i:02d}", "t.s", clocked=at + timedelta(milliseconds=i))
    with replica(db_url, batch_size=5) as rep:
        publisher = rep.dispatcher.publisher
        backlog: list[int] = []

        def slow_broker(claim: Claim, epoch: int) -> None:
            backlog.append(publisher.backlog)  # this one included
            time.sleep(0.01)
            rep.outbox(claim, epoch)

        publisher.send = slow_broker
        rep.run_until(lambda: len(rep.outbox.sent) == 40, timeout=20)
    assert rep.outbox.names() == [f"s{i:02d}" for i in range(40)]  # each once, due order
    assert max(backlog) <= 2 * 5 - 1, backlog
    assert max(backlog) > 5, backlog  # it did claim while the previous batch went out
    statuses = sql(db_url, "SELECT status, count(*) FROM pg_beat_runs GROUP BY status")
    assert statuses == [("sent", 40)]


def test_a_kept_connection_closed_while_idle_is_replaced_without_backing_off(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """E.g. a standby whose sessions were all terminated, later taking over."""
    create_due_now(db_url, "s", "t.s", every=3600)
    with replica(db_url) as rep:
        rep.run_until(lambda: rep.outbox.names() == ["s"], timeout=5)
        victim = rep.dispatcher.backend_pid
        assert victim is not None
        sql(db_url, "SELECT pg_terminate_backend(%s)", victim)
        sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = now() WHERE name = 's'")
        with caplog.at_level(logging.INFO, logger="pg_beat.dispatch"):
            assert rep.dispatcher.step() == 0.0  # found dead: a new connection at once
            rep.step()
        assert rep.outbox.names() == ["s", "s"]
        assert rep.dispatcher.backend_pid not in (None, victim)
    assert "kept-open database connection was closed" in caplog.text
    assert "not dispatching until it recovers" not in caplog.text


OLDEST_PAST_RETENTION = (
    "SELECT min(claimed_at) < clock_timestamp() - interval '0.6 s' FROM pg_beat_runs"
)


def test_old_runs_are_pruned(db_url: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", every=0.1)
    with replica(db_url, run_retention=0.5) as rep:
        rep.run_until(lambda: len(runs(db_url, "s")) >= 3)
        # Past the retention by the database clock, which the pruning goes by.
        wait_until(lambda: bool(sql(db_url, OLDEST_PAST_RETENTION)[0][0]), timeout=5)
        (first,) = sql(db_url, "SELECT min(id) FROM pg_beat_runs")[0]
        rep.dispatcher._prune_at = 0.0
        rep.run_until(lambda: not sql(db_url, "SELECT 1 FROM pg_beat_runs WHERE id = %s", first))
    oldest = sql(db_url, "SELECT min(claimed_at) > now() - interval '1 second' FROM pg_beat_runs")
    assert oldest[0][0] is True


def test_store_reports_lock_holder_in_pg_locks(db_url: str) -> None:
    with replica(db_url) as rep:
        engine = store.connections.make_engine(rep.settings, "test")
        with engine.connect() as conn:
            holders = store.lease.lock_holders(conn, "default")
        engine.dispose()
        granted = [h for h in holders if h["granted"]]
        assert [h["pid"] for h in granted] == [rep.watchdog.backend_pid]
        token = rep.watchdog.connector.token
        assert granted[0]["application_name"] == f"pg_beat:{token}:test-replica:leader"


# --- the fence and the renewal (invariant 10) ------------------------------------------------


def test_an_open_claim_transaction_never_blocks_the_holders_renewal(db_url: str) -> None:
    """The fence's lock conflicts with a takeover, not with the holder's own renewal."""
    with replica(db_url, lock_timeout=1.0) as rep:
        epoch = rep.wait_leader()
        engine = store.connections.make_engine(rep.settings, "claim")
        takeover = store.connections.make_engine(rep.settings, "takeover")
        try:
            with engine.connect() as claim, claim.begin():
                assert store.claims.fence(claim, "default", epoch, "test-replica") is not None
                (before,) = sql(db_url, "SELECT heartbeat_at FROM pg_beat_leases")[0]
                # The watchdog renews every 0.2 s on its own session, claim transaction or not.
                wait_until(
                    lambda: sql(db_url, "SELECT heartbeat_at FROM pg_beat_leases")[0][0] > before,
                    timeout=2,
                )
                assert rep.watchdog.renewal_failures == 0
                # A takeover (FOR UPDATE) waits for the claim transaction, up to lock_timeout.
                with takeover.connect() as conn, pytest.raises(DBAPIError) as caught:
                    with conn.begin():
                        conn.execute(
                            text(
                                "SELECT 1 FROM pg_beat_leases WHERE group_name = 'default' "
                                "FOR UPDATE"
                            )
                        )
                assert getattr(caught.value.orig, "sqlstate", None) == "55P03"
        finally:
            engine.dispose()
            takeover.dispose()
        assert rep.state.epoch == epoch  # the leader kept its lease throughout


def test_the_lock_wait_leaves_the_sessions_lock_timeout_as_configured(db_url: str) -> None:
    settings = settings_for(db_url, lock_timeout=2.0)
    engine = store.connections.make_engine(settings, "standby")
    try:
        with engine.connect() as conn:
            assert store.lease.wait_lock(conn, "default", 0.1) is True
            with conn.begin():
                assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "2s"
    finally:
        engine.dispose()


def test_sixty_minutely_crontabs_a_week_behind_lead_drain_and_keep_the_lease(
    db_url: str,
) -> None:
    """Beat was down over a long weekend: the next leader must not spend its lease on it."""
    with ScheduleManager(db_url) as api:
        for i in range(60):
            api.create(f"minutely-{i:02d}", "t.m", crontab="* * * * *")
    week_ago = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(days=7)
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = %s", week_ago)
    with replica(db_url, lease_ttl=3.0, heartbeat_interval=0.2) as rep:
        epoch = rep.wait_leader()
        rep.run_until(lambda: len(rep.outbox.sent) >= 60, timeout=10)
        rep.run_for(1.0)
        assert rep.state.epoch == epoch and rep.watchdog.renewal_failures == 0
    late = [c for c, _ in rep.outbox.sent if c.due_at == week_ago]
    assert len(late) == 60  # fire_once: exactly one late tick each
    for row in sql(db_url, "SELECT next_run_at FROM pg_beat_schedules"):
        due = row[0]
        assert isinstance(due, datetime) and due.second == 0 and due.microsecond == 0
        assert due > datetime.now(timezone.utc) - timedelta(minutes=1)  # back on the grid


@pytest.mark.parametrize(
    ("grace", "resent", "skipped"),
    [(None, ["keeping", "skipping"], []), (0.5, ["keeping"], ["skipping"])],
    ids=["failover-within-the-default-grace", "downtime-longer-than-the-grace"],
)
def test_orphans_go_through_their_expiry_and_misfire_policy(
    db_url: str, grace: float | None, resent: list[str], skipped: list[str]
) -> None:
    """A dead epoch's unsent claims: past ``expires`` they are recorded expired. The rest go
    out under every policy when the gap without a leader was within the grace (the default
    covers an ordinary failover); after a longer one they follow the policy (skip: none)."""
    create_due_now(db_url, "expiring", "t.e", every=3600, options={"expires": 1})
    create_due_now(db_url, "skipping", "t.s", every=3600, misfire_policy="skip")
    create_due_now(db_url, "keeping", "t.k", every=3600, misfire_policy="catch_up")
    with replica(db_url, replica_name="first") as first:
        first.outbox.fail = True  # claimed, never sent
        first.run_until(lambda: len(runs(db_url, "keeping")) == 1, timeout=5)
    # Past the expiry (1 s), by the database clock the next leader uses; no leader meanwhile.
    past = "SELECT clock_timestamp() > max(due_at) + interval '1.1 s' FROM pg_beat_runs"
    wait_until(lambda: bool(sql(db_url, past)[0][0]), timeout=5)
    overrides = {} if grace is None else {"misfire_grace_time": grace}
    with replica(db_url, replica_name="second", **overrides) as second:
        second.run_until(lambda: bool(second.outbox.sent), timeout=10)
        second.run_for(0.5)
    assert sorted(second.outbox.names()) == resent
    statuses = {name: [s for _, s, _ in runs(db_url, name)] for name in ("expiring", "skipping")}
    assert statuses == {
        "expiring": ["expired"],
        "skipping": ["skipped"] if skipped else ["sent"],
    }


def insert_schedules(url: str, count: int, prefix: str, due: str, **columns: object) -> None:
    """``count`` interval schedules named prefix-0000.., all due at the SQL expression ``due``
    (evaluated once: the same instant for all), with these columns besides."""
    names = ", ".join(columns)
    values = ", ".join(["%s"] * len(columns))
    sql(
        url,
        f"INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds, next_run_at"
        f"{', ' + names if columns else ''}) "
        f"SELECT %s || '-' || lpad(i::text, 4, '0'), 't.burst', 'interval', 3600, {due}"
        f"{', ' + values if columns else ''} FROM generate_series(1, %s) i",
        prefix,
        *columns.values(),
        count,
    )


def test_a_burst_claimed_over_longer_than_the_grace_is_all_sent(db_url: str) -> None:
    """Invariant 19: 400 ``skip`` ticks due at one instant while this leader holds the lease,
    claimed 20 at a time behind a slow broker, over more than the grace: none is skipped."""
    with replica(db_url, misfire_grace_time=0.3, batch_size=20) as rep:
        rep.run_for(0.2)  # the term has begun before anything is due
        publisher = rep.dispatcher.publisher

        def slow_broker(claim: Claim, epoch: int) -> None:
            time.sleep(0.003)
            rep.outbox(claim, epoch)

        publisher.send = slow_broker
        insert_schedules(db_url, 400, "burst", "now() + interval '0.3 s'", misfire_policy="skip")
        rep.run_until(lambda: len(rep.outbox.sent) == 400, timeout=30)
        rep.run_for(0.2)
    assert sql(db_url, "SELECT status, count(*) FROM pg_beat_runs GROUP BY 1") == [("sent", 400)]
    ((spread,),) = sql(
        db_url, "SELECT extract(epoch FROM max(claimed_at) - min(due_at)) FROM pg_beat_runs"
    )
    assert float(str(spread)) > 2 * 0.3, spread  # the last were claimed well past the grace


def test_downtime_longer_than_the_grace_makes_skip_skip(db_url: str) -> None:
    """The counter-case: no leader for 3 s with a 2 s grace. A tick due as the leader stopped
    waited 3 s of downtime: skipped; one due 2.5 s into the gap waited under 2 s: sent."""
    with replica(db_url, replica_name="first") as first:
        first.run_for(0.2)
    # first released the lease as it stopped (a graceful stop): from here no leader runs.
    insert_schedules(db_url, 1, "gone", "now()", misfire_policy="skip")
    insert_schedules(db_url, 1, "kept", "now() + interval '2.5 s'", misfire_policy="skip")
    time.sleep(3.0)
    with replica(db_url, replica_name="second", misfire_grace_time=2.0) as second:
        second.run_until(lambda: len(runs(db_url, "kept-0001")) == 1, timeout=10)
        second.run_for(0.3)
    assert [s for _, s, _ in runs(db_url, "gone-0001")] == ["skipped"]
    assert [s for _, s, _ in runs(db_url, "kept-0001")] == ["sent"]
    assert second.outbox.names() == ["kept-0001"]


def test_a_backlog_drains_oldest_first_after_the_ticks_on_time(db_url: str) -> None:
    """Thirty schedules an hour to a day and a half behind, claimed five at a time: the one
    on time goes first, then the backlog, the longest waiting first."""
    hours = [(7 * i) % 31 + 1 for i in range(30)]  # 1..31 hours (and a half) behind, shuffled
    for i, behind in enumerate(hours):
        insert_schedules(db_url, 1, f"behind-{i:02d}", f"now() - interval '{behind} h 30 min'")
    insert_schedules(db_url, 1, "fresh", "now() - interval '1 s'")
    with replica(db_url, batch_size=5) as rep:
        rep.run_until(lambda: len(rep.outbox.sent) >= 31, timeout=20)
        rep.run_for(0.2)
    assert len(rep.outbox.sent) == 31  # hourly: each once
    dues = [c.due_at for c, _ in rep.outbox.sent]
    assert rep.outbox.names()[0] == "fresh-0001"  # on time: the first claim, the first sent
    assert dues[1:] == sorted(dues[1:])


def test_planning_new_rows_is_bounded_per_transaction(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thousand solar rows imported at once (about 0.1 ms of search each) are planned over
    several claim transactions, each within the planning budget, not in one."""
    require_module("ephem")
    sql(
        db_url,
        "INSERT INTO pg_beat_schedules (name, task, kind, solar_event, latitude, longitude) "
        "SELECT 'dawn-' || i, 't.dawn', 'solar', 'sunrise', 50 + i / 100.0, 10 "
        "FROM generate_series(1, 1000) i",
    )
    with replica(db_url) as rep:
        planned: list[int] = []
        plan = rep.dispatcher.planner.plan

        def counted(*args: Any, **kwargs: Any) -> Any:
            result = plan(*args, **kwargs)
            planned.append(len(result[0]))
            return result

        monkeypatch.setattr(rep.dispatcher.planner, "plan", counted)
        rep.run_until(
            lambda: (
                sql(db_url, "SELECT count(*) FROM pg_beat_schedules WHERE next_run_at IS NULL")
                == [(0,)]
            ),
            timeout=20,
        )
    assert sum(planned) == 1000
    assert max(planned) < 1000 and len([n for n in planned if n]) >= 3, planned


def test_a_column_added_by_a_later_migration_does_not_break_running_replicas(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Statements name their columns: a prepared one keeps its result type when a migration
    adds a column (with SELECT * it fails: 'cached plan must not change result type')."""
    create_due_now(db_url, "s", "t.s", every=0.1)
    with (
        caplog.at_level(logging.WARNING, logger="pg_beat"),
        replica(db_url, replica_name="one") as one,
        replica(db_url, replica_name="two", lead=False),
    ):
        one.run_for(1.5)  # long enough for psycopg to prepare every repeated statement
        for table in ("pg_beat_schedules", "pg_beat_runs", "pg_beat_leases", "pg_beat_replicas"):
            sql(db_url, f"ALTER TABLE {table} ADD COLUMN later_column integer")
        before = len(one.outbox.sent)
        one.run_for(1.5)
        assert len(one.outbox.sent) >= before + 10
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_a_long_publish_error_is_recorded_cut_to_the_stores_limit(db_url: str) -> None:
    """The run's error and the schedule's last_error keep the first ERROR_CHARS characters of
    a permanent publish error, however long the broker's message was."""
    create_due_now(db_url, "bad", "t.bad", every=3600)
    with replica(db_url) as rep:

        def refuse(claim: Claim, epoch: int) -> None:
            raise TypeError("bad option " + "x" * (3 * store.runs.ERROR_CHARS))

        rep.dispatcher.publisher.send = refuse
        rep.run_until(lambda: [s for _, s, _ in runs(db_url, "bad")] == ["failed"], timeout=10)
    ((error, last_error),) = sql(
        db_url,
        "SELECT r.error, s.last_error FROM pg_beat_runs r "
        "JOIN pg_beat_schedules s ON s.id = r.schedule_id WHERE s.name = 'bad'",
    )
    assert isinstance(error, str) and error.startswith("TypeError: bad option xxx")
    assert len(error) == store.runs.ERROR_CHARS and last_error == error


def test_a_long_validation_error_is_recorded_cut_to_the_stores_limit(db_url: str) -> None:
    """A row edited by hand into an invalid payload is recorded by the claim itself (a failed
    run, the schedule parked): both texts keep the first ERROR_CHARS characters of the error."""
    with ScheduleManager(db_url) as api:
        api.create("edited", "t.edited", every=3600)
    key = "k" * (3 * store.runs.ERROR_CHARS)
    sql(
        db_url,
        "UPDATE pg_beat_schedules SET options = jsonb_build_object(%s::text, 1) "
        "WHERE name = 'edited'",
        key,
    )
    with ScheduleManager(db_url) as api:
        api.run_now("edited")
    with replica(db_url) as rep:
        rep.run_until(lambda: [s for _, s, _ in runs(db_url, "edited")] == ["failed"], timeout=10)
    ((error, last_error),) = sql(
        db_url,
        "SELECT r.error, s.last_error FROM pg_beat_runs r "
        "JOIN pg_beat_schedules s ON s.id = r.schedule_id WHERE s.name = 'edited'",
    )
    assert isinstance(error, str) and error.startswith("InvalidSchedule: ")
    assert "unknown option 'kkk" in error
    assert len(error) == store.runs.ERROR_CHARS and last_error == error
