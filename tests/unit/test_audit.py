"""The run audit's comparison (pg_beat.audit): expected due times, each finding and its
counter-case, leaderless gaps, the bounds. Pure: rows are built by hand, ``now`` is given."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pg_beat import audit
from pg_beat.audit import Finding, Gap, LeaseRow, RunView, ScheduleView, TermRow, Window
from pg_beat.exceptions import AuditTooLarge
from pg_beat.publish.ticks import task_id_for
from pg_beat.schedules import ScheduleSpec

UTC = timezone.utc
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def window(**overrides: Any) -> Window:
    values: dict[str, Any] = {
        "since": at(0),
        "until": at(60),
        "now": at(70),
        "settle": 60.0,
        "grace": 10.0,
        "max_runtime": 86400.0,  # runs left unfinished are not lost unless a test says so
    }
    values.update(overrides)
    return Window(**values)


def every_minute(**overrides: Any) -> ScheduleView:
    """A 1-minute interval created long ago, whose grid is on whole minutes."""
    values: dict[str, Any] = {
        "id": 1,
        "name": "tick",
        "spec": ScheduleSpec("tick", "interval", interval_seconds=60.0),
        "enabled": True,
        "created_at": at(-600),
        "updated_at": at(-600),
        "next_run_at": at(61),
        "last_due_at": at(60),
    }
    values.update(overrides)
    return ScheduleView(**values)


def sent(minute: float, **overrides: Any) -> RunView:
    due = at(minute)
    values: dict[str, Any] = {
        "due_at": due,
        "task_id": task_id_for("default", "tick", due),
        "status": "sent",
        "claimed_at": due,
        "sent_at": due + timedelta(milliseconds=20),
    }
    values.update(overrides)
    return RunView(**values)


def clean_runs() -> list[RunView]:
    return [sent(m) for m in range(1, 61)]


def kinds(items: list[Finding]) -> list[str]:
    return [f.kind for f in items]


def run_audit(
    schedule: ScheduleView,
    runs: list[RunView],
    win: Window | None = None,
    gaps: list[Gap] | None = None,
) -> list[Finding]:
    return list(audit.audit_schedule(schedule, runs, win or window(), gaps or []))


# --- expected due times --------------------------------------------------------------------


def test_a_schedule_with_every_run_is_clean() -> None:
    assert run_audit(every_minute(), clean_runs()) == []


def test_a_due_time_without_a_run_row_is_missing_with_its_task_id() -> None:
    runs = [r for r in clean_runs() if r.due_at != at(30)]
    (found,) = run_audit(every_minute(), runs)
    assert (found.kind, found.due_at) == ("missing", at(30))
    assert found.task_id == task_id_for("default", "tick", at(30))
    assert found.why == ""


def test_missing_ticks_at_both_ends_of_the_window() -> None:
    runs = clean_runs()[1:-1]
    assert [(f.kind, f.due_at) for f in run_audit(every_minute(), runs)] == [
        ("missing", at(1)),
        ("missing", at(60)),
    ]


def test_due_times_before_the_schedule_was_created_are_not_missing() -> None:
    # Created just before minute 20 and planned at 20 (an interval first runs one interval
    # after it is planned): nothing is due before 21, though the grid passes 20.
    schedule = every_minute(created_at=at(19.99), updated_at=at(19.99))
    found = run_audit(schedule, [sent(m) for m in range(21, 61)])
    assert kinds(found) == ["partly_checked"]
    assert "from 2026-12-01 12:20:59.400Z" in found[0].what


def test_a_schedule_created_while_no_leader_ran_is_checked_from_the_takeover() -> None:
    # Created at 10 with no leader until 25: planned at 25, first due at 26 (on that grid).
    schedule = every_minute(created_at=at(10), updated_at=at(10))
    gaps = [Gap(at(5), at(25))]
    found = run_audit(schedule, [sent(m) for m in range(26, 61)], gaps=gaps)
    assert kinds(found) == ["partly_checked"]
    assert "from 2026-12-01 12:26:00Z" in found[0].what
    # No leader since: nothing planned it, nothing is expected.
    assert run_audit(schedule, [], gaps=[Gap(at(5), None)]) == []


def test_a_row_inserted_by_hand_with_an_older_updated_at_is_checked_from_its_creation() -> None:
    schedule = every_minute(
        spec=ScheduleSpec("tick", "crontab"), created_at=at(30.5), updated_at=at(-600)
    )
    assert kinds(run_audit(schedule, [sent(m) for m in range(31, 61)])) == ["partly_checked"]


def test_an_edit_in_the_window_moves_where_checking_starts() -> None:
    # A crontab edited at minute 30.5: due times before it are not compared with anything.
    schedule = every_minute(
        spec=ScheduleSpec("tick", "crontab"), updated_at=at(30.5), last_due_at=at(60)
    )
    found = run_audit(schedule, [sent(m) for m in range(31, 61)])
    assert kinds(found) == ["partly_checked"]
    found = run_audit(schedule, [sent(m) for m in range(31, 60)])
    assert kinds(found) == ["partly_checked", "missing"]


def test_ticks_due_within_the_settle_time_are_not_judged_yet() -> None:
    runs = clean_runs()[:-1]  # minute 60 has no row yet
    assert run_audit(every_minute(), runs, window(now=at(60.5))) == []
    assert kinds(run_audit(every_minute(), runs, window(now=at(61.5)))) == ["missing"]


def test_a_disabled_schedule_is_checked_up_to_its_last_due_time_only() -> None:
    schedule = every_minute(enabled=False, last_due_at=at(30))
    assert run_audit(schedule, [sent(m) for m in range(1, 31)]) == []
    assert kinds(run_audit(schedule, [sent(m) for m in range(1, 30)])) == ["missing"]
    never_ran = every_minute(enabled=False, last_due_at=None, next_run_at=None)
    assert run_audit(never_ran, []) == []


def test_the_interval_grid_is_the_one_through_the_last_due_time() -> None:
    # A 60 s interval planned at 12:00:07.5: its ticks are at :07.5, never at whole minutes.
    offset = timedelta(seconds=7.5)
    schedule = every_minute(last_due_at=at(59) + offset, next_run_at=at(60) + offset)
    runs = [sent(m, due_at=at(m) + offset) for m in range(0, 60)]
    assert run_audit(schedule, runs) == []
    found = run_audit(schedule, [sent(m) for m in range(1, 61)])  # whole minutes instead
    assert {f.kind for f in found} == {"missing", "unplanned_run"}
    assert found[0].due_at == at(0) + offset


def test_crontab_due_times_follow_the_timezone_across_dst() -> None:
    # 02:30 Berlin does not exist on 2026-03-29: the tick fires at the jump, 03:00 CEST.
    spec = ScheduleSpec(
        "cron", "crontab", cron_minute="30", cron_hour="2", timezone="Europe/Berlin"
    )
    start = datetime(2026, 3, 27, tzinfo=UTC)
    schedule = every_minute(
        name="cron",
        spec=spec,
        created_at=start - timedelta(days=30),
        updated_at=start - timedelta(days=30),
        last_due_at=start + timedelta(days=4),
        next_run_at=start + timedelta(days=5),
    )
    win = window(since=start, until=start + timedelta(days=4), now=start + timedelta(days=5))
    due = [f.due_at for f in run_audit(schedule, [], win)]
    assert due == [
        datetime(2026, 3, 27, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # the jump
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
    ]


def test_a_definition_broken_by_hand_checks_the_run_rows_only() -> None:
    broken = every_minute(spec=ScheduleSpec("tick", "crontab", cron_minute="61"))
    found = run_audit(broken, [sent(5, status="failed", sent_at=None, error="InvalidSchedule")])
    assert kinds(found) == ["partly_checked", "failed"]
    assert "due times not checked" in found[0].what and "'61'" in found[0].what


def test_a_run_at_a_time_the_schedule_does_not_produce_is_info() -> None:
    run_now = sent(30.25)
    found = run_audit(every_minute(), sorted([*clean_runs(), run_now], key=lambda r: r.due_at))
    assert [(f.kind, f.due_at) for f in found] == [("unplanned_run", at(30.25))]


def test_too_many_due_times_is_refused_naming_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = every_minute(spec=ScheduleSpec("tick", "interval", interval_seconds=0.01))
    with pytest.raises(AuditTooLarge, match=r"more than 200000 due times.*MAX_DUE_TIMES"):
        run_audit(tiny, [])  # refused before a single one is enumerated
    monkeypatch.setattr(audit, "MAX_DUE_TIMES", 60)
    cron = every_minute(spec=ScheduleSpec("tick", "crontab"))
    assert len(run_audit(cron, [])) == 60  # exactly the bound: fine
    with pytest.raises(AuditTooLarge, match="'tick'"):
        run_audit(cron, [], window(until=at(61), now=at(70)))


# --- findings per run ----------------------------------------------------------------------


def one_run(run: RunView, schedule: ScheduleView | None = None, **win: Any) -> list[str]:
    return kinds(list(audit.run_findings(schedule or every_minute(), run, window(**win), [])))


def test_late_beyond_the_grace_but_not_within_it() -> None:
    assert one_run(sent(5, sent_at=at(5) + timedelta(seconds=10.5))) == ["late"]
    assert one_run(sent(5, sent_at=at(5) + timedelta(seconds=9.5))) == []


def test_a_buffered_tick_sent_late_is_not_late() -> None:
    buffered = sent(
        5,
        sent_at=at(8),
        reason="buffered: sent when the previous run finished",
    )
    assert one_run(buffered) == []
    assert one_run(replace(buffered, reason="overlap: something else")) == ["late"]


def test_started_twice_only_when_the_body_ran_twice() -> None:
    assert one_run(sent(5, started_at=at(5), bodies=2)) == ["started_twice"]
    # A duplicate delivery acknowledged without running is info, not a finding.
    assert one_run(sent(5, started_at=at(5), bodies=1, duplicates=2)) == ["duplicate_delivery"]


def test_sent_but_never_started_on_a_tracked_schedule() -> None:
    tracked = every_minute(tracked=True)
    assert one_run(sent(5), tracked) == ["never_started"]
    assert one_run(sent(5, started_at=at(5)), tracked) == []
    assert one_run(sent(5), every_minute(tracked=False)) == []  # nobody records starts
    assert one_run(sent(69.5), tracked) == []  # sent within the settle time


def test_unsent_claims_after_the_settle_time() -> None:
    assert one_run(sent(5, status="claimed", sent_at=None)) == ["unsent"]
    assert one_run(sent(69.5, status="claimed", sent_at=None)) == []


@pytest.mark.parametrize(
    ("overrides", "expected", "why"),
    [
        ({"status": "failed", "sent_at": None, "error": "boom"}, "failed", ""),
        ({"outcome": "failure", "outcome_error": "ValueError: x"}, "failed", ""),
        ({"outcome": "lost", "worker": "w1:42"}, "lost", "its worker died"),
        ({"outcome": "revoked"}, "revoked", ""),
        ({"status": "expired", "sent_at": None}, "expired", ""),
        ({"status": "skipped", "sent_at": None}, "skipped", "misfire"),
        (
            {"status": "skipped", "sent_at": None, "reason": "overlap: previous run x"},
            "overlap_skipped",
            "overlap: previous run x",
        ),
    ],
)
def test_each_recorded_fate_is_a_finding_with_why(
    overrides: dict[str, Any], expected: str, why: str
) -> None:
    run = sent(5, started_at=at(5), **overrides)
    (found,) = audit.run_findings(every_minute(), run, window(), [])
    assert found.kind == expected
    assert why in found.why
    assert found.task_id == run.task_id


def test_a_skip_by_the_overlap_policy_is_info_and_a_misfire_skip_a_finding() -> None:
    """The user asked for overlap skips; a misfire's skip follows downtime."""
    overlap = sent(5, status="skipped", sent_at=None, reason="overlap: previous run x")
    (found,) = audit.run_findings(every_minute(), overlap, window(), [])
    assert found.kind in audit.INFO_KINDS
    misfire = sent(5, status="skipped", sent_at=None)
    (found,) = audit.run_findings(every_minute(), misfire, window(), [])
    assert found.kind in audit.FINDING_KINDS


