"""Pure schedule math: validation, next due times, misfire handling and payload checks.

Nothing here touches the clock or the database: every function takes ``now`` or ``after``
as an argument, so the DST, leap-day and misfire rules can be tested with plain tables.
All datetimes are timezone-aware; every datetime returned is in UTC.

Due times are those of Celery's own schedule classes (differential tests prove it), except:

- Intervals keep a grid (next = previous due + interval); Celery drifts (next = run time + it).
- DST, where Celery has bugs: a wall time skipped by spring-forward fires once, at the jump
  (Celery: one gap later, 02:30 -> 03:30); a repeated wall time fires at its first occurrence,
  and at both when the hour field is ``*`` (Celery skips the second pass of the hour, and
  fires on every beat tick when its last run fell in that second pass).
- Solar due times are the events rounded up to whole seconds.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import ParseException, crontab_parser, solar
from celery.utils.time import WEEKDAYS, YEARMONTHS

from pg_beat import downtime
from pg_beat.exceptions import InvalidSchedule

Kind = Literal["interval", "crontab", "solar", "clocked"]
MisfirePolicy = Literal["fire_once", "skip", "catch_up"]
KINDS: tuple[str, ...] = get_args(Kind)
MISFIRE_POLICIES: tuple[str, ...] = get_args(MisfirePolicy)
#: Most ticks one ``catch_up`` misfire sends. They are decided and recorded in one claim
#: transaction (a row is never split between two), so this bounds that transaction
#: (invariant 11): 1,000 crontab ticks cost about 40 ms of search (solar ones 110 ms, but
#: need three years of downtime), plus 1,000 run rows in one insert: one to three times a
#: claim's 45 ms target, far inside the statement timeout and the lease.
MAX_CATCH_UP_LIMIT = 1000

UTC = timezone.utc
_US, _1S = timedelta(microseconds=1), timedelta(seconds=1)
_1M, _59M = timedelta(minutes=1), timedelta(minutes=59)
#: Crontab search horizon. Every day of month that validation accepts falls on every weekday
#: within 40 years (the worst is Feb 29 on one weekday: 2072 -> 2112), so a crontab that
#: validates always has a due time inside it, unless end_time or year 9999 comes first.
_CRON_YEARS = 41
#: ephem's rise/set search stops within 0.1 s, so the same sunrise found from two starts can
#: round up to neighbouring seconds: an event less than this after ``after`` is that one.
_SOLAR_SAME_EVENT = _1S
#: Most daily solar search steps: a polar day or night lasts under 190 days, so 400 steps find
#: the next event wherever it happens at all.
_SOLAR_SEARCHES = 400
# Field -> (label in messages, lowest, highest, names accepted besides numbers).
_CRON_FIELDS: dict[str, tuple[str, int, int, dict[str, int]]] = {
    "cron_minute": ("minute", 0, 59, {}),
    "cron_hour": ("hour", 0, 23, {}),
    "cron_day_of_week": ("day of week", 0, 6, WEEKDAYS),
    "cron_day_of_month": ("day of month", 1, 31, {}),
    "cron_month_of_year": ("month", 1, 12, YEARMONTHS),
}
#: What each crontab field accepts, said in its error message.
_CRON_USAGE = {
    "cron_minute": "use 0-59, lists (0,30), ranges (0-29) and steps (*/15)",
    "cron_hour": "use 0-23, lists (9,17), ranges (9-17) and steps (*/2)",
    "cron_day_of_week": (
        "use 0-6 (0 = Sunday) or names sun..sat, lists (mon,wed), ranges (mon-fri) and steps (*/2)"
    ),
    "cron_day_of_month": "use 1-31, lists (1,15), ranges (1-7) and steps (*/2)",
    "cron_month_of_year": (
        "use 1-12 or names jan..dec, lists (jan,jul), ranges (jan-mar) and steps (*/3)"
    ),
}
_CRON_PART = re.compile(r"(?:\*|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/[0-9]+)?")
_CRON_BARE_STEP = re.compile(r"([A-Za-z0-9]+)/([0-9]+)")
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule's timing definition; which fields matter depends on ``kind``."""

    name: str
    kind: str
    interval_seconds: float | None = None
    cron_minute: str = "*"
    cron_hour: str = "*"
    cron_day_of_week: str = "*"
    cron_day_of_month: str = "*"
    cron_month_of_year: str = "*"
    timezone: str = "UTC"
    solar_event: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    clocked_at: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class Misfire:
    """What to do with a schedule found due: the ticks to record and the next due time."""

    #: ``(due_at, send)`` pairs, oldest first, the claimed due time first: each is recorded as
    #: a run; ``send=False`` records it as skipped instead of publishing it.
    ticks: tuple[tuple[datetime, bool], ...]
    #: How many due times the policy dropped: neither sent nor recorded. Exact for interval
    #: and clocked schedules. ``None`` for crontab and solar ones when some may have been
    #: dropped: counting them would cost a walk over every one, and even telling "none"
    #: from "some" after a late ``fire_once`` or ``skip`` would cost a second search.
    passed_over: int | None
    #: The schedule's next due time after this decision (UTC); ``None`` when there is none
    #: (past ``end_time``, or a clocked schedule that has fired).
    next_due: datetime | None


