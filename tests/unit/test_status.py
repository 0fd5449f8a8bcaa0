"""Cluster verdicts, blockers, replica roles and status rendering from plain rows and a fixed
database clock."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pg_beat import status
from pg_beat.config import Settings
from pg_beat.leadership.lease import LeaseStatus, lease_state

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def lease(**overrides: Any) -> dict[str, Any]:
    """A lease held by 'alpha' (epoch 4), renewed 0.5 s ago, loop progressing."""
    row: dict[str, Any] = {
        "group_name": "default",
        "epoch": 4,
        "holder": "alpha",
        "host": "host-a",
        "pid": 100,
        "backend_pid": 200,
        "backend_alive": True,
        "acquired_at": ago(60),
        "heartbeat_at": ago(0.5),
        "expires_at": ago(-4.5),
        "progress_at": ago(0.7),
        "released_at": None,
        "db_now": NOW,
    }
    row.update(overrides)
    return row


def backend(pid: int, app: str, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "pid": pid,
        "application_name": app,
        "state": "active",
        "wait_event_type": "Lock",
        "wait_event": "transactionid",
        "query": "UPDATE pg_beat_schedules SET next_run_at = $1 WHERE id = $2",
        "query_age": timedelta(seconds=8),
        "xact_age": timedelta(seconds=8),
        "blocked_by": [
            {
                "pid": 999,
                "application_name": "psql",
                "state": "idle in transaction",
                "query": "SELECT * FROM pg_beat_schedules FOR UPDATE",
                "age": 31.5,
            }
        ],
    }
    row.update(overrides)
    return row


def lock(pid: int, app: str, mode: str, on: str | None = "pg_beat_schedules", **kw: Any) -> dict:
    """A ``store.lock_activity`` row: ``on`` a pg_beat table, or None for the leadership key."""
    row: dict[str, Any] = {
        "pid": pid,
        "locktype": "relation" if on else "advisory",
        "mode": mode,
        "granted": True,
        "relname": on,
        "is_key": on is None,
        "lock_key": None if on else "pg_beat:default",
        "xid": None,
        "application_name": app,
        "user_name": "alice",
        "state": "idle",
        "query": "LOCK pg_beat_schedules IN ACCESS EXCLUSIVE MODE",
        "client_addr": None,
        "backend_start": ago(100),
        "wait_event_type": None,
        "wait_event": None,
        "age": timedelta(seconds=12.5),
        "state_age": timedelta(seconds=12.5),
        "xact_age": timedelta(seconds=12.5),
        "blocked_by": [],
    }
    row.update(kw)
    return row


def waiting(pid: int, app: str, behind: list[int], **kw: Any) -> dict[str, Any]:
    """A pg_beat session waiting for a row lock (transactionid), behind ``behind``."""
    options: dict[str, Any] = {
        "locktype": "transactionid",
        "granted": False,
        "xid": "731",
        "state": "active",
        "age": timedelta(seconds=0.8),
        "blocked_by": behind,
    }
    options.update(kw)
    mode = options.pop("mode", "ShareLock")
    return lock(pid, app, mode, on=None, **options) | {"is_key": False, "lock_key": None}


OUTSIDE_KEY = lock(4242, "psql", "ExclusiveLock", on=None, age=timedelta(seconds=30))
LEADER_KEY = lock(200, "pg_beat:alpha:leader", "ExclusiveLock", on=None)
ACCESS_EXCLUSIVE = lock(4242, "psql", "AccessExclusiveLock", state="idle in transaction")
IDLE = {"state": "idle", "wait_event_type": "Client", "wait_event": "ClientRead", "blocked_by": []}
STANDBY_WAIT = {"wait_event": "advisory", "blocked_by": [{"pid": 200, "state": "idle"}]}
HOLDER_GONE = lease(backend_alive=False)


@pytest.mark.parametrize(
    ("row", "kwargs", "state", "needles"),
    [
        (None, {}, status.NO_LEADER, ["never taken"]),
        (lease(holder=None, epoch=0), {}, status.NO_LEADER, ["never taken"]),
        (
            lease(backend_pid=None, expires_at=ago(3), released_at=ago(3)),
            {},
            status.NO_LEADER,
            ["'alpha' released the lease (epoch 4)"],
        ),
        (
            lease(backend_pid=None, heartbeat_at=ago(8), expires_at=ago(3)),
            {},
            status.NO_LEADER,
            ["'alpha' (epoch 4) did not renew its lease, which expired 3.0s ago"],
        ),
        (lease(backend_pid=None), {}, status.HEALTHY, ["leader 'alpha'"]),  # transaction mode
        (
            HOLDER_GONE,
            {},
            status.NO_LEADER,
            ["session of 'alpha'", "backend 200", "is gone", "no longer holds the leadership"],
        ),
        (
            lease(),
            {},
            status.HEALTHY,
            ["leader 'alpha' (epoch 4)", "heartbeat 0.5s ago", "expires in 4.5s"],
        ),
        (
            lease(heartbeat_at=ago(12), expires_at=ago(7), progress_at=ago(12)),
            {
                "leader_backends": [
                    backend(200, "pg_beat:alpha:leader", **IDLE),
                    backend(201, "pg_beat:alpha:dispatch"),
                ]
            },
            status.LEADER_STALE,
            [
                "'alpha' (epoch 4) has not renewed its lease for 12s (expired 7.0s ago)",
                "backend 201 (pg_beat:alpha:dispatch) waits on Lock/transactionid",
                "blocked by pid 999 (psql, idle in transaction, for 31s)",
            ],
        ),
        (
            lease(heartbeat_at=ago(12), expires_at=ago(7)),
            {"leader_backends": [backend(200, "pg_beat:alpha:leader", **IDLE)]},
            status.LEADER_STALE,
            ["backend 200 (pg_beat:alpha:leader) is idle (the process is not talking"],
        ),
        (
            lease(heartbeat_at=ago(12), expires_at=ago(7)),
            {
                "leader_backends": [
                    backend(200, "pg_beat:alpha:leader", **IDLE | {"state": "idle in transaction"})
                ]
            },
            status.LEADER_STALE,
            ["is idle in transaction (the process is not talking to the database"],
        ),
        (
            lease(heartbeat_at=ago(12), expires_at=ago(7)),
            {},
            status.LEADER_STALE,
            ["none of its backends is visible"],
        ),
        (
            lease(progress_at=ago(25)),
            {"max_stall": 10.0},
            status.LEADER_STALE,
            ["holds the lease but its dispatch loop made no progress for 25s"],
        ),
        (lease(progress_at=ago(25)), {"max_stall": 30.0}, status.HEALTHY, []),
        (lease(progress_at=None), {}, status.HEALTHY, []),
        (
            lease(),
            {"blocked": [backend(300, "pg_beat:beta:api"), backend(301, "pg_beat:beta:api")]},
            status.BLOCKED,
            [
                "pg_beat backend 300 (pg_beat:beta:api) waits on Lock/transactionid",
                "blocked by pid 999 (psql",
                "(and 1 more)",
            ],
        ),
        (
            lease(),
            {"blocked": [backend(400, "pg_beat:beta:standby")], "lock_waiters": [400]},
            status.HEALTHY,
            [],
        ),
        (
            lease(),
            {"blocked": [backend(401, "pg_beat:gamma:standby", **STANDBY_WAIT)]},
            status.HEALTHY,
            [],
        ),
        # -- who blocks pg_beat leads the headline ---------------------------------------------
        (
            None,
            {"locks": [OUTSIDE_KEY]},
            status.NO_LEADER,
            [
                "no leader: the leadership lock pg_beat:default is held by pid 4242 "
                "(psql, user alice), not a pg_beat replica, for 30s"
            ],
        ),
        (
            lease(released_at=ago(2), backend_pid=None, expires_at=ago(2)),
            {"locks": [OUTSIDE_KEY, ACCESS_EXCLUSIVE]},
            status.NO_LEADER,
            ["the leadership lock pg_beat:default is held by pid 4242"],
        ),
        (
            lease(),
            {"locks": [ACCESS_EXCLUSIVE]},
            status.BLOCKED,
            [
                "blocked: pid 4242 (psql, user alice) holds AccessExclusiveLock on "
                "pg_beat_schedules for 12s (idle in transaction); leader 'alpha' (epoch 4), "
                "heartbeat 0.5s ago"
            ],
        ),
        (
            lease(progress_at=ago(25)),
            {
                "locks": [
                    ACCESS_EXCLUSIVE,
                    waiting(
                        201,
                        "pg_beat:alpha:dispatch",
                        [4242],
                        locktype="relation",
                        relname="pg_beat_schedules",
                        mode="RowExclusiveLock",
                    ),
                ]
            },
            status.BLOCKED,
            [
                "blocked: pid 4242 (psql, user alice) holds AccessExclusiveLock",
                "; pg_beat waits behind it: pid 201 (pg_beat:alpha:dispatch); leader stale: "
                "'alpha' (epoch 4) holds the lease but its dispatch loop made no progress",
            ],
        ),
        (
            HOLDER_GONE,
            {
                "locks": [
                    lock(
                        999, "psql", "RowShareLock", "pg_beat_leases", state="idle in transaction"
                    ),
                    lock(
                        300,
                        "pg_beat:beta:leader",
                        "AccessExclusiveLock",
                        "pg_beat_leases",
                        locktype="tuple",
                    ),
                    waiting(300, "pg_beat:beta:leader", [999]),
                    waiting(
                        301,
                        "pg_beat:gamma:leader",
                        [300],
                        locktype="tuple",
                        relname="pg_beat_leases",
                        mode="AccessExclusiveLock",
                    ),
                ]
            },
            status.BLOCKED,
            [
                "blocked: pid 999 (psql, user alice) holds RowShareLock on pg_beat_leases for 12s"
                " (idle in transaction); pg_beat waits behind it: pid 300 (pg_beat:beta:leader);"
                " no leader: the session of 'alpha'",
            ],
        ),
        (
            HOLDER_GONE,  # nobody waits right now, but the lease row is locked by an outsider
            {"locks": [lock(999, "psql", "RowShareLock", "pg_beat_leases")]},
            status.BLOCKED,
            ["blocked: pid 999 (psql, user alice) holds RowShareLock on pg_beat_leases"],
        ),
        (
            lease(),  # a held lease: a psql row lock on the lease table holds nothing up
            {"locks": [lock(999, "psql", "RowShareLock", "pg_beat_leases")]},
            status.HEALTHY,
            [],
        ),
        (
            lease(),  # standbys queue on the key behind the leader: normal
            {
                "locks": [
                    LEADER_KEY,
                    lock(
                        400,
                        "pg_beat:beta:standby",
                        "ExclusiveLock",
                        on=None,
                        granted=False,
                        blocked_by=[200],
                    ),
                    lock(201, "pg_beat:alpha:dispatch", "RowExclusiveLock"),
                ]
            },
            status.HEALTHY,
            [],
        ),
        (
            lease(),
            {
                "locks": [
                    lock(
                        77,
                        "alembic",
                        "AccessExclusiveLock",
                        granted=False,
                        blocked_by=[201],
                        age=timedelta(seconds=3),
                    ),
                    lock(201, "pg_beat:alpha:dispatch", "RowExclusiveLock"),
                ]
            },
            status.BLOCKED,
            [
                "blocked: pid 77 (alembic, user alice) waits for AccessExclusiveLock on "
                "pg_beat_schedules for 3.0s, behind pid 201"
            ],
        ),
        (
            None,
            {"lease_unreadable": "lock timeout after 1.0s"},
            status.UNKNOWN,
            ["could not read the lease: lock timeout after 1.0s"],
        ),
        (
            None,
            {
                "lease_unreadable": "lock timeout after 1.0s",
                "locks": [lock(4242, "psql", "AccessExclusiveLock", "pg_beat_leases")],
            },
            status.BLOCKED,
            [
                "blocked: pid 4242 (psql, user alice) holds AccessExclusiveLock on "
                "pg_beat_leases for 12s; could not read the lease: lock timeout after 1.0s"
            ],
        ),
    ],
)
def test_verdict(
    row: dict[str, Any] | None, kwargs: dict[str, Any], state: str, needles: list[str]
) -> None:
    found = status.verdict(row, NOW, **kwargs)
    assert found.state == state, found.message
    if state != status.UNKNOWN:
        assert found.message.startswith(f"{state}: ")
    assert "\n" not in found.message
    for needle in needles:
        assert needle in found.message, found.message
    assert found.healthy is (state == status.HEALTHY)


def test_leader_verdict_ignores_blockers_but_not_an_outside_key_holder() -> None:
    locks = [ACCESS_EXCLUSIVE]
    assert status.leader_verdict(lease(), NOW, locks=locks).state == status.HEALTHY
    found = status.leader_verdict(None, NOW, locks=[OUTSIDE_KEY])
    assert found.state == status.NO_LEADER and "pid 4242 (psql, user alice)" in found.message
    # A pg_beat standby that has just won the key is no outsider.
    standby = lock(300, "pg_beat:beta:standby", "ExclusiveLock", on=None)
    assert "never taken" in status.leader_verdict(None, NOW, locks=[standby]).message


def test_a_leader_whose_broker_fails_is_judged_by_its_replica_row() -> None:
    failing = {
        "name": "alpha",
        "broker_failing_since": ago(31),
        "broker_failing_age": timedelta(seconds=31),
        "broker_error": "ConnectionError: refused",
        "broker_checked_age": timedelta(seconds=0.2),
        "ticks_waiting": 7,
    }
    working = {**failing, "broker_failing_since": None, "broker_failing_age": None}
    found = status.leader_verdict(lease(), NOW, replicas=[failing])
    assert found.state == status.BROKER_DOWN and not found.healthy
    assert found.message == (
        "broker unreachable: leader 'alpha' (epoch 4) cannot publish since "
        "2026-12-01 08:59:29Z (31s ago), 7 tick(s) waiting; it keeps the lease and retries: "
        "ConnectionError: refused"
    )
    assert status.leader_verdict(lease(), NOW, replicas=[working]).healthy
    # A standby's broker failing says nothing about the leader's.
    assert status.leader_verdict(lease(), NOW, replicas=[{**failing, "name": "beta"}]).healthy
    # A stale leader is judged stale first: its broker is the lesser news.
    stale = lease(progress_at=ago(60))
    assert status.leader_verdict(stale, NOW, replicas=[failing]).state == status.LEADER_STALE
    assert [status.broker_state(r) for r in (failing, working, {"name": "old"})] == [
        "failing 31s",
        "ok",
        "-",
    ]


def test_find_blockers_ranks_table_locks_first_and_lists_whom_they_block() -> None:
    view = lease_state(lease(), NOW)
    locks = [
        lock(77, "alembic", "AccessExclusiveLock", granted=False, blocked_by=[999]),
        lock(999, "psql", "RowExclusiveLock"),
        ACCESS_EXCLUSIVE | {"relname": "pg_beat_runs"},
        waiting(201, "pg_beat:alpha:dispatch", [999]),
        waiting(202, "pg_beat:alpha:api", [999]),
    ]
    found = status.find_blockers(locks, view)
    assert [(b.pid, b.why) for b in found] == [(4242, "table lock"), (999, "blocks"),
                                               (77, "queued")]  # fmt: skip
    assert [w["pid"] for w in found[1].blocks] == [201, 202]
    text = status.describe_blocker(found[1])
    assert text == (
        "pid 999 (psql, user alice) holds RowExclusiveLock on pg_beat_schedules for 12s; "
        "pg_beat waits behind it: pid 201 (pg_beat:alpha:dispatch) and 1 more"
    )
    assert status.find_blockers([], view) == []
    assert status.lock_target(waiting(1, "x", [])) == "a row locked by transaction 731"
    assert status.lock_target(OUTSIDE_KEY) == "advisory key pg_beat:default"


def replica(name: str, role: str = "standby", **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "role": role,
        "host": "host-a",
        "pid": 100,
        "version": "0.1.0",
        "backend_pid": 200,
        "backend_alive": True,
        "started_at": ago(600),
        "last_seen_at": ago(0.4),
        "last_seen_age": timedelta(seconds=0.4),
    }
    row.update(overrides)
    return row


HELD = lease()
HUNG = lease(heartbeat_at=ago(12), expires_at=ago(7))


@pytest.mark.parametrize(
    ("row", "lease_row", "role"),
    [
        (replica("alpha", "leader"), HELD, "leader"),
        (replica("beta"), HELD, "standby"),
        (replica("alpha", "standby"), HELD, "leader"),  # won, row not updated yet
        (replica("beta", "leader"), HELD, "standby"),  # says leader, the lease says alpha
        (replica("alpha", "leader", backend_alive=False), HELD, "gone"),  # killed
        (replica("alpha", "leader"), HUNG, "hung"),
        (replica("alpha", "leader"), HOLDER_GONE, "standby"),
        (replica("alpha", "leader", backend_alive=False), HOLDER_GONE, "gone"),
        (replica("alpha", "leader"), None, "standby"),  # the lease was never taken
        # transaction pooling: no session of its own, judged by its heartbeat
        (replica("alpha", "leader", backend_pid=None, backend_alive=None), HELD, "leader"),
        # (the lease's TTL is 5 s: gone after 4/3 of it, 6.67 s)
        (replica("beta", backend_pid=None, backend_alive=None, last_seen_at=ago(6.6)), HELD,
         "standby"),
        (replica("beta", backend_pid=None, backend_alive=None, last_seen_at=ago(6.7)), HELD,
         "gone"),
        (replica("alpha", "leader", backend_pid=None, backend_alive=None,
                 last_seen_at=ago(7)), HELD, "gone"),
    ],
)  # fmt: skip
def test_replica_role(row: dict[str, Any], lease_row: dict[str, Any] | None, role: str) -> None:
    assert status.replica_role(row, lease_state(lease_row, NOW), NOW) == role


def ttl_lease(ttl: float, **overrides: Any) -> dict[str, Any]:
    """A lease held by alpha, renewed 0.5 s ago with ``ttl``."""
    return lease(**{"heartbeat_at": ago(0.5), "expires_at": ago(0.5 - ttl), **overrides})


@pytest.mark.parametrize(
    ("lease_row", "gone_after"),
    [
        (ttl_lease(5.0), 5.0 * 4 / 3),  # the defaults: 6.7 s, six heartbeats of 1 s
        (ttl_lease(3.0), 4.0),  # TTL 3x a 1 s heartbeat: four heartbeats
        (ttl_lease(60.0), 80.0),  # a slow heartbeat (up to 20 s) is not taken for a death
        (ttl_lease(0.6), 0.8),  # a fast one is not waited for 5 s
        (HUNG, 5.0 * 4 / 3),  # expired, but not released: the TTL still shows
        (ttl_lease(60.0, released_at=ago(1), expires_at=ago(1)), 5.0 * 4 / 3),  # released
        (lease(heartbeat_at=None, expires_at=None), 5.0 * 4 / 3),
        (None, 5.0 * 4 / 3),  # never taken
    ],
    ids=["ttl-5", "ttl-3", "ttl-60", "ttl-0.6", "hung", "released", "no-times", "no-lease"],
)
def test_replicas_are_gone_after_four_heartbeats_at_the_slowest_their_ttl_allows(
    lease_row: dict[str, Any] | None, gone_after: float
) -> None:
    assert status.replica_gone_after(lease_row) == pytest.approx(gone_after)
    view = lease_state(lease_row, NOW)
    silent = {"backend_pid": None, "backend_alive": None}
    before = replica("beta", last_seen_at=ago(gone_after - 0.01), **silent)
    after = replica("beta", last_seen_at=ago(gone_after + 0.01), **silent)
    limit = status.replica_gone_after(lease_row)
    assert status.replica_role(before, view, NOW, limit) == "standby"
    assert status.replica_role(after, view, NOW, limit) == "gone"


def test_the_assumed_ttl_is_the_settings_default() -> None:
    (ttl,) = [item.default for item in fields(Settings) if item.name == "lease_ttl"]
    assert status.DEFAULT_LEASE_TTL == ttl
    assert status.replica_gone_after(None) == pytest.approx(ttl * 4 / 3)
    # The TTL is at least 3 heartbeats (config refuses less): 4/3 of it is >= 4 heartbeats.
    assert status.GONE_AFTER_HEARTBEATS == 4


def test_status_judges_replicas_by_the_ttl_of_the_lease_it_read() -> None:
    """A replica silent for 30 s in a group whose TTL is 60 s is not gone (it was with a fixed
    5 s); the text and the JSON agree."""
    silent = replica("beta", backend_pid=None, backend_alive=None, last_seen_at=ago(30),
                     last_seen_age=timedelta(seconds=30))  # fmt: skip
    slow = stale_cluster(lease=ttl_lease(60.0), replicas=[silent])
    assert slow.replica_gone_after == pytest.approx(80.0)
    assert json.loads(status.dumps(status.as_json(slow)))["replicas"][0]["role"] == "standby"
    assert "gone" not in status.render(slow).split("\nReplicas\n")[1].split("\n\n")[0]
    fast = stale_cluster(lease=ttl_lease(3.0), replicas=[silent])
    assert json.loads(status.dumps(status.as_json(fast)))["replicas"][0]["role"] == "gone"
    # The lease could not be read: the default TTL.
    blind = stale_cluster(lease=None, replicas=[silent], unreadable={"lease": "lock timeout"})
    assert blind.replica_gone_after == pytest.approx(5.0 * 4 / 3)


def test_replica_role_when_the_lease_is_unreadable() -> None:
    assert status.replica_role(replica("alpha", "leader"), None, NOW) == "unknown"
    assert status.replica_role(replica("beta"), None, NOW) == "standby"
    assert status.replica_role(replica("beta", backend_alive=False), None, NOW) == "gone"


def test_at_most_one_leader_whatever_the_rows_say() -> None:
    rows = [replica(n, "leader") for n in ("alpha", "beta", "gamma")]
    for lease_row in (HELD, HUNG, HOLDER_GONE, None):
        view = lease_state(lease_row, NOW)
        roles = [status.replica_role(r, view, NOW) for r in rows]
        assert roles.count("leader") == (1 if view.status is LeaseStatus.HELD else 0)


def test_unreadable_sections_name_the_lock_that_kept_them_out() -> None:
    locks = [
        ACCESS_EXCLUSIVE,
        lock(5, "psql", "AccessShareLock", "pg_beat_leases"),
        lock(6, "alembic", "AccessExclusiveLock", "pg_beat_leases", granted=False),
    ]
    reasons = status.explain_unreadable(
        {"next_due": "lock timeout after 1.0s", "lease": "lock timeout after 0.1s",
         "replicas": "statement timeout after 1.0s", "blocked": "boom"},
        locks,
    )  # fmt: skip
    assert reasons == {
        "next_due": "lock timeout after 1.0s: pid 4242 (psql, user alice) holds "
        "AccessExclusiveLock on pg_beat_schedules for 12s (idle in transaction)",
        "lease": "lock timeout after 0.1s: pid 6 (alembic, user alice) waits for "
        "AccessExclusiveLock on pg_beat_leases for 12s",
        "replicas": "statement timeout after 1.0s",
        "blocked": "boom",
    }


def test_other_sessions_queries_are_cut_unless_asked() -> None:
    long = "SELECT " + ", ".join(f"column_{i}" for i in range(30)) + " FROM pg_beat_schedules"
    rows = [backend(1, "psql", query=long)]
    rows[0]["blocked_by"][0]["query"] = long
    (cut,) = status.cut_queries(rows, show=False) or []
    assert cut["query"] == long[:39] + "…" and len(cut["query"]) == status.QUERY_PREFIX
    assert cut["blocked_by"][0]["query"] == long[:39] + "…"
    (full,) = status.cut_queries(rows, show=True) or []
    assert full["query"] == long and full["blocked_by"][0]["query"] == long
    assert status.cut_queries(None, show=False) is None
    assert status.cut_queries([lock(1, "x", "ShareLock", blocked_by=[2])], False)[0][
        "blocked_by"
    ] == [2]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "in 0.0s"), (9.94, "in 9.9s"), (12.7, "in 12s"), (-12.7, "12s ago"),
     (185, "in 3m05s"), (-7260, "2h01m ago"), (90000, "in 1d1h"), (None, "-")],
)  # fmt: skip
def test_relative(seconds: float | None, text: str) -> None:
    assert status.relative(seconds) == text


def test_times_and_shortening() -> None:
    assert status.utc(NOW) == "2026-12-01 09:00:00Z"
    assert status.utc(NOW + timedelta(microseconds=250_000)) == "2026-12-01 09:00:00.250Z"
    assert status.utc(None) == "-"
    assert status.ago(3.25) == "3.2s ago"
    assert status.shorten("SELECT  1\n  FROM x", 40) == "SELECT 1 FROM x"
    assert status.shorten("x" * 50, 10) == "x" * 9 + "…"


def test_render_table_aligns_and_right_justifies_numbers() -> None:
    table = status.render_table(
        ("NAME", "RUNS", "NOTE", "GONE"),
        [["a", 5, None, None], ["longer", 120, "two\nlines", None]],
    )
    assert table.splitlines() == [
        "NAME    RUNS  NOTE       GONE",
        "a          5  -          -",
        "longer   120  two lines  -",
    ]


STATUS_KEYS = {
    "group", "db_now", "verdict", "unreadable", "blockers", "lease", "replicas", "lock",
    "locks", "blocked", "leader_backends", "failovers", "next_due", "failing_schedules",
    "failing_count", "task_health", "long_transactions",
}  # fmt: skip


def stale_cluster(**overrides: Any) -> status.ClusterStatus:
    row = lease(heartbeat_at=ago(12), expires_at=ago(7))
    hung = [backend(201, "pg_beat:alpha:dispatch")]
    locks = [
        lock(200, "pg_beat:alpha:leader", "ExclusiveLock", on=None, query="SELECT 1"),
        lock(300, "pg_beat:beta:standby", "ExclusiveLock", on=None, granted=False,
             blocked_by=[200], state="active"),
    ]  # fmt: skip
    values: dict[str, Any] = {
        "group": "default",
        "now": NOW,
        "verdict": status.verdict(row, NOW, leader_backends=hung, locks=locks),
        "lease": row,
        "locks": locks,
        "blockers": [],
        "replicas": [
            replica("alpha", "leader", last_seen_at=ago(12), last_seen_age=timedelta(seconds=12)),
            replica("beta", "leader", backend_alive=False),
        ],
        "blocked": hung,
        "leader_backends": hung,
        "failovers": [
            {
                "epoch": 4,
                "holder": "alpha",
                "host": "host-a",
                "pid": 100,
                "acquired_at": ago(60),
                "ended_at": None,
                "reason": "holder_gone",
                "previous_holder": "beta",
            },
        ],
        "next_due": [
            {
                "name": "tick",
                "task": "app.tick",
                "kind": "interval",
                "interval_seconds": 30.0,
                "next_run_at": ago(-5),
                "due_in": timedelta(seconds=5),
            },
        ],
        "failing": [
            {
                "name": "bad",
                "task": "app.bad",
                "enabled": True,
                "parked": True,
                "last_error": "invalid crontab minute '61' (0-59)",
                "next_run_at": None,
                "last_run_at": None,
                "due_in": None,
            },
            {
                "name": "flaky",
                "task": "app.flaky",
                "enabled": True,
                "parked": False,
                "last_error": "broker: connection refused",
                "next_run_at": ago(-30),
                "last_run_at": ago(30),
                "due_in": timedelta(seconds=30),
            },
        ],
        "failing_count": 3,
        "long_transactions": [
            {
                "pid": 999,
                "application_name": "psql",
                "state": "idle in transaction",
                "query": "SELECT * FROM pg_beat_schedules FOR UPDATE",
                "xact_age": timedelta(seconds=31),
                "tables": ["pg_beat_schedules"],
            }
        ],
        "max_stall": 10.0,
    }
    values.update(overrides)
    return status.ClusterStatus(**values)


def test_json_and_text_of_a_stale_cluster() -> None:
    found = stale_cluster()
    data = json.loads(status.dumps(status.as_json(found)))
    assert set(data) == STATUS_KEYS
    assert data["verdict"]["state"] == status.LEADER_STALE
    assert data["unreadable"] == [] and data["blockers"] == []
    assert data["lease"]["status"] == "hung"
    assert data["lease"]["heartbeat_age"] == 12.0 and data["lease"]["expires_in"] == -7.0
    assert [(r["role"], r["pid"]) for r in data["lock"]] == [("holder", 200), ("waiter", 300)]
    assert data["lock"][0]["user_name"] == "alice"
    assert data["locks"][1] | {"age": None} == {
        "pid": 300, "application_name": "pg_beat:beta:standby", "user_name": "alice",
        "state": "active", "locktype": "advisory", "mode": "ExclusiveLock", "granted": False,
        "query": "LOCK pg_beat_schedules IN ACCESS EXCLUSIVE MODE",
        "target": "advisory key pg_beat:default", "age": None, "xact_age": 12.5,
        "blocked_by": [200],
    }  # fmt: skip
    replicas = {r["name"]: r for r in data["replicas"]}
    assert replicas["alpha"]["role"] == "hung" and replicas["alpha"]["reported_role"] == "leader"
    assert replicas["alpha"]["last_seen_age"] == 12.0
    assert replicas["beta"]["role"] == "gone" and replicas["beta"]["reported_role"] == "leader"
    assert data["failovers"][0]["reason"] == "holder_gone"
    assert data["leader_backends"][0]["blocked_by"][0]["pid"] == 999
    assert data["next_due"] == [
        {"name": "tick", "task": "app.tick", "schedule": "every 30s",
         "next_run_at": "2026-12-01T09:00:05+00:00", "due_in": 5.0},
    ]  # fmt: skip
    assert data["failing_count"] == 3
    assert [(f["name"], f["parked"]) for f in data["failing_schedules"]] == [
        ("bad", True),
        ("flaky", False),
    ]
    assert data["long_transactions"][0]["xact_age"] == 31.0

    text = status.render(found)
    assert text.splitlines()[0] == f"verdict: {found.verdict.message}"
    for title in ("Lease", "Leader's backends", "Replicas", "Advisory lock",
                  "Blocked pg_beat backends", "Recent terms (failovers)", "Failing schedules (3)",
                  "Next due"):  # fmt: skip
        assert f"\n{title}\n" in text
    assert "Blocking pg_beat" not in text
    assert "Lock/transactionid" in text and "999 (psql, idle in transaction)" in text
    assert "Long transactions holding locks on pg_beat tables" in text
    assert "hung (reports leader)" in text and "gone (reports leader)" in text
    assert "holder_gone" in text
    assert "parked" in text and "running" in text and "... and 1 more" in text


def test_unreadable_sections_are_null_in_json_and_said_in_text() -> None:
    reason = "lock timeout after 1.0s: pid 4242 (psql, user alice) holds AccessExclusiveLock"
    found = stale_cluster(
        lease=None,
        replicas=None,
        next_due=None,
        failing=None,
        failing_count=None,
        locks=[ACCESS_EXCLUSIVE],
        blockers=status.find_blockers([ACCESS_EXCLUSIVE], None),
        unreadable={"lease": reason, "next_due": reason, "failing_schedules": reason,
                    "replicas": "statement timeout after 1.0s", "task_health": reason},
    )  # fmt: skip
    data = json.loads(status.dumps(status.as_json(found)))
    assert set(data) == STATUS_KEYS
    assert data["lease"] is None and data["next_due"] is None and data["replicas"] is None
    assert data["failing_schedules"] is None and data["failing_count"] is None
    assert data["task_health"] is None
    assert {u["section"] for u in data["unreadable"]} == {
        "lease", "next_due", "failing_schedules", "replicas", "task_health",
    }  # fmt: skip
    assert data["blockers"][0]["pid"] == 4242 and data["blockers"][0]["why"] == "table lock"
    assert data["blockers"][0]["description"].startswith("pid 4242 (psql, user alice) holds")
    text = status.render(found)
    assert f"Lease\n  (could not read: {reason})" in text
    assert f"Next due\n  (could not read: {reason})" in text
    assert "Replicas\n  (could not read: statement timeout after 1.0s)" in text
    assert "Failing schedules (?)\n  (could not read:" in text
    assert f"Task health (outcomes from tracking workers)\n  (could not read: {reason})" in text
    assert "could not read: lease, next_due, failing_schedules, replicas, task_health" in text
    assert "\nBlocking pg_beat\n" in text and "holds AccessExclusiveLock" in text


def health_row(name: str, **overrides: Any) -> dict[str, Any]:
    """A row of store.health.unhealthy: an enabled minutely schedule, tracked."""
    values: dict[str, Any] = {
        "name": name, "task": f"app.{name}", "enabled": True, "next_run_at": ago(-30),
        "tracked": True, "last_outcome": "failure", "last_finished_at": ago(5),
        "last_success_at": ago(60), "consecutive_failures": 2, "last_error": "KeyError: 'x'",
        "reference_at": ago(60), "period": 60.0,
    }  # fmt: skip
    values.update(overrides)
    return values


LATE = health_row(
    "late",
    consecutive_failures=0,
    last_outcome="success",
    last_success_at=ago(600),
    reference_at=ago(600),
)


def test_failing_and_overdue_tasks_are_said_apart_from_the_verdict() -> None:
    found = stale_cluster(
        task_health=status.TaskHealth(
            failing_count=2,
            overdue_count=1,
            unhealthy_count=12,
            worst=[LATE, health_row("flaky")],
            overdue_factor=2.0,
        )
    )
    text = status.render(found)
    lines = text.splitlines()
    assert lines[0] == f"verdict: {found.verdict.message}"  # the verdict stays the cluster's
    assert lines[1] == (
        "tasks: 2 schedule(s) failing, 1 overdue (see Task health; not part of the verdict, "
        "which is about the scheduler)"
    )
    section = text.split("\nTask health")[1].split("\n\n")[0].splitlines()
    assert section[0] == (
        " (outcomes from tracking workers): 2 failing, 1 overdue (no success for over 2 periods)"
    )
    assert section[1].split() == ["NAME", "HEALTH", "LAST", "SUCCESS", "LAST", "ERROR"]
    assert section[2].split()[:4] == ["late", "overdue", "10m", "10m00s"]
    assert section[3].split()[:5] == ["flaky", "failing", "x2", "1m00s", "ago"]
    assert section[4] == "  ... and 10 more (pg-beat schedules list)"

    data = json.loads(status.dumps(status.as_json(found)))["task_health"]
    assert {k: data[k] for k in ("failing_count", "overdue_count", "unhealthy_count")} == {
        "failing_count": 2, "overdue_count": 1, "unhealthy_count": 12,
    }  # fmt: skip
    assert data["overdue_factor"] == 2.0
    late, flaky = data["schedules"]
    assert (late["name"], late["state"], late["overdue"], late["overdue_for"]) == (
        "late", "overdue", True, 600.0,
    )  # fmt: skip
    assert (flaky["state"], flaky["label"], flaky["last_error"]) == (
        "failing", "failing x2", "KeyError: 'x'",
    )  # fmt: skip
    assert flaky["last_success_at"] == "2026-12-01T08:59:00+00:00"


def test_no_task_line_when_every_task_is_fine() -> None:
    clean = status.TaskHealth(0, 0, 0, [], 2.0)
    text = status.render(stale_cluster(task_health=clean))
    assert "\ntasks:" not in text
    assert "Task health (outcomes from tracking workers): 0 failing, 0 overdue" in text
    assert "  none failing or overdue" in text


def test_dumps_compact_is_one_line() -> None:
    assert status.dumps({"a": [1, NOW]}, compact=True) == '{"a":[1,"2026-12-01T09:00:00+00:00"]}'
