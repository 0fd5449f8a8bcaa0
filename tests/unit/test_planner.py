"""The planner, pure: due rows and the database time in, runs, schedule advances and claims out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from support.env import require_module

from pg_beat.config import Settings
from pg_beat.dispatch.planner import Plan, Planner, expiry
from pg_beat.downtime import Term
from pg_beat.publish.ticks import task_id_for
from pg_beat.store.claims import Blocker

UTC = timezone.utc
NOW = datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC)


def row(name: str = "s", **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": abs(hash(name)) % 10_000,
        "name": name,
        "task": "t.task",
        "kind": "interval",
        "interval_seconds": 60.0,
        "cron_minute": "*",
        "cron_hour": "*",
        "cron_day_of_week": "*",
        "cron_day_of_month": "*",
        "cron_month_of_year": "*",
        "timezone": "UTC",
        "solar_event": None,
        "latitude": None,
        "longitude": None,
        "clocked_at": None,
        "args": [],
        "kwargs": {},
        "options": {},
        "enabled": True,
        "one_off": False,
        "start_time": None,
        "end_time": None,
        "description": "",
        "misfire_policy": None,
        "catch_up_limit": None,
        "overlap_policy": None,
        "max_runtime": None,
        "run_once": None,
        "buffered_due_at": None,
        "next_run_at": NOW,
        "last_due_at": None,
        "resume_at": None,
        "run_once_at": None,
        "updated_at": NOW - timedelta(days=1),
    }
    base.update(values)
    return base


@pytest.fixture
def planner() -> Planner:
    return Planner(Settings(database_url="postgresql://x/y", catch_up_limit=3))


def test_an_on_time_tick_is_claimed_and_the_grid_moves_on(planner: Planner) -> None:
    plan = planner.claim([row()], NOW, epoch=4, max_ticks=500)
    (run,) = plan.runs
    assert (run.status, run.due_at, run.task_id) == (
        "claimed",
        NOW,
        task_id_for("default", "s", NOW),
    )
    (advance,) = plan.advances
    assert (advance.next_run_at, advance.last_due_at) == (NOW + timedelta(minutes=1), NOW)
    (claim,) = plan.claims.values()
    assert (claim.epoch, claim.late, claim.expires_at) == (4, False, None)
    assert not plan.behind


def test_a_week_late_fire_once_row_sends_one_tick_then_lands_on_the_grid(planner: Planner) -> None:
    due = NOW - timedelta(days=7)
    plan = planner.claim([row(next_run_at=due)], NOW, epoch=1, max_ticks=500)
    assert [(r.due_at, r.status) for r in plan.runs] == [(due, "claimed")]
    (claim,) = plan.claims.values()
    assert claim.late
    (advance,) = plan.advances
    assert advance.next_run_at is not None and advance.next_run_at > NOW - timedelta(seconds=1)
    assert (advance.next_run_at - due).total_seconds() % 60 == 0


def test_catch_up_records_the_oldest_ticks_up_to_its_limit(planner: Planner) -> None:
    due = NOW - timedelta(minutes=10)
    plan = planner.claim([row(next_run_at=due, misfire_policy="catch_up")], NOW, 1, 500)
    assert [r.due_at for r in plan.runs] == [due + timedelta(minutes=k) for k in range(3)]


def test_max_ticks_caps_a_claim_and_says_it_is_behind(planner: Planner) -> None:
    rows = [row(f"s{i}") for i in range(10)]
    plan = planner.claim(rows, NOW, 1, max_ticks=4)
    assert len(plan.runs) == 4 and plan.behind


def test_a_tick_past_its_expiry_is_recorded_expired_not_claimed(planner: Planner) -> None:
    late = NOW - timedelta(minutes=5)
    plan = planner.claim([row(next_run_at=late, options={"expires": 60})], NOW, 1, 500)
    assert [r.status for r in plan.runs] == ["expired"] and plan.claims == {}
    assert expiry({"expire_seconds": 30}, NOW) == NOW + timedelta(seconds=30)
    assert expiry({}, NOW) is None


def test_skip_records_a_late_tick_as_skipped(planner: Planner) -> None:
    late = NOW - timedelta(minutes=5)
    plan = planner.claim([row(next_run_at=late, misfire_policy="skip")], NOW, 1, 500)
    assert [r.status for r in plan.runs] == ["skipped"] and plan.claims == {}


def test_a_row_made_invalid_by_hand_is_failed_and_parked(planner: Planner) -> None:
    plan = planner.claim([row(options={"task_id": "x"}), row("ok")], NOW, 1, 500)
    statuses = {r.schedule: r.status for r in plan.runs}
    assert statuses == {"s": "failed", "ok": "claimed"}
    (failed,) = [r for r in plan.runs if r.status == "failed"]
    assert failed.error is not None and "task_id" in failed.error
    parked = {a.schedule_id: a for a in plan.advances}[row()["id"]]
    assert parked.next_run_at is None and parked.error == failed.error
    assert [name for name, _ in plan.parked] == ["s"]


def test_a_run_now_tick_resumes_the_grid(planner: Planner) -> None:
    planned = NOW + timedelta(minutes=1)
    plan = planner.claim([row(next_run_at=NOW, resume_at=planned)], NOW, 1, 500)
    (advance,) = plan.advances
    assert (advance.next_run_at, advance.last_due_at) == (planned, None)


# --- run now of a disabled schedule (run_once_at) ----------------------------------------------


def test_a_disabled_rows_run_once_tick_is_claimed_and_its_grid_left_alone(
    planner: Planner,
) -> None:
    asked = NOW - timedelta(seconds=2)
    stale = NOW - timedelta(days=3)  # where its grid stood when it was disabled
    plan = planner.claim([row(enabled=False, next_run_at=stale, run_once_at=asked)], NOW, 7, 500)
    assert [(r.due_at, r.status, r.task_id) for r in plan.runs] == [
        (asked, "claimed", task_id_for("default", "s", asked))
    ]
    (claim,) = plan.claims.values()
    assert (claim.due_at, claim.epoch, claim.late) == (asked, 7, False)
    (advance,) = plan.advances
    assert (advance.grid, advance.once, advance.last_due_at) == (False, True, None)
    assert not plan.behind


def test_an_enabled_row_due_on_its_grid_and_asked_once_claims_both_ticks_once(
    planner: Planner,
) -> None:
    asked = NOW - timedelta(seconds=5)
    plan = planner.claim([row(run_once_at=asked)], NOW, 1, 500)
    assert [r.due_at for r in plan.runs] == [asked, NOW]  # oldest first
    assert set(plan.claims) == {(row()["id"], asked), (row()["id"], NOW)}
    (advance,) = plan.advances
    assert (advance.grid, advance.once) == (True, True)
    assert (advance.next_run_at, advance.last_due_at) == (NOW + timedelta(minutes=1), NOW)


def test_a_run_once_tick_at_a_grid_due_time_is_one_tick(planner: Planner) -> None:
    plan = planner.claim([row(run_once_at=NOW)], NOW, 1, 500)
    assert [r.due_at for r in plan.runs] == [NOW]
    (advance,) = plan.advances
    assert (advance.grid, advance.once) == (True, True)


def test_an_enabled_row_asked_once_before_its_grid_time_keeps_its_grid(
    planner: Planner,
) -> None:
    """Enabled after a run-now while disabled, before the leader took the tick."""
    asked = NOW - timedelta(seconds=1)
    later = NOW + timedelta(minutes=10)
    plan = planner.claim([row(next_run_at=later, run_once_at=asked)], NOW, 1, 500)
    assert [r.due_at for r in plan.runs] == [asked]
    (advance,) = plan.advances
    assert (advance.grid, advance.once) == (False, True)


def test_a_run_once_time_still_ahead_is_left_for_later(planner: Planner) -> None:
    ahead = NOW + timedelta(minutes=5)
    plan = planner.claim([row(run_once_at=ahead)], NOW, 1, 500)
    assert [r.due_at for r in plan.runs] == [NOW]
    (advance,) = plan.advances
    assert (advance.grid, advance.once) == (True, False)
    assert planner.claim([row(enabled=False, run_once_at=ahead)], NOW, 1, 500) == Plan()


def test_a_run_once_tick_is_sent_whatever_the_misfire_policy_but_expires(
    planner: Planner,
) -> None:
    asked = NOW - timedelta(hours=1)  # waited through downtime (no term: all before is down)
    skip = row(enabled=False, misfire_policy="skip", run_once_at=asked)
    plan = planner.claim([skip], NOW, 1, 500)
    assert [r.status for r in plan.runs] == ["claimed"]
    (claim,) = plan.claims.values()
    assert claim.late
    expiring = row(enabled=False, run_once_at=asked, options={"expires": 60})
    plan = planner.claim([expiring], NOW, 1, 500)
    assert [r.status for r in plan.runs] == ["expired"] and plan.claims == {}
    assert [(a.grid, a.once) for a in plan.advances] == [(False, True)]


def test_a_run_once_tick_of_an_invalid_row_is_failed_and_the_row_parked(
    planner: Planner,
) -> None:
    asked = NOW - timedelta(seconds=1)
    bad = row(enabled=False, run_once_at=asked, options={"task_id": "x"})
    plan = planner.claim([bad], NOW, 1, 500)
    assert [(r.due_at, r.status) for r in plan.runs] == [(asked, "failed")]
    (advance,) = plan.advances
    assert advance.error is not None and "task_id" in advance.error
    assert (advance.next_run_at, advance.grid, advance.once) == (None, True, True)


def test_planning_parks_an_invalid_definition_and_plans_an_invalid_payload(
    planner: Planner,
) -> None:
    rows = [row("bad", next_run_at=None, cron_minute="61", kind="crontab"),
            row("payload", next_run_at=None, options={"nope": 1})]  # fmt: skip
    plans, parked = planner.plan(rows, NOW)
    assert [i for i, _ in parked] == [rows[0]["id"]] and "61" in parked[0][1]
    # Its due time comes, and then it is recorded failed (see above), with its due time known.
    assert [i for i, _ in plans] == [rows[1]["id"]]


def orphan(schedule: str, minutes_late: float, run_id: int, **values: Any) -> dict[str, Any]:
    due = NOW - timedelta(minutes=minutes_late)
    base = {
        "id": run_id,
        "schedule_id": abs(hash(schedule)) % 10_000,
        "schedule_name": schedule,
        "due_at": due,
        "task_id": task_id_for("default", schedule, due),
        "epoch": 3,
        "task": "t.task",
        "args": [],
        "kwargs": {},
        "options": {},
        "misfire_policy": None,
        "catch_up_limit": None,
    }
    base.update(values)
    return base


def test_orphans_go_through_expiry_and_misfire_policy(planner: Planner) -> None:
    rows = [
        orphan("on-time", 0.001, 1),
        orphan("once", 3, 2),
        orphan("once", 2, 3),
        orphan("skipping", 3, 4, misfire_policy="skip"),
        orphan("catching", 5, 5, misfire_policy="catch_up"),
        orphan("catching", 4, 6, misfire_policy="catch_up"),
        orphan("catching", 3, 7, misfire_policy="catch_up"),
        orphan("catching", 2, 8, misfire_policy="catch_up"),
        orphan("expiring", 3, 9, options={"expires": 60}),
    ]
    send, statuses = planner.orphans(rows, NOW)
    assert [c.run_id for c in send] == [1, 2, 5, 6, 7]  # catch_up limit 3; fire_once: oldest
    assert all(c.epoch == 3 and c.late for c in send)  # the epoch that claimed it
    assert dict(statuses) == {3: "skipped", 4: "skipped", 8: "skipped", 9: "expired"}


# --- lateness is downtime only (invariant 19) -----------------------------------------------

TERM = Term(NOW - timedelta(minutes=5), NOW - timedelta(hours=1))  # began after an hour down


def test_a_burst_in_this_term_is_all_claimed_however_long_it_queued() -> None:
    """Several hundred ``skip`` ticks due at one instant, decided 30 s later (the leader was busy
    with them): none is a misfire, every one is claimed."""
    settings = Settings(database_url="postgresql://x/y", misfire_grace_time=1.0)
    planner = Planner(settings, clock=lambda: 0.0)  # no time budget in the way here
    due = NOW - timedelta(seconds=30)
    rows = [row(f"b{i}", id=i, next_run_at=due, misfire_policy="skip") for i in range(300)]
    plan = planner.claim(rows, NOW, 1, max_ticks=500, term=TERM)
    assert [r.status for r in plan.runs] == ["claimed"] * 300
    assert {a.next_run_at for a in plan.advances} == {due + timedelta(minutes=1)}


def test_counter_case_a_tick_due_in_real_downtime_goes_through_its_policy() -> None:
    planner = Planner(Settings(database_url="postgresql://x/y", misfire_grace_time=1.0))
    down = TERM.started - timedelta(minutes=30)  # no leader then
    plan = planner.claim([row(next_run_at=down, misfire_policy="skip")], NOW, 1, 500, TERM)
    assert [r.status for r in plan.runs] == ["skipped"]


def test_orphans_of_a_failover_shorter_than_the_grace_go_out_under_every_policy() -> None:
    """The gap counts, not the time since the due time: a tick claimed late in a burst, then a
    failover, then the wait for the dead epoch's lease to expire, is still not late."""
    planner = Planner(Settings(database_url="postgresql://x/y", misfire_grace_time=3.0))
    term = Term(NOW - timedelta(seconds=5), NOW - timedelta(seconds=7))  # a 2 s gap
    rows = [
        orphan("skipping", 1, 1, misfire_policy="skip"),
        orphan("once", 1, 2),
        orphan("once", 0.5, 3),
        orphan("catching", 1, 4, misfire_policy="catch_up"),
    ]
    send, statuses = planner.orphans(rows, NOW, term)
    assert [c.run_id for c in send] == [1, 2, 3, 4] and statuses == []