@dataclass(frozen=True)
class _Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_week: frozenset[int]  # 0 = Sunday, as in cron
    days_of_month: tuple[int, ...]
    months: frozenset[int]
    every_hour: bool  # both occurrences of a repeated (fall-back) hour fire


class _BadCronField(ValueError):
    def __init__(self, field: str, hint: str | None = None) -> None:
        super().__init__(field)
        self.field, self.hint = field, hint


# --------------------------------------------------------------------------- validation


def validate(spec: ScheduleSpec) -> None:
    """Raise :class:`InvalidSchedule` naming the bad field unless ``spec`` is usable."""
    if not isinstance(spec.name, str) or not spec.name:
        raise InvalidSchedule(None, "name must be a non-empty string", field="name")
    if spec.kind not in KINDS:
        raise _bad(spec, "kind", f"unknown kind {spec.kind!r} (one of: {', '.join(KINDS)})")
    _zone(spec)
    for field in ("clocked_at", "start_time", "end_time"):
        value = getattr(spec, field)
        if value is not None and not _is_aware(value):
            shown = value.isoformat() if isinstance(value, datetime) else repr(value)
            raise _bad(spec, field, f"{shown} is not a timezone-aware datetime (no UTC offset)")
    start, end = spec.start_time, spec.end_time
    if start and end and start >= end:
        message = f"{end.isoformat()} is not after the start time {start.isoformat()}"
        raise _bad(spec, "end_time", message)
    if spec.kind == "interval":
        _interval(spec)
    elif spec.kind == "crontab":
        _check_crontab_can_match(spec, _cron(spec))
    elif spec.kind == "solar":
        _solar_params(spec)
        _ephem(spec)
    else:
        _clocked_at(spec)


def _bad(spec: ScheduleSpec, field: str, message: str) -> InvalidSchedule:
    return InvalidSchedule(spec.name, message, field=field)


def _is_aware(value: object) -> bool:
    return isinstance(value, datetime) and value.utcoffset() is not None


def _zone(spec: ScheduleSpec) -> ZoneInfo:
    try:
        return ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        message = (
            f"unknown timezone {spec.timezone!r}: use an IANA name such as Europe/Berlin, "
            "America/New_York or UTC"
        )
        raise _bad(spec, "timezone", message) from exc


def _interval(spec: ScheduleSpec) -> timedelta:
    value = spec.interval_seconds
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        step = timedelta(seconds=value)
        if step > timedelta(0):
            return step
    raise _bad(spec, "interval_seconds", f"interval {value!r} must be a number of seconds > 0")


def _cron(spec: ScheduleSpec) -> _Cron:
    texts = tuple(getattr(spec, field) for field in _CRON_FIELDS)
    try:
        return _parse_cron(texts)
    except _BadCronField as exc:
        label = _CRON_FIELDS[exc.field][0]
        text = getattr(spec, exc.field)
        message = f"{label} {text!r} is invalid: " + (exc.hint or _CRON_USAGE[exc.field])
        raise _bad(spec, exc.field, message) from exc.__cause__


