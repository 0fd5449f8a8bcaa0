"""Only the verified holder is terminated (invariant 13), against real PostgreSQL: a session
is terminated only while pg_locks shows it holding pg_beat's advisory lock, and the sessions
that go with it are found by the token of its process, never by a replica name cut to fit
PostgreSQL's 63 characters."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import Connection
from support.inproc import replica, settings_for
from support.waiting import connect, wait_for

from pg_beat import store

GROUP = "default"
#: Replica names that share their first 60 characters: cut to fit an application name, as
#: ``pg_beat:<replica>:`` once was, they were one and the same.
SHARED = "beat-" + "x" * 55


def lock(session: psycopg.Connection[Any], group: str = GROUP) -> None:
    session.execute(
        "SELECT pg_advisory_lock(%s, hashtext(%s))", (store.lease.LOCK_CLASS_ID, f"pg_beat:{group}")
    )


def alive(url: str, pid: int) -> bool:
    with connect(url, "observer") as observer:
        row = observer.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return row.fetchone() == (1,)


@contextmanager
def admin(url: str) -> Iterator[Connection]:
    engine = store.connections.make_engine(settings_for(url, replica_name="admin"), "test")
    try:
        with engine.connect() as conn, conn.begin():
            yield conn
    finally:
        engine.dispose()


def connector(url: str, replica_name: str) -> store.connections.Connector:
    return store.connections.Connector(settings_for(url, replica_name=replica_name))


def test_application_names_keep_the_token_and_role_whatever_the_replica_name() -> None:
    long = store.connections.Connector(
        settings_for("postgresql://h/db", replica_name=SHARED + "-a")
    )
    name = long.application_name("dispatch")
    assert len(name) == 63
    assert re.fullmatch(rf"pg_beat:{long.token}:{SHARED[:37]}:dispatch", name)
    other = store.connections.Connector(
        settings_for("postgresql://h/db", replica_name=SHARED + "-b")
    )
    assert other.application_name("dispatch") != name  # the tokens differ
    short = store.connections.Connector(
        settings_for("postgresql://h/db", replica_name="host-1:4242")
    )
    assert short.application_name("leader") == f"pg_beat:{short.token}:host-1:4242:leader"
    odd = store.connections.Connector(settings_for("postgresql://h/db", replica_name="bête\n"))
    assert odd.application_name("api") == f"pg_beat:{odd.token}:b?te?:api"


def test_a_pid_that_does_not_hold_the_lock_is_never_terminated(db_url: str) -> None:
    """The pid recorded in the lease row is a hint: after a restart it may be any client's."""
    with (
        connect(db_url, "psql") as bystander,
        connect(db_url, "psql") as other_group_holder,
    ):
        lock(other_group_holder, "another-group")
        for pid in (bystander.info.backend_pid, other_group_holder.info.backend_pid):
            with admin(db_url) as conn:
                assert store.lease.terminate_lock_holder(conn, GROUP, pid) is None
            assert alive(db_url, pid)


def test_terminating_a_holder_spares_a_replica_whose_name_shares_its_prefix(
    db_url: str,
) -> None:
    one, two = connector(db_url, SHARED + "-one"), connector(db_url, SHARED + "-two")
    old_prefix = [f"pg_beat:{c.settings.replica_name}:"[:63] for c in (one, two)]
    assert old_prefix[0] == old_prefix[1]  # what the names once shared, cut
    holder = one.connect("leader", autocommit=True)
    fence = one.connect("dispatch")  # an open claim transaction of the holder's process
    bystander = two.connect("dispatch")  # another replica's, on the lease table too
    try:
        lock(holder)
        fence.execute("SELECT 1 FROM pg_beat_leases FOR KEY SHARE")
        bystander.execute("SELECT count(*) FROM pg_beat_leases")
        with admin(db_url) as conn:
            others = store.lease.terminate_lock_holder(conn, GROUP, holder.info.backend_pid)
        assert others == 1
        wait_for(lambda: not alive(db_url, holder.info.backend_pid), 5, "holder terminated")
        wait_for(lambda: not alive(db_url, fence.info.backend_pid), 5, "its fence terminated")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
    finally:
        for session in (holder, fence, bystander):
            session.close()


