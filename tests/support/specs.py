"""Schedule definitions and instants for the schedule-math tests, short to write in tables."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pg_beat.schedules import ScheduleSpec

UTC = timezone.utc


def z(text: str) -> datetime:
    """``"2025-01-01 12:00"`` (or with seconds / microseconds) as an aware UTC datetime."""
    if "." in text:  # Python 3.10's fromisoformat takes a fraction of 3 or 6 digits only
        whole, fraction = text.split(".")
        text = f"{whole}.{fraction:0<6}"
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def cron(expr: str, tz: str = "UTC", **extra: Any) -> ScheduleSpec:
    """A crontab spec from ``"minute hour day-of-month month day-of-week"``."""
    minute, hour, dom, month, dow = expr.split()
    return ScheduleSpec(
        name="job",
        kind="crontab",
        cron_minute=minute,
        cron_hour=hour,
        cron_day_of_month=dom,
        cron_month_of_year=month,
        cron_day_of_week=dow,
        timezone=tz,
        **extra,
    )


def every(seconds: float, **extra: Any) -> ScheduleSpec:
    return ScheduleSpec(name="job", kind="interval", interval_seconds=seconds, **extra)


def clocked(at: datetime, **extra: Any) -> ScheduleSpec:
    return ScheduleSpec(name="job", kind="clocked", clocked_at=at, **extra)
