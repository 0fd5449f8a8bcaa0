"""A primary PostgreSQL and its synchronous streaming standby, for failover tests.

Users run pg_beat against an HA PostgreSQL (Patroni, a managed service) whose primary can die
and be replaced by a promoted standby behind a multi-host URL
(``host=a,b target_session_attrs=read-write``). ``ReplicatedPair`` builds that on loopback: two
``pg.PrivateCluster``, the standby copied with ``pg_basebackup -R`` over a physical replication
slot, replication synchronous so that every commit the primary acknowledged is on the standby
(flushed there) when the primary dies. A failover is then ``stop_primary()`` +
``promote_standby()``.

The private cluster's defaults trade durability for speed (``synchronous_commit = off``,
``fsync = off``, ``full_page_writes = off``). The pair turns ``synchronous_commit`` and
``full_page_writes`` back on; ``fsync`` stays off, since the tests crash processes, not the
operating system, and unflushed pages in the OS cache survive a process crash.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import psycopg

from support.lifecycle import Started
from support.pg import PrivateCluster, libpq_url

SLOT = "pg_beat_standby"

PRIMARY_SETTINGS: Mapping[str, str] = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "hot_standby": "on",
    "wal_receiver_status_interval": "1s",
}
# The standby starts with the primary's configuration; it must not wait for a standby of its
# own once promoted.
STANDBY_SETTINGS: Mapping[str, str] = {"synchronous_standby_names": "''"}
REPLICATION_HBA = ("host replication all 127.0.0.1/32 trust",)


class ReplicatedPair(Started):
    """A primary and a synchronous hot standby, both ``PrivateCluster`` on 127.0.0.1.

    ``settings`` are added to both servers' configuration (after the pair's own, so they win).
    Starting returns once the standby streams and the primary counts it as synchronous.
    Cleanup stops and removes both, whatever state a test left them in.
    """

    def __init__(self, settings: Mapping[str, str] | None = None, slot: str = SLOT) -> None:
        extra = dict(settings or {})
        self.primary = PrivateCluster({**PRIMARY_SETTINGS, **extra}, hba=REPLICATION_HBA)
        self.standby = PrivateCluster(
            {**PRIMARY_SETTINGS, **STANDBY_SETTINGS, **extra}, standby_of=self.primary, slot=slot
        )

    # -- lifecycle --

    def start(self, timeout: float = 30.0) -> ReplicatedPair:
        """Start the primary, copy it into the standby, start that, and wait until the primary
        reports it as its synchronous standby."""
        self.primary.start()
        self.standby.start()
        # Only now: with a synchronous standby named before one is attached, a commit waits.
        with _connect(self.primary.url()) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")
            _poll(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM pg_stat_replication"
                        " WHERE state = 'streaming' AND sync_state = 'sync'"
                    ).fetchone()
                    == (1,)
                ),
                timeout,
                "the standby to stream synchronously",
            )
        return self

    def cleanup(self) -> None:
        """Stop both servers and remove their directories. Idempotent."""
        with contextlib.suppress(Exception):
            self.standby.cleanup()
        self.primary.cleanup()

    # -- addresses --

    def multi_host_url(self, dbname: str = "postgres", **params: str) -> str:
        """libpq URI naming both servers, primary first, that connects to whichever accepts
        writes: ``postgresql://postgres@127.0.0.1:P1,127.0.0.1:P2/db?target_session_attrs=
        read-write``. ``params`` are added to the query string (e.g. ``connect_timeout="2"``).
        Plain libpq form, for psycopg; SQLAlchemy's URL parser cannot hold two hosts."""
        hosts = ",".join(f"127.0.0.1:{cluster.port}" for cluster in (self.primary, self.standby))
        query = urlencode({"target_session_attrs": "read-write", **params})
        return f"postgresql://postgres@{hosts}/{dbname}?{query}"

    # -- failover --

    def stop_primary(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m mode`` on the primary (``immediate``: as abrupt as a crash, without
        leaving a postmaster behind)."""
        self.primary.stop(mode)

    def promote_standby(self, timeout: float = 30.0) -> None:
        """Promote the standby (``pg_ctl promote -w``) and wait until it accepts writes."""
        self.standby.promote(timeout)
        with _connect(self.standby.url()) as conn:
            _poll(
                lambda: conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,),
                timeout,
                "the promoted standby to leave recovery",
            )

    def wait_replayed(self, timeout: float = 10.0) -> str:
        """Wait until the standby has replayed the primary's WAL up to its current position;
        returns that LSN. Synchronous replication only guarantees the WAL is flushed on the
        standby, not yet visible to its queries: call this before reading there."""
        with _connect(self.primary.url()) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        lsn = str(row[0])
        with _connect(self.standby.url()) as conn:
            _poll(
                lambda: (
                    conn.execute(
                        "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0", (lsn,)
                    ).fetchone()
                    == (True,)
                ),
                timeout,
                f"the standby to replay up to {lsn}",
            )
        return lsn


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=5)


def _poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.05)