def test_counter_case_orphans_of_a_long_gap_go_through_their_policy() -> None:
    planner = Planner(Settings(database_url="postgresql://x/y", misfire_grace_time=3.0))
    term = Term(NOW - timedelta(seconds=5), NOW - timedelta(minutes=2))  # 115 s without leader
    rows = [
        orphan("skipping", 3, 1, misfire_policy="skip"),
        orphan("once", 3, 2),
        orphan("once", 2.5, 3),
        orphan("catching", 3, 4, misfire_policy="catch_up"),
    ]
    send, statuses = planner.orphans(rows, NOW, term)
    assert [c.run_id for c in send] == [2, 4]
    assert dict(statuses) == {1: "skipped", 3: "skipped"}


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_the_default_grace_covers_an_ordinary_failover(pool_mode: str) -> None:
    """With the default settings the holder renews, claims a ``skip`` tick and dies just before
    its next renewal. In session mode a standby takes over at once, the lease unexpired; behind
    a transaction pool the lease expires a TTL after the renewal and a standby, checking every
    heartbeat, takes over within one more. Either way the claimed tick goes out, and so does
    one due then that nobody claimed."""
    settings = Settings(database_url="postgresql://x/y")
    renewed = NOW - timedelta(seconds=36)
    died = settings.heartbeat_interval
    took = settings.lease_ttl + settings.heartbeat_interval if pool_mode == "transaction" else died
    takeover = renewed + timedelta(seconds=took + 0.01)
    term = Term.after(
        takeover,
        renewed + timedelta(seconds=settings.lease_ttl),
        takeover + timedelta(microseconds=1),  # taken over: ended by this term's start
        settings.lease_ttl,
    )
    assert term.predecessor_alive == renewed
    planner = Planner(settings)
    due = renewed + timedelta(milliseconds=1)
    send, statuses = planner.orphans(
        [orphan("s", 0, 1, misfire_policy="skip", due_at=due)], NOW, term
    )
    assert len(send) == 1 and statuses == []
    plan = planner.claim([row(next_run_at=due, misfire_policy="skip")], NOW, 2, 500, term)
    assert [r.status for r in plan.runs] == ["claimed"]


