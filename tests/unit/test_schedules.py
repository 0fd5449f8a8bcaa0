"""Schedule math: every expected datetime below was worked out by hand from the calendar
and the tz rules (US: 2nd Sunday of March 02:00 -> 03:00, 1st Sunday of November 02:00 ->
01:00; EU: last Sunday of March 01:00 UTC, last Sunday of October 01:00 UTC; Lord Howe, 30
minutes: 1st Sunday of October 02:00 -> 02:30 (+10:30 -> +11), 1st Sunday of April 02:00 ->
01:30). Where Celery differs (DST only), test_schedules_celery.py shows both values."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from support.env import require_module
from support.specs import clocked, cron, every, z

from pg_beat.exceptions import InvalidSchedule
from pg_beat.schedules import (
    KINDS,
    MESSAGE_OPTIONS,
    MISFIRE_POLICIES,
    ScheduleSpec,
    describe,
    first_due,
    next_after,
    parse_duration,
    validate,
    validate_payload,
)

UTC = timezone.utc
NY = "America/New_York"
BERLIN = "Europe/Berlin"
LORD_HOWE = "Australia/Lord_Howe"


def test_constants() -> None:
    assert KINDS == ("interval", "crontab", "solar", "clocked")
    assert MISFIRE_POLICIES == ("fire_once", "skip", "catch_up")


# --------------------------------------------------------------------------- crontab


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        # ordinary
        ("*/5 * * * *", "UTC", "2025-01-01 00:04:59", "2025-01-01 00:05"),
        ("*/5 * * * *", "UTC", "2025-01-01 00:05", "2025-01-01 00:10"),
        ("*/5 * * * *", "UTC", "2025-01-01 00:05:00.000001", "2025-01-01 00:10"),
        ("59 23 * * *", "UTC", "2025-01-01 23:59", "2025-01-02 23:59"),
        ("0 0 1 1 *", "UTC", "2025-12-31 23:59", "2026-01-01 00:00"),
        ("59 23 31 12 *", "UTC", "2025-01-01 00:00", "2025-12-31 23:59"),
        ("0 0 * jun *", "UTC", "2025-01-01 00:00", "2025-06-01 00:00"),
        ("0 9 * * *", "Asia/Kolkata", "2025-01-01 00:00", "2025-01-01 03:30"),
        ("0 0 1 * *", BERLIN, "2025-12-31 22:59", "2025-12-31 23:00"),
        ("0 0 1 * *", BERLIN, "2025-12-31 23:00", "2026-01-31 23:00"),
        # month ends: the 31st is skipped in 30-day months and February
        ("0 0 31 * *", "UTC", "2025-04-01 00:00", "2025-05-31 00:00"),
        ("0 12 31 * *", "UTC", "2025-05-31 12:00", "2025-07-31 12:00"),
        ("0 0 31 * *", "UTC", "2025-01-31 00:00", "2025-03-31 00:00"),
        ("0 0 30 * *", "UTC", "2025-01-30 00:00", "2025-03-30 00:00"),
        # leap day: next Feb 29 from 2025 is 2028; 2100 is not a leap year
        ("0 0 29 2 *", "UTC", "2025-01-01 00:00", "2028-02-29 00:00"),
        ("0 0 29 2 *", "UTC", "2028-02-29 00:00", "2032-02-29 00:00"),
        ("0 0 29 2 *", "UTC", "2096-03-01 00:00", "2104-02-29 00:00"),
        ("30 6 29 2 *", BERLIN, "2025-01-01 00:00", "2028-02-29 05:30"),
        # day of week: 0 = Sunday; 2025-01-01 is a Wednesday
        ("0 9 * * 0", "UTC", "2025-01-01 00:00", "2025-01-05 09:00"),
        ("0 9 * * sun", "UTC", "2025-01-01 00:00", "2025-01-05 09:00"),
        ("0 0 * * mon", "UTC", "2025-01-01 00:00", "2025-01-06 00:00"),
        ("0 0 * * sat,sun", "UTC", "2025-01-01 00:00", "2025-01-04 00:00"),
        ("0 0 * * fri-mon", "UTC", "2025-01-06 00:00", "2025-01-10 00:00"),
        # only one day field restricted: it alone decides
        ("0 0 1 * *", "UTC", "2025-01-02 00:00", "2025-02-01 00:00"),
        # both restricted: both must match, as in Celery (Vixie cron would OR them)
        ("0 0 1 * 1", "UTC", "2025-01-02 00:00", "2025-09-01 00:00"),
        ("0 0 13 * fri", "UTC", "2025-01-01 00:00", "2025-06-13 00:00"),
        ("0 0 13 * fri", "UTC", "2025-06-13 00:00", "2026-02-13 00:00"),
        ("0 0 */10 * mon-fri", "UTC", "2025-01-01 00:00", "2025-01-21 00:00"),
        ("0 0 */10 * mon-fri", "UTC", "2025-01-21 00:00", "2025-01-31 00:00"),
        ("0 0 31 * sun", "UTC", "2025-04-07 00:00", "2025-08-31 00:00"),
        ("0 9 1-7 * mon", "UTC", "2025-01-01 00:00", "2025-01-06 09:00"),
        ("0 9 1-7 * mon", "UTC", "2025-01-06 09:00", "2025-02-03 09:00"),
        # Feb 29 on a Monday: 28 years apart, 40 across the non-leap 2100
        ("0 0 29 2 1", "UTC", "2025-01-01 00:00", "2044-02-29 00:00"),
        ("0 0 29 2 1", "UTC", "2072-03-01 00:00", "2112-02-29 00:00"),
        # ranges that wrap around the field's end, as Celery's parser reads them
        ("0 22-1 * * *", "UTC", "2025-01-01 01:00", "2025-01-01 22:00"),
        ("0 22-1 * * *", "UTC", "2025-01-01 23:00", "2025-01-02 00:00"),
        ("50-10/5 * * * *", "UTC", "2025-01-01 00:10", "2025-01-01 00:50"),
        ("0 0 30-2 * *", "UTC", "2025-02-03 00:00", "2025-03-01 00:00"),
        ("0 0 1 nov-feb *", "UTC", "2025-03-01 00:00", "2025-11-01 00:00"),
        # New York spring-forward 2025-03-09: 02:00-02:59 EST does not exist, 07:00Z = 03:00 EDT
        ("30 2 * * *", NY, "2025-03-08 12:00", "2025-03-09 07:00"),
        ("30 2 * * *", NY, "2025-03-09 07:00", "2025-03-10 06:30"),
        ("0 2 * * *", NY, "2025-03-08 12:00", "2025-03-09 07:00"),
        ("0 3 * * *", NY, "2025-03-08 12:00", "2025-03-09 07:00"),
        ("0 3 * * *", NY, "2025-03-09 07:00", "2025-03-10 07:00"),
        ("59 1 * * *", NY, "2025-03-08 12:00", "2025-03-09 06:59"),
        ("*/15 * * * *", NY, "2025-03-09 06:30", "2025-03-09 06:45"),
        ("*/15 * * * *", NY, "2025-03-09 06:45", "2025-03-09 07:00"),
        ("*/15 * * * *", NY, "2025-03-09 07:00", "2025-03-09 07:15"),
        ("15 2 * * 0", NY, "2025-03-01 00:00", "2025-03-02 07:15"),
        ("15 2 * * 0", NY, "2025-03-02 07:15", "2025-03-09 07:00"),
        # New York fall-back 2025-11-02: 01:00-01:59 twice, EDT (05:xxZ) then EST (06:xxZ)
        ("30 1 * * *", NY, "2025-11-01 12:00", "2025-11-02 05:30"),
        ("30 1 * * *", NY, "2025-11-02 05:30", "2025-11-03 06:30"),
        ("30 1 * * *", NY, "2025-11-02 06:00", "2025-11-03 06:30"),
        ("0 2 * * *", NY, "2025-11-01 12:00", "2025-11-02 07:00"),
        ("30 0-3 * * *", NY, "2025-11-02 05:00", "2025-11-02 05:30"),
        ("30 0-3 * * *", NY, "2025-11-02 05:30", "2025-11-02 07:30"),
        ("*/15 * * * *", NY, "2025-11-02 05:45", "2025-11-02 06:00"),
        ("*/15 * * * *", NY, "2025-11-02 06:00", "2025-11-02 06:15"),
        ("*/15 * * * *", NY, "2025-11-02 06:45", "2025-11-02 07:00"),
        ("0 * * * *", NY, "2025-11-02 05:00", "2025-11-02 06:00"),
        ("0 * * * *", NY, "2025-11-02 06:00", "2025-11-02 07:00"),
        # Berlin spring-forward 2025-03-30: 02:00-02:59 CET does not exist, 01:00Z = 03:00 CEST
        ("30 2 * * *", BERLIN, "2025-03-29 12:00", "2025-03-30 01:00"),
        ("30 2 * * *", BERLIN, "2025-03-30 01:00", "2025-03-31 00:30"),
        ("15 2 * * sun", BERLIN, "2025-03-25 00:00", "2025-03-30 01:00"),
        ("*/15 * * * *", BERLIN, "2025-03-30 00:45", "2025-03-30 01:00"),
        ("*/15 * * * *", BERLIN, "2025-03-30 01:00", "2025-03-30 01:15"),
        ("0 3 * * *", BERLIN, "2025-03-29 12:00", "2025-03-30 01:00"),
        # Berlin fall-back 2025-10-26: 02:00-02:59 twice, CEST (00:xxZ) then CET (01:xxZ)
        ("30 2 * * *", BERLIN, "2025-10-25 12:00", "2025-10-26 00:30"),
        ("30 2 * * *", BERLIN, "2025-10-26 00:30", "2025-10-27 01:30"),
        ("0 3 * * *", BERLIN, "2025-10-25 12:00", "2025-10-26 02:00"),
        ("*/15 * * * *", BERLIN, "2025-10-26 00:45", "2025-10-26 01:00"),
        ("*/15 * * * *", BERLIN, "2025-10-26 01:45", "2025-10-26 02:00"),
        ("0 * * * *", BERLIN, "2025-10-26 00:00", "2025-10-26 01:00"),
        ("0 * * * *", BERLIN, "2025-10-26 01:00", "2025-10-26 02:00"),
        # Lord Howe spring-forward 2025-10-05: 02:00-02:29 +10:30 does not exist, 15:30Z = 02:30
        ("15 2 * * *", LORD_HOWE, "2025-10-04 00:00", "2025-10-04 15:30"),
        ("45 2 * * *", LORD_HOWE, "2025-10-04 00:00", "2025-10-04 15:45"),
        ("*/15 * * * *", LORD_HOWE, "2025-10-04 15:15", "2025-10-04 15:30"),
        ("*/15 * * * *", LORD_HOWE, "2025-10-04 15:30", "2025-10-04 15:45"),
        # Lord Howe fall-back 2025-04-06: 01:30-01:59 twice, +11 (14:xxZ) then +10:30 (15:xxZ)
        ("30 1 * * *", LORD_HOWE, "2025-04-05 00:00", "2025-04-05 14:30"),
        ("30 1 * * *", LORD_HOWE, "2025-04-05 14:30", "2025-04-06 15:00"),
        ("*/15 * * * *", LORD_HOWE, "2025-04-05 14:45", "2025-04-05 15:00"),
        ("*/15 * * * *", LORD_HOWE, "2025-04-05 15:15", "2025-04-05 15:30"),
        ("0 2 * * *", LORD_HOWE, "2025-04-05 00:00", "2025-04-05 15:30"),
    ],
)
def test_crontab_next_after(expr: str, tz: str, after: str, expected: str) -> None:
    assert next_after(cron(expr, tz), z(after)) == z(expected)


def ticks(spec: ScheduleSpec, start: datetime, stop: datetime) -> list[datetime]:
    found: list[datetime] = []
    current = next_after(spec, start)
    while current is not None and current < stop:
        found.append(current)
        current = next_after(spec, current)
    return found


@pytest.mark.parametrize(
    ("tz", "local_midnight", "next_local_midnight", "hours"),
    [
        (NY, "2025-03-09 05:00", "2025-03-10 04:00", 23),
        (NY, "2025-11-02 04:00", "2025-11-03 05:00", 25),
        (BERLIN, "2025-03-29 23:00", "2025-03-30 22:00", 23),
        (BERLIN, "2025-10-25 22:00", "2025-10-26 23:00", 25),
        (LORD_HOWE, "2025-10-04 13:30", "2025-10-05 13:00", 23.5),
        (LORD_HOWE, "2025-04-05 13:00", "2025-04-06 13:30", 24.5),
    ],
)
def test_every_15_minutes_keeps_real_time_through_dst_days(
    tz: str, local_midnight: str, next_local_midnight: str, hours: float
) -> None:
    start, quarters = z(local_midnight), int(hours * 4)
    found = ticks(
        cron("*/15 * * * *", tz), start - timedelta(microseconds=1), z(next_local_midnight)
    )
    assert len(found) == quarters
    assert found == [start + timedelta(minutes=15 * i) for i in range(quarters)]


def test_fixed_hour_job_fires_once_on_each_dst_day() -> None:
    spring = ticks(cron("30 2 * * *", NY), z("2025-03-08 00:00"), z("2025-03-11 00:00"))
    assert spring == [z("2025-03-08 07:30"), z("2025-03-09 07:00"), z("2025-03-10 06:30")]
    fall = ticks(cron("30 1 * * *", NY), z("2025-11-01 00:00"), z("2025-11-04 00:00"))
    assert fall == [z("2025-11-01 05:30"), z("2025-11-02 05:30"), z("2025-11-03 06:30")]
    every_gap_minute = ticks(
        cron("* 2 * * *", BERLIN), z("2025-03-30 00:00"), z("2025-03-30 02:00")
    )
    assert every_gap_minute == [z("2025-03-30 01:00")]


@pytest.mark.parametrize("after", ["2025-01-01 00:00", "2072-03-01 00:00", "2097-03-01 00:00"])
def test_every_valid_day_meets_every_weekday_within_the_horizon(after: str) -> None:
    # Why validation need not reject any weekday with any day of month (both must match):
    # each one's next due time is found, from the worst start (Feb 29 on a Monday: 2072 ->
    # 2112, over the non-leap 2100) too.
    month_days = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    start = z(after)
    for month, days in enumerate(month_days, start=1):
        for day in range(1, days + 1):
            for weekday in range(7):
                found = next_after(cron(f"0 0 {day} {month} {weekday}"), start)
                assert found is not None, (month, day, weekday)
                assert (found.month, found.day, found.isoweekday() % 7) == (month, day, weekday)
                assert found - start < timedelta(days=41 * 366)


def test_crontab_start_and_end_time() -> None:
    spec = cron("0 * * * *", start_time=z("2025-01-01 05:30"), end_time=z("2025-01-01 08:00"))
    assert next_after(spec, z("2025-01-01 00:00")) == z("2025-01-01 06:00")
    assert next_after(spec, z("2025-01-01 07:00")) == z("2025-01-01 08:00")
    assert next_after(spec, z("2025-01-01 08:00")) is None
    on_the_hour = cron("0 * * * *", start_time=z("2025-01-01 06:00"))
    assert next_after(on_the_hour, z("2025-01-01 00:00")) == z("2025-01-01 06:00")
    ended = cron("0 0 29 2 *", end_time=z("2027-01-01 00:00"))
    assert next_after(ended, z("2025-01-01 00:00")) is None


def test_results_are_utc_and_naive_input_is_rejected() -> None:
    result = next_after(cron("0 9 * * *", BERLIN), z("2025-01-01 00:00"))
    assert result is not None and result.tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        next_after(cron("0 9 * * *"), datetime(2025, 1, 1))


# --------------------------------------------------------------------------- interval, clocked

GRID = z("2025-01-01 00:00:10")


@pytest.mark.parametrize(
    ("spec", "after", "expected"),
    [
        (every(30), "2025-01-01 00:00", "2025-01-01 00:00:30"),
        (every(30), "2025-01-01 00:00:00.5", "2025-01-01 00:00:30.5"),
        (every(5400), "2025-01-01 23:00", "2025-01-02 00:30"),
        (every(0.25), "2025-01-01 00:00", "2025-01-01 00:00:00.25"),
        (every(60, start_time=GRID), "2024-12-31 00:00", "2025-01-01 00:00:10"),
        (every(60, start_time=GRID), "2025-01-01 00:00:10", "2025-01-01 00:01:10"),
        (every(60, start_time=GRID), "2025-01-01 00:01:09.999999", "2025-01-01 00:01:10"),
        (every(60, start_time=GRID), "2025-01-01 00:01:10", "2025-01-01 00:02:10"),
        (every(60, start_time=GRID), "2025-01-02 00:00", "2025-01-02 00:00:10"),
        (every(0.25, start_time=GRID), "2025-01-01 00:00:11", "2025-01-01 00:00:11.25"),
        # 864000 s / 7 = 123428.57..., so grid point 123429 = 864003 s after start
        (every(7, start_time=z("2025-01-01 00:00")), "2025-01-11 00:00", "2025-01-11 00:00:03"),
        (every(60, end_time=z("2025-01-01 00:01")), "2025-01-01 00:00", "2025-01-01 00:01"),
        (clocked(z("2025-06-01 09:00")), "2025-06-01 08:59:59", "2025-06-01 09:00"),
    ],
)
def test_next_after_interval_and_clocked(spec: ScheduleSpec, after: str, expected: str) -> None:
    assert next_after(spec, z(after)) == z(expected)


@pytest.mark.parametrize(
    ("spec", "after"),
    [
        (every(60, end_time=z("2025-01-01 00:01")), "2025-01-01 00:00:01"),
        (every(60, start_time=GRID, end_time=z("2025-01-01 00:01")), "2025-01-01 00:00:10"),
        (clocked(z("2025-06-01 09:00")), "2025-06-01 09:00"),
        (clocked(z("2025-06-01 09:00")), "2025-07-01 00:00"),
        (clocked(z("2025-06-01 09:00"), end_time=z("2025-06-01 08:00")), "2025-01-01 00:00"),
        (clocked(z("2025-06-01 09:00"), start_time=z("2025-06-02 00:00")), "2025-01-01 00:00"),
    ],
)
def test_next_after_none(spec: ScheduleSpec, after: str) -> None:
    assert next_after(spec, z(after)) is None


def test_interval_has_no_drift() -> None:
    spec, due = every(0.1), z("2025-01-01 00:00")
    for _ in range(1000):
        following = next_after(spec, due)
        assert following is not None
        due = following
    assert due == z("2025-01-01 00:01:40")


# --------------------------------------------------------------------------- first_due

NOW = z("2025-01-01 12:00:05")


@pytest.mark.parametrize(
    ("spec", "now", "last_due", "expected"),
    [
        # new: as if it had last run now (Celery's ScheduleEntry), so one interval later
        (every(60), NOW, None, NOW + timedelta(seconds=60)),
        (every(0.1), NOW, None, NOW + timedelta(seconds=0.1)),
        (every(60, end_time=z("2025-01-01 12:00:30")), NOW, None, None),
        (every(60, start_time=z("2025-01-02 00:00")), NOW, None, z("2025-01-02 00:00")),
        (every(60, start_time=GRID), NOW, None, z("2025-01-01 12:00:10")),
        (every(60, start_time=GRID), z("2025-01-01 12:00:10"), None, z("2025-01-01 12:00:10")),
        (every(60), NOW, z("2025-01-01 09:00"), z("2025-01-01 09:01")),
        (every(60, end_time=z("2025-01-01 11:00")), NOW, None, None),
        (cron("0 * * * *"), z("2025-01-01 12:00"), None, z("2025-01-01 13:00")),
        (cron("0 * * * *"), z("2025-01-01 11:59:59.999999"), None, z("2025-01-01 12:00")),
        (cron("0 * * * *"), NOW, None, z("2025-01-01 13:00")),
        (cron("0 * * * *"), NOW, z("2025-01-01 09:00"), z("2025-01-01 10:00")),
        (cron("0 * * * *", start_time=z("2025-02-01 00:30")), NOW, None, z("2025-02-01 01:00")),
        (cron("30 2 * * *", NY), z("2025-03-09 06:00"), None, z("2025-03-09 07:00")),
        (clocked(z("2024-06-01 09:00")), NOW, None, z("2024-06-01 09:00")),
        (clocked(z("2025-06-01 09:00")), NOW, None, z("2025-06-01 09:00")),
        (clocked(z("2024-06-01 09:00"), end_time=z("2024-01-01 00:00")), NOW, None, None),
        (clocked(z("2024-06-01 09:00")), NOW, z("2024-06-01 09:00"), None),
    ],
)
def test_first_due(
    spec: ScheduleSpec, now: datetime, last_due: datetime | None, expected: datetime | None
) -> None:
    assert first_due(spec, now, last_due) == expected


# --------------------------------------------------------------------------- solar


def test_solar_sunrise_berlin() -> None:
    require_module("ephem")
    spec = ScheduleSpec(
        name="dawn", kind="solar", solar_event="sunrise", latitude=52.52, longitude=13.40
    )
    validate(spec)
    # Almanac: Berlin sunrise on 2025-06-01 is at 04:49 CEST (02:49 UTC).
    first = next_after(spec, z("2025-06-01 00:00"))
    assert first is not None and abs(first - z("2025-06-01 02:49")) < timedelta(minutes=2)
    assert first.microsecond == 0 and first.tzinfo is UTC
    second = next_after(spec, first)
    assert second is not None and timedelta(hours=23) < second - first < timedelta(hours=25)
    # A new schedule behaves as if it had last run at ``now``: created at the event, it waits.
    assert first_due(spec, first - timedelta(seconds=2), None) == first
    assert first_due(spec, first, None) == second


def test_solar_polar_night_waits_for_the_sun() -> None:
    require_module("ephem")
    spec = ScheduleSpec(
        name="svalbard", kind="solar", solar_event="sunrise", latitude=78.22, longitude=15.65
    )
    found = next_after(spec, z("2025-12-01 00:00"))
    assert found is not None and (found.year, found.month) == (2026, 2)


# --------------------------------------------------------------------------- validate


def test_validate_accepts_good_specs() -> None:
    for spec in (
        every(0.5),
        every(60, start_time=GRID, end_time=z("2026-01-01 00:00")),
        cron("*/5 9-17 * * mon-fri", BERLIN),
        cron("0 0 1,15,31 * *"),
        cron("0 12 29 feb *"),
        cron("0 0 29 2 mon"),  # once in 28 years (40 across 2100), but it does happen
        cron("0 0 31 jan-feb *"),
        cron("0 22-2 25-5 nov-feb fri-mon"),  # every field wraps around its end
        clocked(z("2025-01-01 00:00")),
    ):
        validate(spec)


def test_validate_message_names_schedule_field_and_value() -> None:
    spec = ScheduleSpec(name="nightly-report", kind="crontab", cron_minute="61")
    with pytest.raises(InvalidSchedule) as caught:
        validate(spec)
    assert str(caught.value) == (
        "schedule 'nightly-report': cron_minute: minute '61' is invalid: use 0-59, lists (0,30), "
        "ranges (0-29) and steps (*/15)"
    )
    assert caught.value.schedule == "nightly-report"
    assert caught.value.field == "cron_minute"


NAIVE = datetime(2025, 1, 1)


@pytest.mark.parametrize(
    ("spec", "field", "fragments"),
    [
        (cron("61 * * * *"), "cron_minute", ["'61'", "0-59"]),
        (cron("*/0 * * * *"), "cron_minute", ["'*/0'", "0-59"]),
        (cron("1-5x * * * *"), "cron_minute", ["'1-5x'"]),
        (cron("1-5/2/3 * * * *"), "cron_minute", ["'1-5/2/3'"]),
        (cron("5,,6 * * * *"), "cron_minute", ["'5,,6'"]),
        (cron("mon * * * *"), "cron_minute", ["'mon'"]),
        (ScheduleSpec("job", "crontab", cron_minute=""), "cron_minute", ["''"]),
        (cron("0 24 * * *"), "cron_hour", ["'24'", "0-23"]),
        (cron("0 -1 * * *"), "cron_hour", ["'-1'"]),
        (cron("0 0 * * 7"), "cron_day_of_week", ["'7'", "0-6"]),
        (cron("0 0 * * funday"), "cron_day_of_week", ["'funday'"]),
        (cron("0 0 * * mar"), "cron_day_of_week", ["'mar'"]),
        (cron("0 0 0 * *"), "cron_day_of_month", ["'0'", "1-31"]),
        (cron("0 0 32 * *"), "cron_day_of_month", ["'32'", "1-31"]),
        (cron("0 0 * 13 *"), "cron_month_of_year", ["'13'", "1-12"]),
        (cron("0 0 * mon *"), "cron_month_of_year", ["'mon'"]),
        (cron("0 0 31 2 *"), "cron_day_of_month", ["never matches", "'31'", "'2'"]),
        (cron("0 0 30,31 2 *"), "cron_day_of_month", ["never matches"]),
        (cron("0 0 31 2 mon"), "cron_day_of_month", ["never matches"]),  # both days must match
        (cron("0 0 31 4,6,9,11 *"), "cron_day_of_month", ["never matches"]),
        (cron("5/15 * * * *"), "cron_minute", ["'5/15'", "'5-59/15' or '*/15'"]),
        (cron("0 0 1/2 * *"), "cron_day_of_month", ["'1-31/2'"]),
        (cron("0 0 * * mon/2"), "cron_day_of_week", ["'mon-sat/2'"]),
        (cron("0 0 * feb/3 *"), "cron_month_of_year", ["'feb-dec/3'"]),
        (cron("0 0 * * *", "Mars/Base"), "timezone", ["unknown timezone 'Mars/Base'"]),
        (every(60, timezone=""), "timezone", ["unknown timezone ''"]),
        (every(-5), "interval_seconds", ["-5"]),
        (every(0), "interval_seconds", ["0"]),
        (every(math.nan), "interval_seconds", ["nan"]),
        (every(math.inf), "interval_seconds", ["inf"]),
        (every(1e-9), "interval_seconds", ["> 0"]),
        (ScheduleSpec("job", "interval"), "interval_seconds", ["None"]),
        (ScheduleSpec("job", "weekly"), "kind", ["'weekly'", "interval, crontab, solar, clocked"]),
        (ScheduleSpec("job", "clocked"), "clocked_at", ["clocked_at"]),
        (clocked(NAIVE), "clocked_at", ["timezone-aware"]),
        (every(60, start_time=NAIVE), "start_time", ["timezone-aware"]),
        (every(60, end_time=NAIVE), "end_time", ["timezone-aware"]),
        (every(60, start_time=GRID, end_time=GRID), "end_time", ["2025-01-01T00:00:10+00:00"]),
        (
            ScheduleSpec("job", "solar", solar_event="moonrise", latitude=0, longitude=0),
            "solar_event",
            ["'moonrise'", "sunrise"],
        ),
        (
            ScheduleSpec("job", "solar", solar_event="sunset", latitude=91, longitude=0),
            "latitude",
            ["91", "-90 and 90"],
        ),
        (
            ScheduleSpec("job", "solar", solar_event="sunset", latitude=0, longitude=-181),
            "longitude",
            ["-181", "-180 and 180"],
        ),
        (ScheduleSpec("job", "solar", solar_event="sunset"), "latitude", ["None"]),
    ],
)
def test_validate_errors(spec: ScheduleSpec, field: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        validate(spec)
    message = str(caught.value)
    assert caught.value.field == field
    assert message.startswith(f"schedule 'job': {field}: ")
    for fragment in fragments:
        assert fragment in message


def test_next_after_rejects_invalid_spec() -> None:
    with pytest.raises(InvalidSchedule, match="cron_hour"):
        next_after(cron("0 25 * * *"), NOW)
    with pytest.raises(InvalidSchedule, match="kind"):
        next_after(ScheduleSpec("job", "weekly"), NOW)


# --------------------------------------------------------------------------- payload


@pytest.mark.parametrize(
    ("args", "kwargs", "options"),
    [
        ([], {}, {}),
        ((1, 2), {}, {}),
        ([1, "a", None, True, {"x": [1.5]}], {"k": "v", "n": {"deep": [1]}}, {}),
        (
            [],
            {},
            {
                "queue": "reports",
                "exchange": "ex",
                "routing_key": "rk",
                "priority": 255,
                "headers": {"h": "v"},
                "expires": 30,
                "expire_seconds": 1.5,
                "soft_time_limit": 10,
                "time_limit": 20,
            },
        ),
        ([], {}, {"priority": 0}),
    ],
)
def test_validate_payload_accepts(args: object, kwargs: object, options: object) -> None:
    validate_payload("job", args, kwargs, options)


def test_message_options_is_the_whitelist_validate_payload_checks() -> None:
    assert sorted(MESSAGE_OPTIONS) == [
        "exchange",
        "expire_seconds",
        "expires",
        "headers",
        "priority",
        "queue",
        "routing_key",
        "soft_time_limit",
        "time_limit",
    ]
    with pytest.raises(InvalidSchedule, match="allowed: exchange, expire_seconds, expires"):
        validate_payload("job", [], {}, {"countdown": 1})


@pytest.mark.parametrize(
    ("args", "kwargs", "options", "field", "fragment"),
    [
        ("x", {}, {}, "args", "must be a list"),
        ({"a": 1}, {}, {}, "args", "not dict"),
        ([{1, 2}], {}, {}, "args", "JSON"),
        ([math.nan], {}, {}, "args", "JSON"),
        ([], [], {}, "kwargs", "string keys"),
        ([], {1: "a"}, {}, "kwargs", "string keys"),
        ([], {"a": object()}, {}, "kwargs", "JSON"),
        ([], {"a": math.inf}, {}, "kwargs", "JSON"),
        ([], {}, [], "options", "must be an object"),
        ([], {}, {"countdown": 5}, "options", "unknown option 'countdown'"),
        ([], {}, {"priority": 256}, "options", "'priority'"),
        ([], {}, {"priority": -1}, "options", "'priority'"),
        ([], {}, {"priority": "5"}, "options", "'priority'"),
        ([], {}, {"priority": True}, "options", "'priority'"),
        ([], {}, {"priority": 5.0}, "options", "'priority'"),
        ([], {}, {"headers": []}, "options", "'headers'"),
        ([], {}, {"headers": {"h": {1, 2}}}, "options", "JSON"),
        ([], {}, {"expires": 0}, "options", "'expires'"),
        ([], {}, {"expires": -10}, "options", "'expires'"),
        ([], {}, {"expires": "10"}, "options", "'expires'"),
        ([], {}, {"expire_seconds": math.nan}, "options", "'expire_seconds'"),
        ([], {}, {"time_limit": False}, "options", "'time_limit'"),
        ([], {}, {"queue": 5}, "options", "'queue'"),
    ],
)
def test_validate_payload_errors(
    args: object, kwargs: object, options: object, field: str, fragment: str
) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        validate_payload("report", args, kwargs, options)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"schedule 'report': {field}: ")
    assert fragment in str(caught.value)


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("1.5", 1.5),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        (" 1d2h3m4s ", 93784.0),
        ("1m500ms", 60.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "invalid duration ''"),
        ("   ", "invalid duration"),
        ("abc", "invalid duration 'abc'"),
        ("5x", "invalid duration '5x'"),
        ("-5", "invalid duration '-5'"),
        ("-5s", "invalid duration"),
        ("0", "greater than zero"),
        ("0s", "greater than zero"),
        ("0h0m", "greater than zero"),
        ("30m1h", "largest first"),
        ("1h1h", "invalid duration"),
        ("inf", "invalid duration"),
        ("nan", "invalid duration"),
        ("1e3", "invalid duration"),
        ("5 m s", "invalid duration"),
        ("1,5s", "invalid duration"),
    ],
)
def test_parse_duration_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="duration") as caught:
        parse_duration(text)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (every(30), "every 30s"),
        (every(5400), "every 1h30m"),
        (every(86400), "every 1d"),
        (every(90061), "every 1d1h1m1s"),
        (every(0.25), "every 250ms"),
        (every(1.5), "every 1.5s"),
        (cron("*/5 * * * *", BERLIN), "cron '*/5 * * * *' Europe/Berlin"),
        (cron("0 9 1 * mon-fri"), "cron '0 9 1 * mon-fri' UTC"),
        (
            ScheduleSpec("s", "solar", solar_event="sunrise", latitude=52.52, longitude=13.4),
            "solar sunrise (52.52, 13.40)",
        ),
        (clocked(z("2026-12-01 09:00")), "once at 2026-12-01T09:00:00Z"),
        (
            clocked(datetime.fromisoformat("2026-12-01T10:00:00+01:00")),
            "once at 2026-12-01T09:00:00Z",
        ),
    ],
)
def test_describe(spec: ScheduleSpec, text: str) -> None:
    assert describe(spec) == text
