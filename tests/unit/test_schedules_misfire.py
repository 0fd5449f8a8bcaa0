"""Misfire resolution: which ticks are recorded, where the schedule resumes, and what it costs.

Every expected datetime is worked out by hand: ``late`` means older than ``now - grace``; a
due time still within grace is never dropped, it fires on its own next.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from support.env import require_module
from support.specs import cron, every, z

import pg_beat.schedules as schedules
from pg_beat.downtime import Term, late_before
from pg_beat.exceptions import InvalidSchedule
from pg_beat.schedules import Misfire, ScheduleSpec, next_after, resolve_misfire

UTC = timezone.utc
NY = "America/New_York"


Ticks = tuple[tuple[str, bool], ...]


def fires(*times: str) -> Ticks:
    """Ticks sent at these times of 2025-01-01 (``"12:00"``)."""
    return tuple((time, True) for time in times)


def skips(time: str) -> Ticks:
    """One tick recorded as skipped at this time of 2025-01-01."""
    return ((time, False),)


def sent(*moments: str) -> tuple[tuple[datetime, bool], ...]:
    return tuple((z(moment), True) for moment in moments)


def at(moment: str | None) -> datetime | None:
    return None if moment is None else z(moment)


MINUTELY = every(60)
ON_TEN = every(60, start_time=z("2025-01-01 00:00:10"))
ENDS = every(60, end_time=z("2025-01-01 12:03"))
TEN_MINUTES = cron("*/10 * * * *")
ONCE = ScheduleSpec(name="job", kind="clocked", clocked_at=z("2025-01-01 12:00"))


@pytest.mark.parametrize(
    ("spec", "due", "now", "policy", "grace", "limit", "ticks", "passed_over", "next_due"),
    [
        # --- interval, grid through the due time: on time, then 5.5 minutes behind
        (MINUTELY, "12:00", "12:00:05", "fire_once", 30, 3, fires("12:00"), 0, "12:01"),
        (MINUTELY, "12:00", "12:00:05", "skip", 30, 3, fires("12:00"), 0, "12:01"),
        (MINUTELY, "12:00", "12:00:05", "catch_up", 30, 3, fires("12:00"), 0, "12:01"),
        # 12:01 is overdue but within grace: kept, it fires on its own next
        (MINUTELY, "12:00", "12:01:20", "fire_once", 30, 3, fires("12:00"), 0, "12:01"),
        (MINUTELY, "12:00", "12:01:20", "skip", 30, 3, skips("12:00"), 0, "12:01"),
        # cut = 12:05:00: 12:01 .. 12:05 dropped (a due time exactly at the cut is dropped)
        (MINUTELY, "12:00", "12:05:30", "fire_once", 30, 3, fires("12:00"), 5, "12:06"),
        (MINUTELY, "12:00", "12:05:30", "skip", 30, 3, skips("12:00"), 5, "12:06"),
        (MINUTELY, "12:00", "12:05:30", "fire_once", 0, 3, fires("12:00"), 5, "12:06"),
        (MINUTELY, "12:00", "12:05:30", "fire_once", 300, 3, fires("12:00"), 0, "12:01"),
        (MINUTELY, "12:00", "12:05:30", "fire_once", 150, 3, fires("12:00"), 3, "12:04"),
        # skip: exactly at now - grace is not late; a microsecond older is
        (MINUTELY, "12:00", "12:00:30", "skip", 30, 3, fires("12:00"), 0, "12:01"),
        (MINUTELY, "12:00", "12:00:30.000001", "skip", 30, 3, skips("12:00"), 0, "12:01"),
        (MINUTELY, "12:00", "12:00", "skip", 0, 3, fires("12:00"), 0, "12:01"),
        # catch_up sends at most ``limit`` in all, then drops what is late beyond the last sent
        (
            MINUTELY,
            "12:00",
            "12:05:30",
            "catch_up",
            30,
            3,
            fires("12:00", "12:01", "12:02"),
            3,
            "12:06",
        ),
        (
            MINUTELY,
            "12:00",
            "12:05:30",
            "catch_up",
            150,
            3,
            fires("12:00", "12:01", "12:02"),
            1,
            "12:04",
        ),
        (
            MINUTELY,
            "12:00",
            "12:05:30",
            "catch_up",
            300,
            3,
            fires("12:00", "12:01", "12:02"),
            0,
            "12:03",
        ),
        (
            MINUTELY,
            "12:00",
            "12:05:30",
            "catch_up",
            30,
            6,
            fires("12:00", "12:01", "12:02", "12:03", "12:04", "12:05"),
            0,
            "12:06",
        ),
        (
            MINUTELY,
            "12:00",
            "12:05:30",
            "catch_up",
            30,
            100,
            fires("12:00", "12:01", "12:02", "12:03", "12:04", "12:05"),
            0,
            "12:06",
        ),
        (MINUTELY, "12:00", "12:05:30", "catch_up", 30, 1, fires("12:00"), 5, "12:06"),
        (MINUTELY, "12:00", "12:05:30", "catch_up", 0, 2, fires("12:00", "12:01"), 4, "12:06"),
        # --- interval on the grid of start_time (:10 past each minute)
        (ON_TEN, "12:00:10", "12:05:30", "fire_once", 0, 3, fires("12:00:10"), 5, "12:06:10"),
        (ON_TEN, "12:00:10", "12:05:30", "skip", 0, 3, skips("12:00:10"), 5, "12:06:10"),
        (
            ON_TEN,
            "12:00:10",
            "12:05:30",
            "catch_up",
            0,
            2,
            fires("12:00:10", "12:01:10"),
            4,
            "12:06:10",
        ),
        # a due time off the grid (start_time edited since): back on the grid next
        (ON_TEN, "12:00", "12:00:05", "fire_once", 30, 3, fires("12:00"), 0, "12:00:10"),
        (
            ON_TEN,
            "12:00",
            "12:03",
            "catch_up",
            0,
            9,
            fires("12:00", "12:00:10", "12:01:10", "12:02:10"),
            0,
            "12:03:10",
        ),
        # --- interval with end_time 12:03: nothing after it
        (ENDS, "12:00", "12:05:30", "fire_once", 30, 3, fires("12:00"), 3, None),
        (ENDS, "12:00", "12:05:30", "skip", 30, 3, skips("12:00"), 3, None),
        (ENDS, "12:00", "12:05:30", "catch_up", 30, 2, fires("12:00", "12:01"), 2, None),
        (
            ENDS,
            "12:00",
            "12:05:30",
            "catch_up",
            30,
            9,
            fires("12:00", "12:01", "12:02", "12:03"),
            0,
            None,
        ),
        (ENDS, "12:00", "12:02:30", "fire_once", 30, 3, fires("12:00"), 2, "12:03"),
        (ENDS, "12:03", "12:03", "fire_once", 0, 3, fires("12:03"), 0, None),
        # --- crontab every 10 minutes, 35 minutes behind: 12:10, 12:20, 12:30 overdue
        (TEN_MINUTES, "12:00", "12:00:10", "fire_once", 30, 3, fires("12:00"), 0, "12:10"),
        (TEN_MINUTES, "12:00", "12:00:10", "skip", 30, 3, fires("12:00"), 0, "12:10"),
        (TEN_MINUTES, "12:00", "12:35", "fire_once", 30, 3, fires("12:00"), None, "12:40"),
        (TEN_MINUTES, "12:00", "12:35", "skip", 30, 3, skips("12:00"), None, "12:40"),
        (TEN_MINUTES, "12:00", "12:35", "fire_once", 600, 3, fires("12:00"), None, "12:30"),
        (TEN_MINUTES, "12:00", "12:35", "fire_once", 2100, 3, fires("12:00"), 0, "12:10"),
        (TEN_MINUTES, "12:00", "12:35", "catch_up", 30, 2, fires("12:00", "12:10"), None, "12:40"),
        (
            TEN_MINUTES,
            "12:00",
            "12:35",
            "catch_up",
            600,
            3,
            fires("12:00", "12:10", "12:20"),
            0,
            "12:30",
        ),
        (
            TEN_MINUTES,
            "12:00",
            "12:35",
            "catch_up",
            30,
            4,
            fires("12:00", "12:10", "12:20", "12:30"),
            0,
            "12:40",
        ),
        (TEN_MINUTES, "12:00", "12:35", "catch_up", 30, 1, fires("12:00"), None, "12:40"),
        # crontab with end_time: the last one is 12:20
        (
            cron("*/10 * * * *", end_time=z("2025-01-01 12:25")),
            "12:00",
            "12:35",
            "catch_up",
            30,
            9,
            fires("12:00", "12:10", "12:20"),
            0,
            None,
        ),
        (
            cron("*/10 * * * *", end_time=z("2025-01-01 12:25")),
            "12:00",
            "12:35",
            "fire_once",
            30,
            9,
            fires("12:00"),
            None,
            None,
        ),
        # --- clocked: one shot, nothing follows, nothing to drop
        (ONCE, "12:00", "13:00", "fire_once", 30, 3, fires("12:00"), 0, None),
        (ONCE, "12:00", "13:00", "skip", 30, 3, skips("12:00"), 0, None),
        (ONCE, "12:00", "12:00:10", "skip", 30, 3, fires("12:00"), 0, None),
        (ONCE, "12:00", "13:00", "catch_up", 30, 3, fires("12:00"), 0, None),
    ],
)
def test_resolve_misfire(
    spec: ScheduleSpec,
    due: str,
    now: str,
    policy: str,
    grace: float,
    limit: int,
    ticks: Ticks,
    passed_over: int | None,
    next_due: str | None,
) -> None:
    day = "2025-01-01 "
    dated = tuple((z(day + time), send) for time, send in ticks)
    result = resolve_misfire(spec, z(day + due), z(day + now), policy, grace, limit)
    assert result == Misfire(dated, passed_over, at(None if next_due is None else day + next_due))


def test_catch_up_through_new_york_fall_back_replays_both_passes() -> None:
    # 2025-11-02: 01:00-01:59 EDT (05:xxZ) then again EST (06:xxZ); '*' hours fire in both.
    result = resolve_misfire(
        cron("*/30 * * * *", NY), z("2025-11-02 05:00"), z("2025-11-02 07:10"), "catch_up", 0, 9
    )
    moments = ("05:00", "05:30", "06:00", "06:30", "07:00")
    assert result == Misfire(sent(*(f"2025-11-02 {m}" for m in moments)), 0, z("2025-11-02 07:30"))


def test_catch_up_through_new_york_spring_forward_sends_the_gap_once() -> None:
    # 2025-03-09: 02:00-02:59 EST does not exist; its four quarter hours fire once, at 07:00Z.
    result = resolve_misfire(
        cron("*/15 * * * *", NY), z("2025-03-09 06:45"), z("2025-03-09 07:20"), "catch_up", 0, 9
    )
    assert result == Misfire(
        sent("2025-03-09 06:45", "2025-03-09 07:00", "2025-03-09 07:15"), 0, z("2025-03-09 07:30")
    )


def test_solar_misfire_resumes_on_the_next_event() -> None:
    require_module("ephem")
    spec = ScheduleSpec(
        name="dawn", kind="solar", solar_event="sunrise", latitude=52.52, longitude=13.40
    )
    first = next_after(spec, z("2025-06-01 00:00"))
    assert first is not None
    days = [first]
    for _ in range(4):
        following = next_after(spec, days[-1])
        assert following is not None
        days.append(following)
    now = days[3] + timedelta(hours=1)  # three sunrises missed
    assert resolve_misfire(spec, first, now, "fire_once", 60, 3) == Misfire(
        ((first, True),), None, days[4]
    )
    assert resolve_misfire(spec, first, now, "skip", 60, 3) == Misfire(
        ((first, False),), None, days[4]
    )
    assert resolve_misfire(spec, first, now, "catch_up", 60, 2) == Misfire(
        ((first, True), (days[1], True)), None, days[4]
    )
    assert resolve_misfire(spec, first, now, "catch_up", 60, 9) == Misfire(
        tuple((day, True) for day in days[:4]), 0, days[4]
    )


# --------------------------------------------------------------------------- far behind, grid


@pytest.mark.parametrize(
    ("seconds", "behind", "grace", "dropped", "resume"),
    [
        # (due, now - grace]: floor(behind / step) grid times; next one after it
        (0.1, 1_000_000.05, 0, 10_000_000, 1_000_000.1),
        (0.1, 1_000_000.05, 0.5, 9_999_995, 999_999.6),
        (0.1, 0.35, 0, 3, 0.4),
        (1, 7 * 86_400 + 0.5, 0, 604_800, 604_801),
        (1, 7 * 86_400, 0, 604_800, 604_801),
        (1, 7 * 86_400, 30, 604_770, 604_771),
        (1, 1_000_000, 0, 1_000_000, 1_000_001),
        (7, 864_000, 0, 123_428, 864_003),  # 864000 / 7 = 123428.57...
        (86_400, 7 * 86_400 + 1, 60, 6, 7 * 86_400),  # the 7th day is within grace: kept
        (1 / 3, 1, 0, 3, 1.333332),  # timedelta keeps 333333 microseconds a step
    ],
)
def test_interval_far_behind_is_arithmetic_on_the_grid(
    monkeypatch: pytest.MonkeyPatch,
    seconds: float,
    behind: float,
    grace: float,
    dropped: int,
    resume: float,
) -> None:
    calls = count_calls(monkeypatch, "next_after")
    due = z("2025-01-01 00:00")
    now = due + timedelta(seconds=behind)
    expected_next = due + timedelta(seconds=resume)
    fire = resolve_misfire(every(seconds), due, now, "fire_once", grace, 3)
    assert fire == Misfire(((due, True),), dropped, expected_next)
    skip = resolve_misfire(every(seconds), due, now, "skip", grace, 3)
    assert skip == Misfire(((due, False),), dropped, expected_next)
    catch = resolve_misfire(every(seconds), due, now, "catch_up", grace, 3)
    step = timedelta(seconds=seconds)
    assert catch.ticks == tuple((due + i * step, True) for i in range(3))
    assert catch.passed_over == max(0, dropped - 2)
    assert catch.next_due == max(expected_next, due + 3 * step)
    assert calls() == 0


def test_interval_next_due_lands_on_the_grid_of_start_time() -> None:
    start = z("2024-12-31 23:59:59.9")
    spec = every(0.1, start_time=start)
    due = z("2025-01-01 00:00:00.5")
    step = timedelta(microseconds=100_000)
    for behind in (0.05, 1, 13.37, 86_400.25, 1_000_000.05):
        now = due + timedelta(seconds=behind)
        for policy in ("fire_once", "skip", "catch_up"):
            result = resolve_misfire(spec, due, now, policy, 0.2, 4)
            assert result.next_due is not None
            assert (result.next_due - start) % step == timedelta(0)
            assert result.next_due > now - timedelta(seconds=0.2)
            assert all((t - start) % step == timedelta(0) for t, _ in result.ticks)


def test_interval_passed_over_matches_a_count_one_by_one() -> None:
    spec = every(0.7, start_time=z("2025-01-01 00:00:00.3"), end_time=z("2025-01-01 00:01"))
    due = z("2025-01-01 00:00:01.7")
    for tenths in range(0, 700, 7):
        now = due + timedelta(seconds=tenths / 10)
        for grace, limit in ((0, 1), (1.5, 3), (4, 10)):
            cut = now - timedelta(seconds=grace)
            times = walk(spec, due, now)
            result = resolve_misfire(spec, due, now, "fire_once", grace, limit)
            assert result.passed_over == sum(1 for t in times if t <= cut)
            assert result.next_due == min((t for t in times if t > cut), default=None)
            caught = resolve_misfire(spec, due, now, "catch_up", grace, limit)
            overdue = [t for t in times if t <= now]
            assert [t for t, _ in caught.ticks] == [due, *overdue[: limit - 1]]
            assert caught.passed_over == sum(1 for t in overdue[limit - 1 :] if t <= cut)


def walk(spec: ScheduleSpec, due: datetime, now: datetime) -> list[datetime]:
    """The due times in (due, now] one by one, then the first after now (or nothing)."""
    found: list[datetime] = []
    current = next_after(spec, due)
    while current is not None:
        found.append(current)
        if current > now:
            break
        current = next_after(spec, current)
    return found


# --------------------------------------------------------------------------- cost bound


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> Callable[[], int]:
    """Wrap ``pg_beat.schedules.<name>`` with a counter; returns a reader of the count."""
    original = getattr(schedules, name)
    count = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(schedules, name, counted)
    return lambda: count[0]


WEEK_BEHIND = z("2025-01-08 00:00:30")  # 10,080 minutely ticks after 2025-01-01 00:00


@pytest.mark.parametrize("policy", ["fire_once", "skip"])
def test_crontab_a_week_behind_costs_one_search(
    monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    calls = count_calls(monkeypatch, "next_after")
    due = z("2025-01-01 00:00")
    result = resolve_misfire(cron("* * * * *"), due, WEEK_BEHIND, policy, 0, 5)
    assert result == Misfire(((due, policy == "fire_once"),), None, z("2025-01-08 00:01"))
    assert calls() <= 1


def test_crontab_a_week_behind_catch_up_costs_limit_plus_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_calls(monkeypatch, "next_after")
    due = z("2025-01-01 00:00")
    result = resolve_misfire(cron("* * * * *"), due, WEEK_BEHIND, "catch_up", 0, 5)
    minutes = ("00:00", "00:01", "00:02", "00:03", "00:04")
    assert result == Misfire(
        sent(*(f"2025-01-01 {m}" for m in minutes)), None, at("2025-01-08 00:01")
    )
    assert calls() <= 5 + 1


def test_sixty_crontabs_a_week_behind_cost_sixty_searches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The leader that spent 11 s here walked 10,000 ticks a row; now each row is one search,
    # and each search looks at no more than two days.
    rows = [cron(f"{minute} * * * *") for minute in range(60)]
    searches = count_calls(monkeypatch, "next_after")
    days = count_calls(monkeypatch, "_cron_in_day")
    for policy, per_row in (("fire_once", 1), ("skip", 1), ("catch_up", 3 + 1)):
        before_searches, before_days = searches(), days()
        for spec in rows:
            due = z("2025-01-01 00:00") + timedelta(minutes=int(spec.cron_minute))
            resolve_misfire(spec, due, WEEK_BEHIND, policy, 60, 3)
        assert searches() - before_searches <= 60 * per_row
        assert days() - before_days <= 2 * 60 * per_row


# --------------------------------------------------------------------------- downtime only

# A term that began at 12:00:00; grace 10 s. "alive": the predecessor's last proof of life
# (None: no predecessor, all time before 12:00 was downtime). Every due time is a minutely
# grid point or the claimed tick of a ``skip`` schedule: sent (True) or skipped (False).
TERM_START = "2025-01-01 12:00"


@pytest.mark.parametrize(
    ("case", "alive", "due", "now", "sent"),
    [
        # Due in this term: never late, however long the leader's own queue kept it.
        ("burst claimed 35 s after its due time", None, "12:00:05", "12:00:40", True),
        ("an hour of broker outage in this term", None, "12:00:01", "13:00:01", True),
        ("due the instant the term began", None, "12:00", "12:30", True),
        # Due before the term: only the downtime in its wait counts.
        ("counter-case: an hour of real downtime", None, "11:00", "12:00:01", False),
        ("10 s of downtime in its wait: not late", None, "11:59:50", "12:05", True),
        ("10.000001 s of downtime in its wait", None, "11:59:49.999999", "12:05", False),
        ("due after the gap began, 5 s of it", "11:00", "11:59:55", "12:05", True),
        # A tick a live predecessor never got to: its busy time is not downtime...
        ("predecessor busy, then a 6 s failover", "11:59:54", "11:30", "12:01", True),
        ("predecessor busy, gap exactly the grace", "11:59:50", "11:30", "12:01", True),
        # ...but real downtime after it is (counter-case): due while a live leader held the
        # lease, then no leader for an hour.
        ("counter-case: predecessor busy, then an hour down", "11:00", "10:30", "12:01", False),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else None,
)
def test_only_downtime_makes_a_tick_late(
    case: str, alive: str | None, due: str, now: str, sent: bool
) -> None:
    day = "2025-01-01 "
    term = Term(z(TERM_START), None if alive is None else z(day + alive))
    result = resolve_misfire(MINUTELY, z(day + due), z(day + now), "skip", 10, 3, term)
    assert result.ticks == ((z(day + due), sent),), case
    if sent:  # nothing was a misfire: nothing dropped, the grid goes on from the due time
        assert (result.passed_over, result.next_due) == (0, z(day + due) + timedelta(minutes=1))


def test_a_backlog_of_this_term_drops_nothing_under_any_policy() -> None:
    term = Term(z("2025-01-01 12:00"), z("2025-01-01 11:00"))
    due, now = z("2025-01-01 12:00:30"), z("2025-01-01 13:00")  # 59 ticks behind, all ours
    for policy in schedules.MISFIRE_POLICIES:
        for spec in (MINUTELY, cron("* * * * *")):
            result = resolve_misfire(spec, due, now, policy, 10, 3, term)
            assert result.passed_over == 0, (policy, spec.kind)
            assert result.next_due == next_after(spec, result.ticks[-1][0])
            assert all(send for _, send in result.ticks)


def test_a_week_down_fire_once_resumes_the_grace_before_the_term_began() -> None:
    """Due times in the last ``grace`` before the term are kept: they fire on their own."""
    term = Term(z("2025-01-08 12:00"), z("2025-01-01 12:00"))
    due = z("2025-01-01 12:00:30")
    result = resolve_misfire(MINUTELY, due, z("2025-01-08 12:00:05"), "fire_once", 90, 3, term)
    assert result.ticks == ((due, True),)
    # The cut is 11:58:30 (the term's start less the grace), dropped as any due time at a cut.
    assert result.next_due == z("2025-01-08 11:59:30")
    assert result.passed_over == 7 * 24 * 60 - 2


@pytest.mark.parametrize(
    ("alive", "grace", "cut"),
    [
        (None, 10, "11:59:50"),  # nothing watched before: late = more than 10 s before
        ("11:00", 10, "11:59:50"),
        ("11:59:50.000001", 10, None),  # a gap shorter than the grace: nothing is late
        ("11:59:50", 10, None),  # exactly the grace
        ("11:59:49.999999", 10, "11:59:50"),
        ("11:59:59", 0, "12:00"),  # no grace: any gap counts
        ("12:00", 0, None),  # no gap at all
    ],
)
def test_late_before(alive: str | None, grace: float, cut: str | None) -> None:
    day = "2025-01-01 "
    term = Term(z(day + "12:00"), None if alive is None else z(day + alive))
    assert late_before(term, grace) == (None if cut is None else z(day + cut))


@pytest.mark.parametrize(
    ("case", "expires", "ended", "alive"),
    [
        ("first term: nothing before it", None, None, None),
        # Released (a graceful stop): it ended before this term began, alive until then.
        ("released", "11:59:58", "11:59:58", "11:59:58"),
        # Taken over (its term ends when this one begins): alive until its last renewal.
        ("expired: a crash behind a transaction pool", "11:59:59", "12:00:00.01", "11:59:54"),
        ("taken while unexpired: session mode", "12:00:03", "12:00:00.01", "11:59:58"),
        ("never after this term began", "12:00:09", "12:00:00.01", "12:00"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else None,
)
def test_a_term_knows_when_its_predecessor_was_last_alive(
    case: str, expires: str | None, ended: str | None, alive: str | None
) -> None:
    day = "2025-01-01 "
    term = Term.after(
        z(day + "12:00"),
        None if expires is None else z(day + expires),
        None if ended is None else z(day + ended),
        lease_ttl=5.0,
    )
    assert term == Term(z(day + "12:00"), None if alive is None else z(day + alive)), case


# --------------------------------------------------------------------------- errors


def test_rejects_unknown_policy_and_bad_numbers() -> None:
    due = z("2025-01-01 12:00")
    with pytest.raises(InvalidSchedule, match="misfire_policy: unknown misfire policy 'late'"):
        resolve_misfire(MINUTELY, due, due, "late", 30, 3)
    with pytest.raises(ValueError, match="grace=-1"):
        resolve_misfire(MINUTELY, due, due, "skip", -1, 3)
    with pytest.raises(ValueError, match="grace=nan"):
        resolve_misfire(MINUTELY, due, due, "skip", float("nan"), 3)
    with pytest.raises(ValueError, match="catch_up_limit=0"):
        resolve_misfire(MINUTELY, due, due, "catch_up", 0, 0)
    with pytest.raises(ValueError, match="catch_up_limit=1001 must be between 1 and 1000"):
        resolve_misfire(MINUTELY, due, due, "catch_up", 0, 1001)
    assert len(resolve_misfire(MINUTELY, due, due + timedelta(days=1), "catch_up", 0, 1000).ticks)


def test_every_policy_sends_or_records_the_claimed_tick_first() -> None:
    due = z("2025-01-01 12:00")
    for spec in (MINUTELY, ON_TEN, ENDS, TEN_MINUTES, ONCE):
        for policy in schedules.MISFIRE_POLICIES:
            result = resolve_misfire(spec, due, due + timedelta(hours=1), policy, 30, 4)
            assert result.ticks[0][0] == due
            assert [t for t, _ in result.ticks] == sorted(t for t, _ in result.ticks)
            assert result.next_due is None or result.next_due > result.ticks[-1][0]