# --- bounded planning (invariant 11) --------------------------------------------------------


class SlowClock:
    """A clock that moves ``step`` seconds each time it is read: each row costs about that."""

    def __init__(self, step: float) -> None:
        self.step, self.now = step, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_planning_new_rows_stops_at_its_budget_and_the_rest_is_planned_later() -> None:
    planner = Planner(Settings(database_url="postgresql://x/y"), clock=SlowClock(0.004))
    rows = [row(f"n{i}", id=i, next_run_at=None) for i in range(10)]
    planned: list[list[int]] = []
    left = rows
    while left:
        plans, parked = planner.plan(left, NOW)
        assert parked == [] and plans
        planned.append([i for i, _ in plans])
        left = left[len(plans) :]
    # 15 ms at 4 ms a row: the budget is passed after the 4th; each transaction takes 4.
    assert planned == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_planning_takes_at_least_one_row_however_slow() -> None:
    planner = Planner(Settings(database_url="postgresql://x/y"), clock=SlowClock(10.0))
    plans, _ = planner.plan([row("a", next_run_at=None), row("b", next_run_at=None)], NOW)
    assert len(plans) == 1


def test_expensive_solar_rows_are_planned_over_several_transactions() -> None:
    require_module("ephem")
    planner = Planner(Settings(database_url="postgresql://x/y"))
    solar = {"kind": "solar", "solar_event": "sunrise", "next_run_at": None}
    rows = [row(f"dawn{i}", id=i, latitude=50.0 + i / 100, longitude=10.0, **solar)
            for i in range(1000)]  # fmt: skip
    first, _ = planner.plan(rows, NOW)
    assert 0 < len(first) < len(rows)  # about 0.1 ms a row: 100 ms for all
    done = len(first)
    while done < len(rows):
        plans, _ = planner.plan(rows[done:], NOW)
        done += len(plans)
    assert done == len(rows)


