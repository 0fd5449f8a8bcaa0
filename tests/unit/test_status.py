"""Cluster verdicts and status rendering from plain rows and a fixed database clock."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pg_beat import status

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


IDLE = {"state": "idle", "wait_event_type": "Client", "wait_event": "ClientRead", "blocked_by": []}
STANDBY_WAIT = {"wait_event": "advisory", "blocked_by": [{"pid": 200, "state": "idle"}]}


@pytest.mark.parametrize(
    ("row", "kwargs", "state", "needles"),
    [
        (None, {}, status.NO_LEADER, ["never taken"]),
        (lease(holder=None, epoch=0), {}, status.NO_LEADER, ["never taken"]),
        (
            lease(backend_pid=None, expires_at=ago(3)),
            {},
            status.NO_LEADER,
            ["'alpha' released the lease (epoch 4)"],
        ),
        (
            lease(backend_alive=False),
            {},
            status.NO_LEADER,
            ["session of 'alpha'", "backend 200", "is gone"],
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
    ],
)
def test_verdict(
    row: dict[str, Any] | None, kwargs: dict[str, Any], state: str, needles: list[str]
) -> None:
    found = status.verdict(row, NOW, **kwargs)
    assert found.state == state, found.message
    assert found.message.startswith(f"{state}: ")
    assert "\n" not in found.message
    for needle in needles:
        assert needle in found.message, found.message
    assert found.healthy is (state == status.HEALTHY)


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


def test_json_and_text_of_a_stale_cluster() -> None:
    row = lease(heartbeat_at=ago(12), expires_at=ago(7))
    hung = [backend(201, "pg_beat:alpha:dispatch")]
    found = status.ClusterStatus(
        group="default",
        now=NOW,
        lease=row,
        replicas=[
            {
                "name": "alpha",
                "role": "leader",
                "host": "host-a",
                "pid": 100,
                "version": "0.1.0",
                "backend_pid": 200,
                "started_at": ago(600),
                "last_seen_at": ago(12),
                "last_seen_age": timedelta(seconds=12),
            },
        ],
        lock=[
            {
                "pid": 200,
                "granted": True,
                "application_name": "pg_beat:alpha:leader",
                "state": "idle",
                "client_addr": None,
                "backend_start": ago(600),
                "query": "SELECT 1",
                "state_age": timedelta(seconds=12),
            },
        ],
        blocked=hung,
        leader_backends=hung,
        failovers=[
            {
                "epoch": 4,
                "holder": "alpha",
                "host": "host-a",
                "pid": 100,
                "acquired_at": ago(60),
                "ended_at": None,
                "reason": "free",
                "previous_holder": None,
            },
        ],
        next_due=[
            {
                "name": "tick",
                "task": "app.tick",
                "kind": "interval",
                "interval_seconds": 30.0,
                "next_run_at": ago(-5),
                "due_in": timedelta(seconds=5),
            },
        ],
        long_transactions=[
            {
                "pid": 999,
                "application_name": "psql",
                "state": "idle in transaction",
                "query": "SELECT * FROM pg_beat_schedules FOR UPDATE",
                "xact_age": timedelta(seconds=31),
                "tables": ["pg_beat_schedules"],
            }
        ],
        verdict=status.verdict(row, NOW, leader_backends=hung),
        max_stall=10.0,
    )
    data = json.loads(status.dumps(status.as_json(found)))
    assert set(data) == {
        "group", "db_now", "verdict", "lease", "replicas", "lock", "blocked", "leader_backends",
        "failovers", "next_due", "long_transactions",
    }  # fmt: skip
    assert data["verdict"]["state"] == status.LEADER_STALE
    assert data["lease"]["status"] == "stale"
    assert data["lease"]["heartbeat_age"] == 12.0 and data["lease"]["expires_in"] == -7.0
    assert data["lock"][0]["role"] == "holder"
    assert data["replicas"][0]["last_seen_age"] == 12.0
    assert data["leader_backends"][0]["blocked_by"][0]["pid"] == 999
    assert data["next_due"] == [
        {"name": "tick", "task": "app.tick", "schedule": "every 30s",
         "next_run_at": "2026-12-01T09:00:05+00:00", "due_in": 5.0},
    ]  # fmt: skip

    text = status.render(found)
    assert text.splitlines()[0] == f"verdict: {found.verdict.message}"
    for title in ("Lease", "Leader's backends", "Replicas", "Advisory lock",
                  "Blocked pg_beat backends", "Recent terms (failovers)", "Next due"):  # fmt: skip
        assert f"\n{title}\n" in text
    assert "Lock/transactionid" in text and "999 (psql, idle in transaction)" in text
    assert "Long transactions holding locks on pg_beat tables" in text
    assert data["long_transactions"][0]["xact_age"] == 31.0