def test_a_run_started_and_unfinished_past_max_runtime_is_lost() -> None:
    """Nobody recorded it lost (an allow schedule's run whose worker died); counter-cases: a
    recent start, a finished run, the schedule's own max_runtime."""
    stuck = sent(5, started_at=at(5), worker="w1:42")
    assert one_run(stuck) == []  # 65 minutes ago, under a max_runtime of a day
    (found,) = audit.run_findings(every_minute(), stuck, window(max_runtime=600.0), [])
    assert found.kind == "lost" and "w1:42" in found.what
    own = every_minute(max_runtime=600.0)
    assert [f.kind for f in audit.run_findings(own, stuck, window(), [])] == ["lost"]
    assert one_run(sent(5, started_at=at(65)), own) == []  # 5 minutes ago
    done = sent(5, started_at=at(5), outcome="success", finished_at=at(6))
    assert list(audit.run_findings(every_minute(), done, window(max_runtime=600.0), [])) == []
    retrying = sent(5, started_at=at(5), outcome="retry")
    assert [f.kind for f in audit.run_findings(own, retrying, window(), [])] == ["lost"]


def test_success_and_a_pending_retry_are_no_findings() -> None:
    assert one_run(sent(5, started_at=at(5), outcome="success")) == []
    assert one_run(sent(5, started_at=at(5), outcome="retry")) == []