def test_deciding_due_rows_stops_at_its_budget() -> None:
    planner = Planner(Settings(database_url="postgresql://x/y"), clock=SlowClock(0.004))
    rows = [row(f"d{i}", id=i) for i in range(20)]
    plan = planner.claim(rows, NOW, 1, max_ticks=500)
    # 30 ms at 4 ms a row (one read to start, one per row after the first)
    assert len(plan.runs) == 8 and plan.behind


def test_a_catch_up_limit_over_the_bound_set_by_hand_is_failed_and_parked(
    planner: Planner,
) -> None:
    plan = planner.claim([row(misfire_policy="catch_up", catch_up_limit=5000)], NOW, 1, 500)
    (run,) = plan.runs
    assert run.status == "failed" and run.error is not None
    assert "catch_up_limit" in run.error and "at most 1000" in run.error and "5000" in run.error
    assert [a.next_run_at for a in plan.advances] == [None]


# --- overlap policies ----------------------------------------------------------------------


def blocker(minutes_ago: float = 1.0, gone: bool = False, task_id: str = "prev") -> Blocker:
    return Blocker(
        run_id=77, task_id=task_id, since=NOW - timedelta(minutes=minutes_ago), worker_gone=gone
    )


def claim_with(planner: Planner, r: dict[str, Any], b: Blocker | None) -> Plan:
    return planner.claim([r], NOW, epoch=1, max_ticks=500, blockers={r["id"]: b} if b else {})