@lru_cache(maxsize=512)
def _parse_cron(texts: tuple[object, ...]) -> _Cron:
    sets = {
        field: _parse_field(field, text) for field, text in zip(_CRON_FIELDS, texts, strict=True)
    }
    return _Cron(
        minutes=tuple(sorted(sets["cron_minute"])),
        hours=tuple(sorted(sets["cron_hour"])),
        days_of_week=sets["cron_day_of_week"],
        days_of_month=tuple(sorted(sets["cron_day_of_month"])),
        months=sets["cron_month_of_year"],
        every_hour=len(sets["cron_hour"]) == 24,
    )


def _parse_field(field: str, text: object) -> frozenset[int]:
    """The values of one crontab field, as Celery's ``crontab_parser`` reads them.

    A range ``a-b`` with a > b wraps around the field's end, as in Celery: hours ``22-2`` are
    22, 23, 0, 1, 2 and ``fri-mon`` is fri, sat, sun, mon. A step needs ``*`` or a range
    before it: Celery rejects ``5/15``, and so does pg_beat, with the fix in the message.
    """
    _, low, high, names = _CRON_FIELDS[field]
    if not isinstance(text, str):
        raise _BadCronField(field)
    text = text.strip()
    for part in text.split(","):
        bare = _CRON_BARE_STEP.fullmatch(part)
        if bare:
            start, step = bare.groups()
            end = (
                next((n for n, v in names.items() if v == high), high) if start.isalpha() else high
            )
            hint = f"a step needs '*' or a range before it: '{start}-{end}/{step}' or '*/{step}'"
            raise _BadCronField(field, hint)
    # Celery's parser ignores trailing junk and takes month names in any field: be stricter.
    if not all(_CRON_PART.fullmatch(part) for part in text.split(",")) or any(
        word[:3].lower() not in names for word in re.findall(r"[A-Za-z]+", text)
    ):
        raise _BadCronField(field)
    try:
        result = frozenset(int(v) for v in crontab_parser(high - low + 1, low).parse(text))
    except (ValueError, ParseException, KeyError, IndexError) as exc:
        raise _BadCronField(field) from exc
    if not result or min(result) < low or max(result) > high:
        raise _BadCronField(field)
    return result


def _check_crontab_can_match(spec: ScheduleSpec, cron: _Cron) -> None:
    # The three day fields must all match (Celery's rule, not Vixie cron's "either day"), so
    # the only crontab that never fires names no day that its months have (Feb 30, Apr 31).
    # Weekdays cannot make it impossible: see _CRON_YEARS.
    if not any(day <= _MONTH_DAYS[m - 1] for m in cron.months for day in cron.days_of_month):
        message = (
            f"never matches: day of month {spec.cron_day_of_month!r} "
            f"does not occur in month {spec.cron_month_of_year!r}"
        )
        raise _bad(spec, "cron_day_of_month", message)


def _solar_params(spec: ScheduleSpec) -> tuple[str, float, float]:
    events = sorted(solar._all_events)
    if spec.solar_event not in events:
        message = f"unknown solar event {spec.solar_event!r} (one of: {', '.join(events)})"
        raise _bad(spec, "solar_event", message)
    for field, bound in (("latitude", 90), ("longitude", 180)):
        value = getattr(spec, field)
        if not isinstance(value, (int, float)) or not -bound <= value <= bound:
            raise _bad(spec, field, f"{field} {value!r} must be between -{bound} and {bound}")
    assert spec.latitude is not None and spec.longitude is not None
    return str(spec.solar_event), float(spec.latitude), float(spec.longitude)


def _ephem(spec: ScheduleSpec) -> Any:
    try:
        import ephem
    except ImportError as exc:
        message = "solar schedules need the 'ephem' package: pip install 'pg-beat[solar]'"
        raise _bad(spec, "kind", message) from exc
    return ephem


def _clocked_at(spec: ScheduleSpec) -> datetime:
    if spec.clocked_at is None or not _is_aware(spec.clocked_at):
        message = "a clocked schedule needs the time it runs at, a timezone-aware datetime"
        raise _bad(spec, "clocked_at", message)
    return spec.clocked_at


# --------------------------------------------------------------------------- next due time