# --- leaderless gaps -----------------------------------------------------------------------


def term(
    epoch: int, acquired: float, previous_expires: float | None, ended: float | None
) -> TermRow:
    return TermRow(
        epoch,
        at(acquired),
        None if previous_expires is None else at(previous_expires),
        None if ended is None else at(ended),
    )


def test_gaps_between_terms_as_downtime_counts_them() -> None:
    terms = [
        term(1, -100, None, 10),  # the first term ever; released at minute 10
        term(2, 12, 10.05, 20),  # took over after the release: 10 -> 12 leaderless
        term(3, 25, 21, None),  # took over a crashed leader: its last renewal 21 - ttl
    ]
    lease = LeaseRow(expires_at=at(100), released_at=None)
    gaps = audit.leaderless_gaps(terms, lease, 60.0, at(70))
    assert gaps == [Gap(None, at(-100)), Gap(at(10), at(12)), Gap(at(20), at(25))]


def test_no_gap_after_a_handover_within_the_term() -> None:
    terms = [term(1, -100, None, None), term(2, 5, 5.01, None)]
    # The successor took over the instant the lease expired (ttl 1 s): gap < 1 s, from 5 - ttl.
    gaps = audit.leaderless_gaps(terms, LeaseRow(at(100), None), 60.0, at(70))
    assert gaps[1] == Gap(at(4.01), at(5))