def test_skip_records_a_tick_due_while_the_previous_run_goes_on_as_skipped(
    planner: Planner,
) -> None:
    plan = claim_with(planner, row(overlap_policy="skip"), blocker())
    (run,) = plan.runs
    assert (run.status, run.reason) == ("skipped", "overlap: previous run prev still running")
    assert not plan.claims and not plan.lost
    (advance,) = plan.advances
    assert advance.next_run_at == NOW + timedelta(minutes=1)  # the grid moves on
    assert not advance.buffer


def test_counter_case_skip_without_an_unfinished_run_sends(planner: Planner) -> None:
    plan = claim_with(planner, row(overlap_policy="skip"), None)
    assert [(r.status, r.reason) for r in plan.runs] == [("claimed", None)]
    assert len(plan.claims) == 1


def test_the_setting_gives_the_policy_of_a_row_without_one() -> None:
    planner = Planner(Settings(database_url="postgresql://x/y", overlap_policy="skip"))
    assert planner.gated(row()) and not planner.gated(row(overlap_policy="allow"))
    plan = claim_with(planner, row(), blocker())
    assert [r.status for r in plan.runs] == ["skipped"]


def test_allow_reads_no_blocker_and_sends_as_before(planner: Planner) -> None:
    assert not planner.gated(row())
    plan = claim_with(planner, row(overlap_policy="allow"), blocker())
    assert [(r.status, r.reason) for r in plan.runs] == [("claimed", None)]
    assert not plan.lost


@pytest.mark.parametrize(
    ("values", "b"),
    [
        pytest.param({}, blocker(minutes_ago=61), id="past-the-setting"),
        pytest.param({"max_runtime": 30.0}, blocker(minutes_ago=1), id="past-its-own"),
        pytest.param({}, blocker(minutes_ago=1, gone=True), id="worker-gone"),
    ],
)
def test_a_run_past_max_runtime_or_of_a_gone_worker_is_lost_and_blocks_no_more(
    planner: Planner, values: dict[str, Any], b: Blocker
) -> None:
    plan = claim_with(planner, row(overlap_policy="skip", **values), b)
    assert plan.lost == [77]
    assert [(r.status, r.reason) for r in plan.runs] == [("claimed", None)]


def test_counter_case_a_run_within_its_own_max_runtime_still_blocks(planner: Planner) -> None:
    plan = claim_with(planner, row(overlap_policy="skip", max_runtime=7200.0), blocker(61))
    assert not plan.lost and [r.status for r in plan.runs] == ["skipped"]