def next_after(spec: ScheduleSpec, after: datetime) -> datetime | None:
    """The first due instant strictly after ``after`` (UTC), or None if there is none."""
    if not _is_aware(after):
        raise ValueError(f"after={after!r} must be timezone-aware")
    if spec.start_time is not None and spec.kind != "interval":
        after = max(after, spec.start_time - _US)
    result: datetime | None
    if spec.kind == "interval":
        result = _interval_after(spec, after)
    elif spec.kind == "crontab":
        result = _cron_after(spec, after)
    elif spec.kind == "solar":
        result = _solar_after(spec, after)
    elif spec.kind == "clocked":
        at = _clocked_at(spec)
        result = at if at > after else None
    else:
        validate(spec)  # raises for the unknown kind
        result = None
    if result is None or (spec.end_time is not None and result > spec.end_time):
        return None
    return result.astimezone(UTC)


def first_due(spec: ScheduleSpec, now: datetime, last_due: datetime | None) -> datetime | None:
    """Due time of a schedule with none planned (new or redefined); may lie before ``now``.

    One that was due before goes on from its last due time. A new one behaves as if it had
    last run at ``now``, as Celery's ``ScheduleEntry`` does: an interval first runs one
    interval after ``now``, a crontab or solar schedule at its first due time after ``now``.
    An interval with ``start_time`` starts at its first grid time at or after ``now``; a
    clocked schedule that never ran fires once even when ``clocked_at`` is past.
    """
    if last_due is not None:
        return next_after(spec, last_due)
    due: datetime | None
    if spec.kind == "clocked":
        due = _clocked_at(spec)
        if spec.start_time is not None and due < spec.start_time:
            due = None
    elif spec.kind == "interval" and spec.start_time is not None:
        due = next_after(spec, now - _US)
    else:
        due = next_after(spec, now)
    if due is None or (spec.end_time is not None and due > spec.end_time):
        return None
    return due.astimezone(UTC)


@dataclass(frozen=True)
class _Grid:
    """An interval schedule's due times: ``origin + k * step`` for k >= 0, none after ``end``.

    Integer arithmetic on microseconds (timedelta // timedelta), so a 0.1 s interval a
    million seconds behind lands exactly on the grid, without a loop.
    """

    origin: datetime
    step: timedelta
    end: datetime | None

    def index_after(self, moment: datetime) -> int:
        """Index of the first grid time strictly after ``moment``."""
        if moment < self.origin:
            return 0
        return (moment - self.origin) // self.step + 1

    def point(self, index: int) -> datetime:
        return (self.origin + index * self.step).astimezone(UTC)

    def due(self, index: int) -> datetime | None:
        """The grid time of ``index``, or None when it lies after ``end``."""
        moment = self.point(index)
        return None if self.end is not None and moment > self.end else moment

    def count(self, low: datetime, high: datetime) -> int:
        """How many grid times lie in (``low``, ``high``], ``end`` included at most."""
        if self.end is not None:
            high = min(high, self.end)
        return max(0, self.index_after(high) - self.index_after(low))


def _grid(spec: ScheduleSpec, anchor: datetime) -> _Grid:
    """The grid of ``start_time``, or without one the grid through ``anchor``."""
    return _Grid(spec.start_time or anchor, _interval(spec), spec.end_time)


def _interval_after(spec: ScheduleSpec, after: datetime) -> datetime:
    grid = _grid(spec, after)
    return grid.point(grid.index_after(after))


def _cron_after(spec: ScheduleSpec, after: datetime) -> datetime | None:
    cron, zone = _cron(spec), _zone(spec)
    floor = _wall_floor(after, zone)
    last = date(min(floor.year + _CRON_YEARS, 9998), 12, 31)
    if spec.end_time is not None:
        last = min(last, spec.end_time.astimezone(zone).date() + timedelta(days=1))
    for day in _cron_days(cron, floor.date(), last):
        found = _cron_in_day(cron, zone, day, after, floor)
        if found is not None:
            return found
    return None


def _wall_floor(after: datetime, zone: ZoneInfo) -> datetime:
    """The earliest wall time (naive) that an instant after ``after`` reads as in ``zone``.

    Wall clocks run backwards only at a fall-back, and one more than a day after ``after``
    cannot go back past its wall time (no shift in the tz database reaches a day; the widest
    fall-back since 1970 is Antarctica/Vostok's 7 hours in 1994).
    """
    here, later = after.astimezone(zone), (after + timedelta(days=1)).astimezone(zone)
    drop = (here.utcoffset() or timedelta(0)) - (later.utcoffset() or timedelta(0))
    return here.replace(tzinfo=None) - max(drop, timedelta(0))


