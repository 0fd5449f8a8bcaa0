"""Terms and epochs against real PostgreSQL (invariants 3 and 17): epochs may skip numbers, a
term's successor is the next term that exists, and an epoch never goes back, not even when
the lease row does (a failover of PostgreSQL that lost the last commits)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
import pytest
from support.inproc import Replica, replica
from support.pg import libpq_url

from pg_beat import store
from pg_beat.api import ScheduleManager


def sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def create_due_now(url: str, name: str) -> None:
    with ScheduleManager(url) as api:
        api.create(name, f"t.{name}", every=3600)
        api.run_now(name)


def runs(url: str, name: str) -> list[tuple[str, int]]:
    """(status, epoch) of each run of ``name``, by due time."""
    rows = sql(
        url,
        "SELECT status, epoch FROM pg_beat_runs WHERE schedule_name = %s ORDER BY due_at",
        name,
    )
    return [(str(status), int(epoch)) for status, epoch in rows]


def term(url: str, epoch: int) -> tuple[datetime, datetime | None]:
    """(acquired_at, previous_expires_at) of the term ``epoch``."""
    ((acquired, previous_expires),) = sql(
        url,
        "SELECT acquired_at, previous_expires_at FROM pg_beat_leader_terms WHERE epoch = %s",
        epoch,
    )
    return acquired, previous_expires


def sent_at(url: str, name: str) -> datetime:
    ((value,),) = sql(url, "SELECT sent_at FROM pg_beat_runs WHERE schedule_name = %s", name)
    assert isinstance(value, datetime)
    return value


def every_epoch(url: str) -> set[int]:
    """Every epoch the database remembers: the lease row's, the terms', the runs'."""
    rows = sql(
        url,
        "SELECT epoch FROM pg_beat_leases UNION SELECT epoch FROM pg_beat_leader_terms "
        "UNION SELECT epoch FROM pg_beat_runs",
    )
    return {int(epoch) for (epoch,) in rows}


def claims_unsent(rep: Replica, url: str, name: str) -> int:
    """``rep`` leads and claims ``name``'s tick, which never reaches the broker."""
    epoch = rep.wait_leader()
    rep.outbox.fail = True
    rep.run_until(lambda: runs(url, name) == [("claimed", epoch)], timeout=5)
    return epoch


def dies_holding(rep: Replica, url: str) -> None:
    """The process dies as it held the lease: no release, no disown; its session ends, so the
    advisory lock is free at once, while its lease row has not expired."""
    backend = rep.watchdog.backend_pid
    rep.watchdog.stop()
    rep.watchdog.join(timeout=5)
    sql(url, "SELECT pg_terminate_backend(%s)", backend)


def skip_epochs(url: str, by: int) -> None:
    """The lease row's epoch moves on by hand, no term recorded for the epochs skipped."""
    sql(url, "UPDATE pg_beat_leases SET epoch = epoch + %s", by)