def test_buffer_one_holds_the_first_blocked_tick_back_and_skips_the_next(
    planner: Planner,
) -> None:
    plan = claim_with(planner, row(overlap_policy="buffer_one"), blocker())
    assert not plan.runs and not plan.claims  # held back: no run row yet
    (advance,) = plan.advances
    assert (advance.buffer, advance.buffered_due_at) == (True, NOW)
    assert advance.next_run_at == NOW + timedelta(minutes=1)
    held = row(overlap_policy="buffer_one", buffered_due_at=NOW - timedelta(minutes=1))
    plan = claim_with(planner, held, blocker())
    assert [(r.status, r.reason) for r in plan.runs] == [
        ("skipped", "overlap: a tick is already buffered")
    ]
    assert not plan.advances[0].buffer  # the one held stays


def test_a_held_tick_goes_out_with_its_own_due_time_once_the_blocker_is_gone(
    planner: Planner,
) -> None:
    held_at = NOW - timedelta(minutes=10)  # long past the grace: still no misfire
    r = row(
        overlap_policy="buffer_one",
        buffered_due_at=held_at,
        next_run_at=NOW + timedelta(seconds=20),
        misfire_policy="skip",
    )
    plan = claim_with(planner, r, None)
    (run,) = plan.runs
    assert (run.due_at, run.status, run.task_id) == (
        held_at,
        "claimed",
        task_id_for("default", "s", held_at),
    )
    assert run.reason == "buffered: sent when the previous run finished"
    (claim,) = plan.claims.values()
    assert not claim.late  # sent at once, not behind a backlog
    (advance,) = plan.advances
    assert (advance.grid, advance.buffer, advance.buffered_due_at) == (False, True, None)


def test_counter_case_a_held_tick_past_its_expiry_is_recorded_expired(planner: Planner) -> None:
    r = row(
        overlap_policy="buffer_one",
        buffered_due_at=NOW - timedelta(minutes=10),
        next_run_at=NOW + timedelta(seconds=20),
        options={"expires": 60},
    )
    plan = claim_with(planner, r, None)
    assert [r.status for r in plan.runs] == ["expired"] and not plan.claims
    assert plan.advances[0].buffer and plan.advances[0].buffered_due_at is None


def test_a_held_tick_sent_with_a_grid_tick_due_holds_that_one_back(planner: Planner) -> None:
    held_at = NOW - timedelta(seconds=20)
    plan = claim_with(planner, row(overlap_policy="buffer_one", buffered_due_at=held_at), None)
    assert [(r.due_at, r.status) for r in plan.runs] == [(held_at, "claimed")]
    assert plan.advances[0].buffered_due_at == NOW  # the grid's tick waits for the held one


def test_catch_up_under_skip_sends_the_first_missed_tick_only(planner: Planner) -> None:
    due = NOW - timedelta(minutes=10)
    r = row(overlap_policy="skip", misfire_policy="catch_up", next_run_at=due)
    plan = planner.claim([r], NOW, 1, 500)
    statuses = [(run.status, run.reason) for run in plan.runs]
    first = task_id_for("default", "s", due)
    assert statuses == [
        ("claimed", None),
        ("skipped", f"overlap: previous run {first} still running"),
        ("skipped", f"overlap: previous run {first} still running"),
    ]


def test_a_tick_skipped_by_misfire_and_overlap_is_one_row(planner: Planner) -> None:
    r = row(overlap_policy="skip", misfire_policy="skip", next_run_at=NOW - timedelta(hours=1))
    plan = planner.claim([r], NOW, 1, 500, None, {r["id"]: blocker()})
    assert [(run.status, run.reason) for run in plan.runs] == [("skipped", None)]


def test_an_unknown_policy_set_by_hand_is_failed_and_parked(planner: Planner) -> None:
    r = row(overlap_policy="sometimes")
    assert not planner.gated(r)
    plan = planner.claim([r], NOW, epoch=1, max_ticks=500)
    (run,) = plan.runs
    assert run.status == "failed" and "overlap policy 'sometimes'" in (run.error or "")


@pytest.mark.parametrize(
    ("value", "setting", "expected"),
    [(None, True, True), (None, False, False), (False, True, False), (True, False, True)],
)
def test_run_once_comes_from_the_row_or_the_setting(
    value: bool | None, setting: bool, expected: bool
) -> None:
    planner = Planner(Settings(database_url="postgresql://x/y", run_once=setting))
    plan = planner.claim([row(run_once=value)], NOW, epoch=1, max_ticks=500)
    assert [c.run_once for c in plan.claims.values()] == [expected]
    sent, _ = planner.orphans([orphan("o", 0.0, 5, run_once=value)], NOW)
    assert [c.run_once for c in sent] == [expected]