def test_a_standby_terminates_a_hung_holder_and_its_fence_and_nobody_else(db_url: str) -> None:
    """The hung holder's open claim transaction (its fence) would hold the takeover up for
    the whole idle_in_transaction timeout (here 60 s); a replica whose name shares the
    holder's first 63 characters keeps its session."""
    patient = {"idle_in_transaction_timeout": 60.0}
    bystander = store.connections.Connector(
        settings_for(db_url, replica_name=SHARED + "-three", **patient)
    ).connect("dispatch")
    try:
        bystander.execute("SELECT count(*) FROM pg_beat_leases")  # a lock on the lease table
        with replica(db_url, replica_name=SHARED + "-one", **patient) as one:
            first = one.wait_leader()
            fence = one.dispatcher.connector.connect("dispatch")
            fence.execute("SELECT 1 FROM pg_beat_leases FOR KEY SHARE")
            one.watchdog.stop()  # hung: no renewal, its session (and the lock) still there
            one.watchdog.join(timeout=5)
            started = time.monotonic()
            with replica(db_url, replica_name=SHARED + "-two", lead=False, **patient) as two:
                second = two.wait_leader(timeout=20)
                took = time.monotonic() - started
            assert second > first
            assert took < one.settings.lease_ttl + 5, took
            wait_for(lambda: fence.closed or not alive(db_url, fence.info.backend_pid), 5)
            fence.close()
        assert bystander.execute("SELECT 1").fetchone() == (1,)
    finally:
        bystander.close()


def test_our_own_session_is_terminated_only_while_it_holds_the_lock_under_our_token(
    db_url: str,
) -> None:
    ours, theirs = connector(db_url, SHARED + "-one"), connector(db_url, SHARED + "-two")
    ours_idle = ours.connect("standby", autocommit=True)  # ours, without the lock
    theirs_holding = theirs.connect("leader", autocommit=True)  # the lock, not ours
    try:
        lock(theirs_holding)
        for session in (ours_idle, theirs_holding):
            pid = session.info.backend_pid
            with admin(db_url) as conn:
                assert store.lease.terminate_own_session(conn, GROUP, pid, ours.token) is False
            assert alive(db_url, pid)
        theirs_holding.close()
        lock(ours_idle)
        with admin(db_url) as conn:
            assert store.lease.terminate_own_session(
                conn, GROUP, ours_idle.info.backend_pid, ours.token
            )
        wait_for(lambda: not alive(db_url, ours_idle.info.backend_pid), 5, "terminated")
    finally:
        ours_idle.close()
        theirs_holding.close()


def test_status_tells_a_replicas_sessions_by_their_token(db_url: str) -> None:
    """Shown, not terminated: with the holder's session known, exactly its process's
    sessions; by replica name alone, exact for a name that fits."""
    one, two = connector(db_url, SHARED + "-one"), connector(db_url, SHARED + "-two")
    r1, r10 = connector(db_url, "r1"), connector(db_url, "r10")
    sessions = [c.connect(role, autocommit=True) for c in (one, two, r1, r10) for role in "ab"]
    pids = [s.info.backend_pid for s in sessions]
    try:
        with admin(db_url) as conn:
            assert (
                store.diagnostics.replica_backend_pids(conn, one.settings.replica_name, pids[0])
                == pids[:2]
            )
            assert store.diagnostics.replica_backend_pids(conn, "r1") == pids[4:6]
            assert store.diagnostics.replica_backend_pids(conn, "r10") == pids[6:]
            conn.execute(
                text(
                    "INSERT INTO pg_beat_replicas (group_name, name, host, pid, role, version, "
                    "backend_pid) VALUES ('default', :one, 'h', 1, 'leader', '0', :pid), "
                    "('default', 'r10', 'h', 2, 'standby', '0', :pid)"
                ),
                {"one": one.settings.replica_name, "pid": pids[0]},
            )
            found = {
                r["name"]: r["backend_alive"] for r in store.diagnostics.list_replicas(conn, GROUP)
            }
        # The pid alone is not enough: it must carry the replica's name.
        assert found == {one.settings.replica_name: True, "r10": False}
    finally:
        for session in sessions:
            session.close()