@contextmanager
def orphan_queries(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records each query of the orphans the dispatch loop makes while in the block."""
    calls: list[str] = []
    for name in ("orphaned_claims", "pending_orphans"):
        query = getattr(store.runs, name)

        def counted(*args: Any, _query: Any = query, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _query(*args, **kwargs)

        monkeypatch.setattr(store.runs, name, counted)
    yield calls
    monkeypatch.undo()


def test_orphans_before_a_skipped_epoch_go_out_once_after_their_lease_expired(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_due_now(db_url, "s")
    with replica(db_url, replica_name="first", lease_ttl=3.0) as first:
        first_epoch = claims_unsent(first, db_url, "s")
        dies_holding(first, db_url)
        skip_epochs(db_url, 5)
        with replica(db_url, replica_name="second", lease_ttl=3.0) as second:
            epoch = second.wait_leader()
            assert epoch == first_epoch + 6
            acquired, previous_expires = term(db_url, epoch)
            # Taken over at once (the holder's session was gone), before its lease expired.
            assert previous_expires is not None and acquired < previous_expires
            second.run_until(lambda: bool(second.outbox.sent), timeout=10)
            second.run_for(1.0)  # recorded as sent
            with orphan_queries(monkeypatch) as queries:
                second.run_for(1.5)
    assert [(c.schedule, c.epoch, e) for c, e in second.outbox.sent] == [("s", first_epoch, epoch)]
    assert runs(db_url, "s") == [("sent", first_epoch)]
    assert sent_at(db_url, "s") >= previous_expires  # not before the dead epoch's lease expired
    assert queries == []  # nothing left: not looked for again every half second
    assert first.outbox.sent == []


def test_a_term_that_gave_up_its_epoch_frees_its_orphans_for_the_next_term_above_it(
    db_url: str,
) -> None:
    """The next term is the first above, whatever its number: without the disown the orphan
    would wait for the old lease's 30 s."""
    create_due_now(db_url, "s")
    with replica(db_url, replica_name="first", lease_ttl=30.0) as first:
        first_epoch = claims_unsent(first, db_url, "s")
        dies_holding(first, db_url)
        skip_epochs(db_url, 3)
        with replica(db_url, replica_name="second", lease_ttl=30.0) as second:
            epoch = second.wait_leader()
            assert epoch == first_epoch + 4
            first.state.step_down()  # the old leader learns it lost the lease...
            # ...and, once its publisher let the tick go, disowns its epoch.
            first.run_until(lambda: first.dispatcher.recorder.led_epoch is None, timeout=5)
            second.run_until(lambda: bool(second.outbox.sent), timeout=10)
            second.run_for(0.3)
    assert [(c.epoch, e) for c, e in second.outbox.sent] == [(first_epoch, epoch)]
    assert runs(db_url, "s") == [("sent", first_epoch)]


def test_the_epoch_goes_above_every_epoch_this_replica_has_seen(db_url: str) -> None:
    """A standby that saw an epoch the lease row no longer shows (a failover of PostgreSQL
    lost it) takes the lease above it, and its predecessors' unsent claims wait a whole TTL:
    whoever held that lost epoch may still be publishing until its deadline."""
    create_due_now(db_url, "s")
    with replica(db_url, replica_name="first") as first:
        first_epoch = claims_unsent(first, db_url, "s")
    key = f"pg_beat:{first.settings.group}"
    with psycopg.connect(libpq_url(db_url), autocommit=True) as gate:
        # Keep the standby from taking over until it has seen the lost epoch.
        gate.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (store.lease.LOCK_CLASS_ID, key))
        with replica(db_url, replica_name="second", lead=False) as second:
            second.watchdog.candidate.seen(first_epoch + 10)
            gate.execute(
                "SELECT pg_advisory_unlock(%s, hashtext(%s))", (store.lease.LOCK_CLASS_ID, key)
            )
            epoch = second.wait_leader()
            assert epoch == first_epoch + 11
            acquired, previous_expires = term(db_url, epoch)
            assert previous_expires is not None
            assert (previous_expires - acquired).total_seconds() > second.settings.lease_ttl - 0.5
            second.run_until(lambda: bool(second.outbox.sent), timeout=10)
            second.run_for(0.3)
    assert [(c.epoch, e) for c, e in second.outbox.sent] == [(first_epoch, epoch)]
    assert runs(db_url, "s") == [("sent", first_epoch)]
    assert sent_at(db_url, "s") >= previous_expires


@pytest.mark.parametrize(
    ("lost", "unsent"),
    [("lease row", False), ("lease row", True), ("lease row and last term", True)],
    ids=["row-all-sent", "row-orphan", "row-and-term-orphan"],
)
def test_an_epoch_never_goes_back_with_the_lease_row(db_url: str, lost: str, unsent: bool) -> None:
    """The lease row rolled back below the terms and runs (what a failover of PostgreSQL that
    lost commits can leave, or a restore by hand): a fresh replica, which has seen nothing,
    takes the lease above every epoch recorded, and claims nothing under a used one. Only the
    terms may remember the last epoch (its claims all sent); with its term gone too, only its
    unsent claims do."""
    create_due_now(db_url, "a")
    with replica(db_url, replica_name="first") as first:
        first_epoch = first.wait_leader()
        first.run_until(lambda: runs(db_url, "a") == [("sent", first_epoch)], timeout=5)
    create_due_now(db_url, "b")
    with replica(db_url, replica_name="second") as second:
        if unsent:
            second_epoch = claims_unsent(second, db_url, "b")
        else:
            second_epoch = second.wait_leader()
            second.run_until(lambda: runs(db_url, "b") == [("sent", second_epoch)], timeout=5)
    assert second_epoch > first_epoch
    sql(db_url, "UPDATE pg_beat_leases SET epoch = %s, holder = 'first'", first_epoch)
    if lost == "lease row and last term":
        sql(db_url, "DELETE FROM pg_beat_leader_terms WHERE epoch = %s", second_epoch)
    used = every_epoch(db_url)
    assert max(used) == second_epoch
    create_due_now(db_url, "c")
    with replica(db_url, replica_name="third") as third:
        epoch = third.wait_leader()
        assert epoch > max(used)
        third.run_until(lambda: len(third.outbox.sent) == 1 + unsent, timeout=10)
        third.run_for(0.3)
    expected = [("c", epoch, epoch)]
    if unsent:  # the orphan, once, under its own task id and epoch
        expected.insert(0, ("b", second_epoch, epoch))
    assert sorted((c.schedule, c.epoch, e) for c, e in third.outbox.sent) == expected
    assert runs(db_url, "a") == [("sent", first_epoch)]
    assert runs(db_url, "b") == [("sent", second_epoch)]
    assert runs(db_url, "c") == [("sent", epoch)]  # claimed under the new epoch, never reused
    terms = sql(db_url, "SELECT count(*) FROM pg_beat_leader_terms WHERE epoch = %s", epoch)
    assert terms == [(1,)]