def _cron_days(cron: _Cron, first: date, last: date) -> Iterator[date]:
    """The days from ``first`` to ``last`` whose month, day of month and weekday all match.

    Celery ANDs the two day fields (``0 9 1-7 * mon`` is the first Monday of each month);
    Vixie cron would OR them when both are restricted.
    """
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        if month in cron.months:
            length = calendar.monthrange(year, month)[1]
            for number in cron.days_of_month:
                if number > length:
                    break
                day = date(year, month, number)
                if first <= day <= last and day.isoweekday() % 7 in cron.days_of_week:
                    yield day
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def _cron_in_day(
    cron: _Cron, zone: ZoneInfo, day: date, after: datetime, floor: datetime
) -> datetime | None:
    """Earliest due instant > ``after`` among the day's matching wall times.

    The fold=0 and fold=1 readings of a wall time bound its due instant and never decrease
    as the wall time grows, so hours already past are skipped and the search stops as soon
    as a later hour cannot win. An hour without a DST change is plain arithmetic.
    """
    best: datetime | None = None
    for hour in cron.hours:
        if day == floor.date() and hour < floor.hour:
            continue
        top = datetime(day.year, day.month, day.day, hour)
        (first, second), (last, last_second) = _readings(top, zone), _readings(top + _59M, zone)
        if best is not None and min(first, second) > best:
            break
        if max(last, last_second) <= after:
            continue
        if first == second and last == last_second and last - first == _59M:
            index = bisect_right(cron.minutes, (after - first) // _1M)
            if index < len(cron.minutes):
                found = first + cron.minutes[index] * _1M
                best = found if best is None else min(best, found)
            continue
        for minute in cron.minutes:
            first, second = _readings(top.replace(minute=minute), zone)
            for instant in _wall_instants(first, second, zone, cron.every_hour):
                if instant > after and (best is None or instant < best):
                    best = instant
    return best


def _readings(wall: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The UTC instants of a naive wall time read with fold=0 and fold=1."""
    return (
        wall.replace(tzinfo=zone).astimezone(UTC),
        wall.replace(tzinfo=zone, fold=1).astimezone(UTC),
    )


def _wall_instants(
    first: datetime, second: datetime, zone: ZoneInfo, every_hour: bool
) -> tuple[datetime, ...]:
    if first == second:  # an ordinary wall time
        return (first,)
    if first > second:  # skipped by spring-forward: fire when the clock jumps
        return (_transition(second, first, zone),)
    # Repeated by fall-back: once at the first occurrence, unless the job runs every hour.
    return (first, second) if every_hour else (first,)


def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """First whole second in (before, after] whose UTC offset differs from ``before``'s."""
    offset = before.astimezone(zone).utcoffset()
    low, high = 0, int((after - before).total_seconds())
    while high - low > 1:
        mid = (low + high) // 2
        if (before + timedelta(seconds=mid)).astimezone(zone).utcoffset() == offset:
            low = mid
        else:
            high = mid
    return before + timedelta(seconds=high)


def _solar_after(spec: ScheduleSpec, after: datetime) -> datetime | None:
    event, latitude, longitude = _solar_params(spec)
    ephem = _ephem(spec)
    observer = ephem.Observer()
    observer.lat, observer.lon = str(latitude), str(longitude)
    observer.elevation, observer.pressure = 0, 0
    observer.horizon = solar._horizons[event]
    find = getattr(observer, solar._methods[event])
    extra = {"use_center": True} if solar._use_center_l[event] else {}
    sun = ephem.Sun()
    start = ephem.Date(after.astimezone(UTC).replace(tzinfo=None))
    for _ in range(_SOLAR_SEARCHES):
        try:
            found = find(sun, start=start, **extra)
        except ephem.CircumpolarError:  # polar day or night: look again a day later
            start = observer.next_antitransit(sun, start=start)
            continue
        raw: datetime = found.datetime().replace(tzinfo=UTC)
        if raw > after + _SOLAR_SAME_EVENT:
            # Round up: a due time never precedes its event, and it is a whole second.
            return raw.replace(microsecond=0) + (_1S if raw.microsecond else timedelta(0))
        start = ephem.Date(found + ephem.second)
    return None


# --------------------------------------------------------------------------- misfires


def resolve_misfire(
    spec: ScheduleSpec,
    due: datetime,
    now: datetime,
    policy: str,
    grace: float,
    catch_up_limit: int,
    term: downtime.Term | None = None,
) -> Misfire:
    """Decide about a schedule whose due time ``due`` (<= ``now``) was found at ``now``.

    A due time is late when more than ``grace`` seconds (>= 0) of its wait were downtime (see
    :mod:`pg_beat.downtime`): before ``term.started - grace``, where the gap before the term
    is longer than ``grace``. Without a ``term``, as if one began at ``now`` with nothing
    watched before it: late means older than ``now - grace``. ``fire_once`` sends ``due`` and
    drops later due times that are late; ``skip`` does the same but records a late ``due`` as
    skipped instead of sending it; ``catch_up`` sends ``due`` and the due times after it up to
    ``now``, ``catch_up_limit`` (1 to :data:`MAX_CATCH_UP_LIMIT`) in all, and drops what is
    late beyond that. A due time that is not late is never dropped: it fires on its own next.
    The cost does not grow with how far behind the schedule is: at most one ``next_after``
    (arithmetic for intervals), ``catch_up_limit + 1`` for ``catch_up``.
    """
    if policy not in MISFIRE_POLICIES:
        message = f"unknown misfire policy {policy!r} (one of: {', '.join(MISFIRE_POLICIES)})"
        raise _bad(spec, "misfire_policy", message)
    if not 1 <= catch_up_limit <= MAX_CATCH_UP_LIMIT:
        raise ValueError(
            f"catch_up_limit={catch_up_limit!r} must be between 1 and {MAX_CATCH_UP_LIMIT}"
        )
    late = downtime.late_before(term or downtime.Term(now), grace)
    # Nothing late: a cut at the due time itself drops nothing and keeps every due time after.
    cut = due if late is None else late
    if spec.kind == "interval":
        return _resolve_on_grid(_grid(spec, due), due, now, cut, policy, catch_up_limit)
    if policy == "catch_up":
        return _catch_up(spec, due, now, cut, catch_up_limit)
    send = policy == "fire_once" or due >= cut
    # Whether anything lay in (due, cut] would take a second search: count only what is sure.
    passed_over = 0 if cut <= due or spec.kind == "clocked" else None
    return Misfire(((due, send),), passed_over, next_after(spec, max(due, cut)))


def _resolve_on_grid(
    grid: _Grid, due: datetime, now: datetime, cut: datetime, policy: str, limit: int
) -> Misfire:
    if policy != "catch_up":
        send = policy == "fire_once" or due >= cut
        resume = grid.index_after(max(due, cut))
        return Misfire(((due, send),), grid.count(due, cut), grid.due(resume))
    following = grid.index_after(due)
    missed = grid.count(due, now)  # grid times in (due, now], from index ``following`` on
    taken = min(missed, limit - 1)
    ticks = ((due, True), *((grid.point(following + i), True) for i in range(taken)))
    if missed == taken:
        return Misfire(ticks, 0, grid.due(following + taken))
    last = ticks[-1][0]
    return Misfire(ticks, grid.count(last, cut), grid.due(grid.index_after(max(last, cut))))


def _catch_up(
    spec: ScheduleSpec, due: datetime, now: datetime, cut: datetime, limit: int
) -> Misfire:
    sent = [due]
    following = next_after(spec, due)
    while following is not None and following <= now and len(sent) < limit:
        sent.append(following)
        following = next_after(spec, following)
    ticks = tuple((moment, True) for moment in sent)
    if following is None or following > cut:
        # Nothing left behind, or only due times within grace: they fire on their own next.
        return Misfire(ticks, 0, following)
    return Misfire(ticks, None, next_after(spec, cut))


# --------------------------------------------------------------------------- text


_UNITS = {"w": 604_800.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION = re.compile(
    r"(?:(?P<w>\d+(?:\.\d+)?)w)?\s*(?:(?P<d>\d+(?:\.\d+)?)d)?\s*(?:(?P<h>\d+(?:\.\d+)?)h)?\s*"
    r"(?:(?P<m>\d+(?:\.\d+)?)m)?\s*(?:(?P<s>\d+(?:\.\d+)?)s)?\s*(?:(?P<ms>\d+(?:\.\d+)?)ms)?"
)


def parse_duration(text: str) -> float:
    """Seconds in ``"30"``, ``"1.5s"``, ``"250ms"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"1h30m"``.

    Units w, d, h, m, s, ms, largest first; raises ValueError on garbage, zero or negatives.
    """
    cleaned = text.strip() if isinstance(text, str) else ""
    if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        seconds = float(cleaned)
    else:
        match = _DURATION.fullmatch(cleaned)
        if not cleaned or match is None:
            raise ValueError(
                f"invalid duration {text!r}: use seconds or units w, d, h, m, s, ms "
                "largest first, e.g. '30', '1h30m' or '250ms'"
            )
        seconds = sum(float(v) * _UNITS[k] for k, v in match.groupdict().items() if v)
    if not seconds > 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """Compact text for a duration in seconds: 5400 -> ``"1h30m"``, 0.25 -> ``"250ms"``."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole, parts = int(seconds), []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        amount, whole = divmod(whole, size)
        if amount:
            parts.append(f"{amount}{unit}")
    rest = whole + (seconds - int(seconds))
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


def describe(spec: ScheduleSpec) -> str:
    """Short human text: ``every 1h30m``, ``cron '*/5 * * * *' Europe/Berlin``, ..."""
    if spec.kind == "interval" and spec.interval_seconds is not None:
        return f"every {format_duration(spec.interval_seconds)}"
    if spec.kind == "crontab":
        fields = [spec.cron_minute, spec.cron_hour, spec.cron_day_of_month]
        fields += [spec.cron_month_of_year, spec.cron_day_of_week]
        return f"cron '{' '.join(fields)}' {spec.timezone}"
    if spec.kind == "solar" and spec.latitude is not None and spec.longitude is not None:
        return f"solar {spec.solar_event} ({spec.latitude:.2f}, {spec.longitude:.2f})"
    if spec.kind == "clocked" and spec.clocked_at is not None and _is_aware(spec.clocked_at):
        return "once at " + spec.clocked_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return f"{spec.kind} (incomplete)"


# --------------------------------------------------------------------------- payload


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_str_dict(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


def _is_seconds(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and value > 0


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


#: The ``apply_async`` options a schedule may carry: name -> (what it must be, its check).
MESSAGE_OPTIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "queue": ("a string", _is_str),
    "exchange": ("a string", _is_str),
    "routing_key": ("a string", _is_str),
    "priority": ("an integer 0-255", lambda v: type(v) is int and 0 <= v <= 255),
    "headers": ("an object with string keys", _is_str_dict),
    "expires": ("a number of seconds > 0", _is_seconds),
    "expire_seconds": ("a number of seconds > 0", _is_seconds),
    "soft_time_limit": ("a number of seconds > 0", _is_seconds),
    "time_limit": ("a number of seconds > 0", _is_seconds),
}


def validate_payload(name: str, args: object, kwargs: object, options: object) -> None:
    """Raise :class:`InvalidSchedule` unless args, kwargs and options can be stored as JSON.

    ``args`` is a list (a tuple is accepted too), ``kwargs`` a dict with string keys,
    ``options`` a dict of known ``apply_async`` options; durations in seconds.
    """
    if not isinstance(args, (list, tuple)):
        kind = type(args).__name__
        raise InvalidSchedule(name, f"must be a list (JSON array), not {kind}", field="args")
    if not _is_str_dict(kwargs):
        raise InvalidSchedule(name, "must be an object with string keys", field="kwargs")
    if not isinstance(options, dict):
        kind = type(options).__name__
        raise InvalidSchedule(name, f"must be an object, not {kind}", field="options")
    for key, value in options.items():
        if key not in MESSAGE_OPTIONS:
            message = f"unknown option {key!r} (allowed: {', '.join(sorted(MESSAGE_OPTIONS))})"
            raise InvalidSchedule(name, message, field="options")
        expected, check = MESSAGE_OPTIONS[key]
        if not check(value):
            message = f"option {key!r} must be {expected}, not {value!r}"
            raise InvalidSchedule(name, message, field="options")
    for field, value in (("args", args), ("kwargs", kwargs), ("options", options)):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            message = f"not JSON-serialisable: {exc}"
            raise InvalidSchedule(name, message, field=field) from exc
