"""The domain's checks of a schedule definition, below both the management API and the
planner: the planner validates a row edited by hand exactly as the API validates a write
(invariant 12). Pure: no database, no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from pg_beat import schedules
from pg_beat.config import OVERLAP_POLICIES
from pg_beat.exceptions import InvalidSchedule
from pg_beat.schedules import ScheduleSpec
from pg_beat.store.schedules import SCHEDULE_COLUMNS

CRON_FIELDS = (
    "cron_minute",
    "cron_hour",
    "cron_day_of_month",
    "cron_month_of_year",
    "cron_day_of_week",
)
SPEC_FIELDS = {f.name for f in fields(ScheduleSpec)}


def spec_from_row(row: Mapping[Any, Any]) -> ScheduleSpec:
    """The pure schedule definition of a stored row."""
    return ScheduleSpec(**{k: row[k] for k in SPEC_FIELDS if k in row})


def split_crontab(expression: str, name: str | None = None) -> dict[str, str]:
    """``'*/5 * * * *'`` (minute hour day-of-month month day-of-week) to the five columns."""
    parts = expression.split()
    if len(parts) != 5:
        raise InvalidSchedule(
            name,
            f"{expression!r} must have 5 fields (minute hour day-of-month month day-of-week), "
            f"not {len(parts)}",
            field="crontab",
        )
    return dict(zip(CRON_FIELDS, parts, strict=True))


def definition(
    name: str,
    *,
    every: float | timedelta | str | None = None,
    crontab: str | None = None,
    clocked: datetime | None = None,
    solar: tuple[str, float, float] | None = None,
) -> dict[str, Any]:
    """The kind-specific columns for one of the four ways to say when a schedule runs."""
    given = [
        k
        for k, v in (("every", every), ("crontab", crontab), ("clocked", clocked), ("solar", solar))
        if v is not None
    ]
    if len(given) > 1:
        words = ", ".join(f"{k}=" for k in given)
        raise InvalidSchedule(name, f"give only one of {words}", field="kind", argument="")
    if every is not None:
        seconds = _seconds(name, every)
        return {"kind": "interval", "interval_seconds": seconds}
    if crontab is not None:
        return {"kind": "crontab", **split_crontab(crontab, name)}
    if clocked is not None:
        return {"kind": "clocked", "clocked_at": clocked}
    if solar is not None:
        event, latitude, longitude = solar
        return {"kind": "solar", "solar_event": event, "latitude": latitude, "longitude": longitude}
    return {}


def _seconds(name: str, every: float | timedelta | str) -> float:
    try:
        if isinstance(every, str):
            return schedules.parse_duration(every)
        seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
    except (TypeError, ValueError) as exc:
        raise InvalidSchedule(name, str(exc), field="interval_seconds") from exc
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidSchedule(
            name,
            f"interval must be a positive number of seconds, got {every!r}",
            field="interval_seconds",
        )
    return seconds


def validate_values(name: str, values: Mapping[str, Any]) -> None:
    """Check a complete set of column values before anything is written."""
    unknown = set(values) - set(SCHEDULE_COLUMNS)
    if unknown:
        raise InvalidSchedule(
            name,
            f"unknown field(s): {', '.join(sorted(unknown))}",
            field=sorted(unknown)[0],
            argument="",
        )
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise InvalidSchedule(str(name), "must be 1 to 200 characters", field="name")
    task = values.get("task")
    if not isinstance(task, str) or not task.strip():
        raise InvalidSchedule(name, f"must be a task name, not {task!r}", field="task")
    spec = ScheduleSpec(name=name, **{k: v for k, v in values.items() if k in SPEC_FIELDS})
    schedules.validate(spec)
    schedules.validate_payload(
        name, values.get("args", []), values.get("kwargs", {}), values.get("options", {})
    )
    policy = values.get("misfire_policy")
    if policy is not None and policy not in schedules.MISFIRE_POLICIES:
        raise InvalidSchedule(
            name,
            f"unknown misfire policy {policy!r} (one of {', '.join(schedules.MISFIRE_POLICIES)})",
            field="misfire_policy",
        )
    limit = values.get("catch_up_limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InvalidSchedule(
            name, f"must be an integer >= 1, got {limit!r}", field="catch_up_limit"
        )
    if limit is not None and limit > schedules.MAX_CATCH_UP_LIMIT:
        message = (
            f"must be at most {schedules.MAX_CATCH_UP_LIMIT} (a catch_up's ticks are claimed in "
            f"one transaction), got {limit!r}"
        )
        raise InvalidSchedule(name, message, field="catch_up_limit")
    _validate_overlap(name, values)


def _validate_overlap(name: str, values: Mapping[str, Any]) -> None:
    """``overlap_policy``, ``max_runtime`` and ``run_once``: each None (the setting) or valid."""
    policy = values.get("overlap_policy")
    if policy is not None and policy not in OVERLAP_POLICIES:
        raise InvalidSchedule(
            name,
            f"unknown overlap policy {policy!r} (one of {', '.join(OVERLAP_POLICIES)})",
            field="overlap_policy",
        )
    runtime = values.get("max_runtime")
    if runtime is not None and (
        isinstance(runtime, bool)
        or not isinstance(runtime, (int, float))
        or not math.isfinite(runtime)
        or runtime <= 0
    ):
        raise InvalidSchedule(
            name, f"must be a number of seconds > 0, got {runtime!r}", field="max_runtime"
        )
    once = values.get("run_once")
    if once is not None and not isinstance(once, bool):
        raise InvalidSchedule(name, f"must be true or false, got {once!r}", field="run_once")