def test_a_lease_that_is_released_or_expired_now_is_an_open_gap() -> None:
    terms = [term(1, -100, None, None)]
    assert audit.leaderless_gaps(terms, LeaseRow(at(50), at(40)), 5.0, at(70))[-1] == Gap(
        at(40), None
    )
    expired = audit.leaderless_gaps(terms, LeaseRow(at(50), None), 60.0, at(70))
    assert expired[-1] == Gap(at(49), None)
    assert audit.leaderless_gaps([], None, 5.0, at(70)) == [Gap(None, None)]


def test_missing_ticks_during_a_leaderless_gap_are_explained() -> None:
    gaps = [Gap(at(20), at(25))]
    runs = [r for r in clean_runs() if r.due_at.minute not in range(21, 25)]
    found = run_audit(every_minute(), runs, gaps=gaps)
    assert [(f.kind, f.due_at) for f in found] == [("missing", at(m)) for m in range(21, 25)]
    assert all("no leader held the lease from 2026-12-01 12:20:00Z" in f.why for f in found)
    # The same tick missing while a leader was alive has no excuse.
    far = [Gap(at(40), at(45))]
    assert all(f.why == "" for f in run_audit(every_minute(), runs, gaps=far))


def test_a_late_send_across_a_gap_is_explained() -> None:
    run = sent(20, sent_at=at(26))
    (found,) = audit.run_findings(every_minute(), run, window(), [Gap(at(20.5), at(25.9))])
    assert found.kind == "late"
    assert "no leader held the lease" in found.why


# --- the report ----------------------------------------------------------------------------


def test_the_report_counts_everything_and_keeps_at_most_the_limit() -> None:
    report = audit.Report(limit=2)
    for item in run_audit(every_minute(), clean_runs()[:50]):
        report.add(item)
    assert report.counts["missing"] == 10
    assert len(report.findings) == 2
    assert report.truncated and not report.clean and report.total == 10
    empty = audit.Report()
    assert empty.clean and not empty.truncated
    assert set(empty.counts) == set(audit.FINDING_KINDS)
