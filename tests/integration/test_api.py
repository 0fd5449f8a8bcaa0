"""ScheduleManager against real PostgreSQL: every method, validation that writes nothing,
``sync_config``, and what the triggers do to writes made with plain SQL."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from support import pg
from support.pg import free_port
from support.pg import libpq_url as libpq

from pg_beat import migrate
from pg_beat.api import ScheduleManager
from pg_beat.config import Settings
from pg_beat.exceptions import (
    DatabaseUnavailable,
    InvalidSchedule,
    PgBeatError,
    ScheduleExists,
    ScheduleLocked,
    ScheduleNotFound,
)

pytestmark = pytest.mark.timeout(60)

UTC = timezone.utc
Row = dict[str, Any]


# --- helpers -------------------------------------------------------------------------------------


def sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def row(url: str, name: str, group: str = "default") -> Row:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(
            "SELECT * FROM pg_beat_schedules WHERE group_name = %s AND name = %s", (group, name)
        )
        found = cur.fetchone()
        assert found is not None, f"no row for schedule {name!r}"
        assert cur.description is not None
        return {col.name: value for col, value in zip(cur.description, found, strict=True)}


def snapshot(url: str) -> list[tuple[Any, ...]]:
    """Every schedule row, every column: equal snapshots mean nothing was written."""
    return sql(url, "SELECT * FROM pg_beat_schedules ORDER BY id")


def db_now(url: str) -> datetime:
    value: datetime = sql(url, "SELECT clock_timestamp()")[0][0]
    return value


@pytest.fixture
def api(db_url: str) -> Any:
    with ScheduleManager(db_url) as manager:
        yield manager


# --- create, one test per kind -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("every", "seconds"),
    [(30, 30.0), (0.25, 0.25), (timedelta(minutes=5), 300.0), ("1h30m", 5400.0), ("250ms", 0.25)],
)
def test_create_every(api: ScheduleManager, db_url: str, every: Any, seconds: float) -> None:
    info = api.create(
        "tick",
        "app.tick",
        every=every,
        args=[1, "two", {"three": 3}],
        kwargs={"k": [None, True]},
        options={"queue": "fast", "priority": 5, "expires": 10.0, "headers": {"h": "v"}},
        description="a tick",
    )
    assert (info.name, info.task, info.kind, info.spec.interval_seconds) == (
        "tick",
        "app.tick",
        "interval",
        seconds,
    )
    stored = row(db_url, "tick")
    assert stored["kind"] == "interval" and stored["interval_seconds"] == seconds
    assert stored["args"] == [1, "two", {"three": 3}]
    assert stored["kwargs"] == {"k": [None, True]}
    assert stored["options"] == {
        "queue": "fast",
        "priority": 5,
        "expires": 10.0,
        "headers": {"h": "v"},
    }
    assert stored["source"] == "api" and stored["enabled"] is True and stored["one_off"] is False
    assert stored["description"] == "a tick"
    assert stored["total_run_count"] == 0 and stored["last_run_at"] is None
    # The scheduler plans a new schedule; the API leaves next_run_at to it.
    assert stored["next_run_at"] is None
    assert info.schedule_text.startswith("every ")


def test_create_crontab_with_timezone(api: ScheduleManager, db_url: str) -> None:
    info = api.create(
        "nightly-report",
        "reports.nightly",
        crontab="30 3 1-7 jan,jul mon",
        timezone="Europe/Berlin",
    )
    assert info.kind == "crontab"
    stored = row(db_url, "nightly-report")
    assert (
        stored["cron_minute"],
        stored["cron_hour"],
        stored["cron_day_of_month"],
        stored["cron_month_of_year"],
        stored["cron_day_of_week"],
    ) == ("30", "3", "1-7", "jan,jul", "mon")
    assert stored["timezone"] == "Europe/Berlin"
    assert stored["interval_seconds"] is None
    assert info.schedule_text == "cron '30 3 1-7 jan,jul mon' Europe/Berlin"


def test_create_crontab_defaults_to_utc(api: ScheduleManager, db_url: str) -> None:
    api.create("every-5", "t.t", crontab="*/5 * * * *")
    assert row(db_url, "every-5")["timezone"] == "UTC"


def test_create_clocked(api: ScheduleManager, db_url: str) -> None:
    at = datetime(2031, 5, 17, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    info = api.create("launch", "t.launch", clocked=at, one_off=True)
    stored = row(db_url, "launch")
    assert stored["kind"] == "clocked" and stored["clocked_at"] == at
    assert stored["one_off"] is True
    assert info.spec.clocked_at == at
    assert info.schedule_text == "once at 2031-05-17T07:30:00Z"


def test_create_solar(api: ScheduleManager, db_url: str) -> None:
    info = api.create("lights-on", "home.lights", solar=("sunset", 52.52, 13.405))
    stored = row(db_url, "lights-on")
    assert (stored["kind"], stored["solar_event"], stored["latitude"], stored["longitude"]) == (
        "solar",
        "sunset",
        52.52,
        13.405,
    )
    assert info.spec.solar_event == "sunset"


def test_create_with_window_and_misfire_policy(api: ScheduleManager, db_url: str) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    end = datetime(2030, 2, 1, tzinfo=UTC)
    api.create(
        "windowed",
        "t.w",
        every=60,
        start_time=start,
        end_time=end,
        misfire_policy="catch_up",
        catch_up_limit=5,
    )
    stored = row(db_url, "windowed")
    assert (stored["start_time"], stored["end_time"]) == (start, end)
    assert (stored["misfire_policy"], stored["catch_up_limit"]) == ("catch_up", 5)


# --- reads --------------------------------------------------------------------------------------


def test_get_returns_what_create_returned(api: ScheduleManager) -> None:
    created = api.create("s", "t.s", every=10, kwargs={"a": 1})
    fetched = api.get("s")
    assert fetched == created
    assert fetched.created_at.tzinfo is not None
    as_dict = fetched.as_dict()
    assert as_dict["schedule"] == {
        "kind": "interval",
        "interval_seconds": 10.0,
        "cron_minute": "*",
        "cron_hour": "*",
        "cron_day_of_week": "*",
        "cron_day_of_month": "*",
        "cron_month_of_year": "*",
        "timezone": "UTC",
    }
    assert as_dict["schedule_text"] == "every 10s"


def test_list_orders_by_next_run_then_name_and_limits(api: ScheduleManager, db_url: str) -> None:
    for name in ("c", "a", "b", "d"):
        api.create(name, f"t.{name}", every=60)
    sql(
        db_url,
        "UPDATE pg_beat_schedules SET next_run_at = now() + interval '1 hour' WHERE name = 'd'",
    )
    sql(
        db_url,
        "UPDATE pg_beat_schedules SET next_run_at = now() + interval '1 minute' WHERE name = 'c'",
    )
    assert [s.name for s in api.list()] == ["c", "d", "a", "b"]
    assert [s.name for s in api.list(limit=2)] == ["c", "d"]


def test_groups_are_separate(db_url: str) -> None:
    with ScheduleManager(db_url) as default, ScheduleManager(db_url, group="other") as other:
        default.create("same-name", "t.default", every=10)
        other.create("same-name", "t.other", every=20)
        assert default.get("same-name").task == "t.default"
        assert other.get("same-name").task == "t.other"
        assert [s.task for s in other.list()] == ["t.other"]
        other.delete("same-name")
        assert default.get("same-name").task == "t.default"
        with pytest.raises(ScheduleNotFound):
            other.get("same-name")


# --- update -------------------------------------------------------------------------------------


def test_update_of_plain_fields_keeps_the_definition_and_the_plan(
    api: ScheduleManager, db_url: str
) -> None:
    api.create("s", "t.s", crontab="0 4 * * *", timezone="Asia/Tokyo")
    planned = datetime(2030, 1, 1, tzinfo=UTC)
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = %s WHERE name = 's'", planned)
    before = row(db_url, "s")
    info = api.update("s", args=[42], description="changed", options={"queue": "q2"})
    after = row(db_url, "s")
    assert (after["args"], after["description"], after["options"]) == (
        [42],
        "changed",
        {"queue": "q2"},
    )
    assert info.args == [42]
    assert after["next_run_at"] == planned  # not a definition change: no re-plan
    assert after["updated_at"] > before["updated_at"]
    for column in ("kind", "cron_minute", "cron_hour", "timezone", "created_at", "source"):
        assert after[column] == before[column]


def test_update_of_the_definition_replans(api: ScheduleManager, db_url: str) -> None:
    api.create("s", "t.s", every=60)
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = now() + interval '1 minute'")
    info = api.update("s", every=5)
    assert info.spec.interval_seconds == 5.0
    assert info.next_run_at is None
    assert row(db_url, "s")["next_run_at"] is None


def test_update_crontab_timezone_only(api: ScheduleManager, db_url: str) -> None:
    api.create("s", "t.s", crontab="0 9 * * mon-fri", timezone="UTC")
    api.update("s", timezone="America/New_York")
    stored = row(db_url, "s")
    assert (stored["cron_hour"], stored["cron_day_of_week"], stored["timezone"]) == (
        "9",
        "mon-fri",
        "America/New_York",
    )


KIND_COLUMNS: dict[str, Row] = {
    "interval": {"interval_seconds": None},
    "crontab": {
        "cron_minute": "*",
        "cron_hour": "*",
        "cron_day_of_month": "*",
        "cron_month_of_year": "*",
        "cron_day_of_week": "*",
    },
    "solar": {"solar_event": None, "latitude": None, "longitude": None},
    "clocked": {"clocked_at": None},
}
WHEN: dict[str, dict[str, Any]] = {
    "interval": {"every": 60},
    "crontab": {"crontab": "15 */2 1 * sun"},
    "solar": {"solar": ("dawn_civil", -33.9, 151.2)},
    "clocked": {"clocked": datetime(2032, 1, 1, tzinfo=UTC)},
}


@pytest.mark.parametrize(
    ("old", "new"),
    [("interval", "crontab"), ("crontab", "solar"), ("solar", "clocked"), ("clocked", "interval")],
)
def test_update_changing_kind_drops_the_old_kinds_columns(
    api: ScheduleManager, db_url: str, old: str, new: str
) -> None:
    api.create("s", "t.s", **WHEN[old])
    info = api.update("s", **WHEN[new])
    assert info.kind == new
    stored = row(db_url, "s")
    assert stored["kind"] == new
    assert {k: stored[k] for k in KIND_COLUMNS[old]} == KIND_COLUMNS[old]


def test_update_changing_kind_returns_the_new_kind(api: ScheduleManager, db_url: str) -> None:
    # What the caller gets back, and the re-plan a new definition needs.
    api.create("s", "t.s", every=60)
    info = api.update("s", crontab="15 */2 1 * sun")
    assert info.kind == "crontab" and info.schedule_text == "cron '15 */2 1 * sun' UTC"
    assert row(db_url, "s")["next_run_at"] is None


# --- enable, disable, delete, run_now -------------------------------------------------------------


def test_disable_and_enable(api: ScheduleManager, db_url: str) -> None:
    api.create("s", "t.s", every=10)
    assert api.disable("s").enabled is False
    assert row(db_url, "s")["enabled"] is False
    assert api.disable("s").enabled is False  # idempotent
    assert api.enable("s").enabled is True
    assert row(db_url, "s")["enabled"] is True


def test_delete(api: ScheduleManager, db_url: str) -> None:
    api.create("keep", "t.k", every=10)
    api.create("gone", "t.g", every=10)
    api.delete("gone")
    assert [s.name for s in api.list()] == ["keep"]
    with pytest.raises(ScheduleNotFound, match="'gone'"):
        api.delete("gone")


def test_run_now_of_an_enabled_schedule_makes_it_due_and_keeps_its_grid(
    api: ScheduleManager, db_url: str
) -> None:
    api.create("s", "t.s", every=3600)
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = now() + interval '1 hour'")
    planned = row(db_url, "s")["next_run_at"]
    before = db_now(db_url)
    info = api.run_now("s")
    after = db_now(db_url)
    stored = row(db_url, "s")
    assert info.enabled is True and stored["enabled"] is True
    assert before <= stored["next_run_at"] <= after
    assert stored["resume_at"] == planned  # the grid resumes where it was (the trigger)
    assert stored["run_once_at"] is None
    # run_now does not change the definition: the scheduler keeps the rest of the row.
    assert stored["interval_seconds"] == 3600.0 and stored["last_error"] is None


def test_run_now_of_a_disabled_schedule_asks_one_tick_and_keeps_it_disabled(
    api: ScheduleManager, db_url: str
) -> None:
    api.create("s", "t.s", every=3600)
    api.disable("s")
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = now() - interval '1 day'")
    kept = row(db_url, "s")
    before = db_now(db_url)
    info = api.run_now("s")
    after = db_now(db_url)
    stored = row(db_url, "s")
    assert info.enabled is False and stored["enabled"] is False
    assert before <= stored["run_once_at"] <= after
    # Its grid is left as it was: enabling it later goes on from there, not from the run-now.
    assert (stored["next_run_at"], stored["resume_at"]) == (kept["next_run_at"], None)
    # Asked again before the leader took it: still the one tick, at the first time.
    api.run_now("s")
    assert row(db_url, "s")["run_once_at"] == stored["run_once_at"]
    # Enabled meanwhile, a run-now is the grid's (one tick due now), and replaces it.
    api.enable("s")
    api.run_now("s")
    stored = row(db_url, "s")
    assert stored["run_once_at"] is None and stored["next_run_at"] >= after


@pytest.mark.parametrize(
    "call",
    [
        lambda api: api.get("missing"),
        lambda api: api.update("missing", description="x"),
        lambda api: api.update("missing", every=5),
        lambda api: api.enable("missing"),
        lambda api: api.disable("missing"),
        lambda api: api.delete("missing"),
        lambda api: api.run_now("missing"),
    ],
    ids=["get", "update", "update-every", "enable", "disable", "delete", "run_now"],
)
def test_unknown_schedule(
    api: ScheduleManager, db_url: str, call: Callable[[ScheduleManager], Any]
) -> None:
    api.create("present", "t.p", every=10)
    before = snapshot(db_url)
    with pytest.raises(ScheduleNotFound) as caught:
        call(api)
    assert caught.value.schedule == "missing"
    assert str(caught.value) == "schedule 'missing': not found"
    assert snapshot(db_url) == before


# --- validation: a pg_beat error naming the schedule and the field, and nothing written -----------

NOW = datetime(2030, 1, 1, tzinfo=UTC)

# (create kwargs, field (column) and argument (the caller's word, shown in the message; none
# when the message names it) of the error, text the message must contain)
INVALID_CREATE: list[tuple[str, dict[str, Any], str, str, str]] = [
    (
        "cron-minute-61",
        {"crontab": "61 * * * *"},
        "cron_minute",
        "crontab",
        "minute '61' is invalid: use 0-59",
    ),
    (
        "cron-hour-24",
        {"crontab": "0 24 * * *"},
        "cron_hour",
        "crontab",
        "hour '24' is invalid: use 0-23",
    ),
    (
        "cron-dom-0",
        {"crontab": "0 0 0 * *"},
        "cron_day_of_month",
        "crontab",
        "day of month '0' is invalid: use 1-31",
    ),
    (
        "cron-month-13",
        {"crontab": "0 0 1 13 *"},
        "cron_month_of_year",
        "crontab",
        "month '13' is invalid: use 1-12 or names jan..dec",
    ),
    (
        "cron-dow-funday",
        {"crontab": "0 0 * * funday"},
        "cron_day_of_week",
        "crontab",
        "'funday' is invalid: use 0-6 (0 = Sunday) or names sun..sat",
    ),
    ("cron-junk", {"crontab": "*/5x * * * *"}, "cron_minute", "crontab", "'*/5x'"),
    ("cron-4-fields", {"crontab": "* * * *"}, "crontab", "crontab", "'* * * *' must have 5 fields"),
    ("cron-feb-30", {"crontab": "0 0 30 2 *"}, "cron_day_of_month", "crontab", "never matches"),
    ("unknown-kind", {"kind": "weekly"}, "kind", "kind", "unknown kind 'weekly'"),
    ("no-kind", {}, "kind", "", "every=, crontab=, clocked= or solar="),
    (
        "two-kinds",
        {"every": 5, "crontab": "* * * * *"},
        "kind",
        "",
        "give only one of every=, crontab=",
    ),
    ("negative", {"every": -5}, "interval_seconds", "every", "-5"),
    ("zero", {"every": 0}, "interval_seconds", "every", "got 0"),
    ("zero-td", {"every": timedelta(0)}, "interval_seconds", "every", "positive"),
    ("nan", {"every": float("nan")}, "interval_seconds", "every", "nan"),
    ("garbage-duration", {"every": "soon"}, "interval_seconds", "every", "'soon'"),
    (
        "raw-negative",
        {"kind": "interval", "interval_seconds": -1.0},
        "interval_seconds",
        "interval_seconds",
        "-1.0",
    ),
    ("args-set", {"every": 5, "args": {1, 2}}, "args", "args", "not set"),
    ("args-object", {"every": 5, "args": [object()]}, "args", "args", "not JSON-serialisable"),
    ("args-nan", {"every": 5, "args": [float("nan")]}, "args", "args", "not JSON-serialisable"),
    ("args-string", {"every": 5, "args": "1,2"}, "args", "args", "not str"),
    ("kwargs-list", {"every": 5, "kwargs": [("a", 1)]}, "kwargs", "kwargs", "string keys"),
    ("kwargs-int-keys", {"every": 5, "kwargs": {1: "a"}}, "kwargs", "kwargs", "string keys"),
    ("kwargs-object", {"every": 5, "kwargs": {"a": object()}}, "kwargs", "kwargs", "not JSON"),
    (
        "option-unknown",
        {"every": 5, "options": {"countdown": 3}},
        "options",
        "options",
        "'countdown'",
    ),
    ("option-priority", {"every": 5, "options": {"priority": 300}}, "options", "options", "300"),
    ("option-expires", {"every": 5, "options": {"expires": -1}}, "options", "options", "'expires'"),
    ("options-list", {"every": 5, "options": ["queue"]}, "options", "options", "not list"),
    (
        "tz-unknown",
        {"crontab": "0 3 * * *", "timezone": "Mars/Olympus_Mons"},
        "timezone",
        "timezone",
        "'Mars/Olympus_Mons'",
    ),
    (
        "tz-path",
        {"crontab": "0 3 * * *", "timezone": "../../etc/passwd"},
        "timezone",
        "timezone",
        "passwd",
    ),
    ("clocked-naive", {"clocked": datetime(2030, 1, 1)}, "clocked_at", "clocked", "timezone-aware"),
    ("solar-event", {"solar": ("high_noon", 0.0, 0.0)}, "solar_event", "solar", "'high_noon'"),
    ("solar-latitude", {"solar": ("sunset", 91.0, 0.0)}, "latitude", "solar", "91"),
    ("solar-longitude", {"solar": ("sunset", 0.0, -181.0)}, "longitude", "solar", "-181"),
    (
        "window",
        {"every": 5, "start_time": NOW, "end_time": NOW},
        "end_time",
        "end_time",
        "is not after",
    ),
    (
        "naive-start",
        {"every": 5, "start_time": datetime(2030, 1, 1)},
        "start_time",
        "start_time",
        "aware",
    ),
    (
        "misfire",
        {"every": 5, "misfire_policy": "retry"},
        "misfire_policy",
        "misfire_policy",
        "'retry'",
    ),
    ("catch-up-0", {"every": 5, "catch_up_limit": 0}, "catch_up_limit", "catch_up_limit", ">= 1"),
    (
        "catch-up-1001",
        {"every": 5, "catch_up_limit": 1001},
        "catch_up_limit",
        "catch_up_limit",
        "must be at most 1000 (a catch_up's ticks are claimed in one transaction), got 1001",
    ),
    ("unknown-field", {"every": 5, "colour": "red"}, "colour", "", "unknown field(s): colour"),
    ("next-run-at", {"every": 5, "next_run_at": NOW}, "next_run_at", "", "unknown field"),
    ("source", {"every": 5, "source": "config"}, "source", "", "unknown field"),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "field", "argument", "text"),
    INVALID_CREATE,
    ids=[c[0] for c in INVALID_CREATE],
)
def test_invalid_create_raises_and_writes_nothing(
    api: ScheduleManager,
    db_url: str,
    name: str,
    kwargs: dict[str, Any],
    field: str,
    argument: str,
    text: str,
) -> None:
    api.create("existing", "t.e", every=10)
    before = snapshot(db_url)
    with pytest.raises(InvalidSchedule) as caught:
        api.create(name, "t.task", **kwargs)
    error = caught.value
    assert isinstance(error, PgBeatError)
    assert (error.schedule, error.field, error.argument) == (name, field, argument)
    message = str(error)
    assert message.startswith(
        f"schedule {name!r}: {argument}: " if argument else f"schedule {name!r}: "
    ), message
    assert "cron_" not in message or argument.startswith("cron_"), message
    assert text in message, message
    assert snapshot(db_url) == before


def test_crontab_error_message_names_schedule_field_and_value(api: ScheduleManager) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        api.create("nightly-report", "reports.nightly", crontab="61 3 * * *")
    assert str(caught.value) == (
        "schedule 'nightly-report': crontab: minute '61' is invalid: use 0-59, lists (0,30), "
        "ranges (0-29) and steps (*/15)"
    )


@pytest.mark.parametrize(
    ("name", "task", "field"),
    [("", "t.t", "name"), ("x" * 201, "t.t", "name"), ("empty-task", "  ", "task")],
    ids=["empty-name", "long-name", "blank-task"],
)
def test_invalid_name_or_task(
    api: ScheduleManager, db_url: str, name: str, task: str, field: str
) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        api.create(name, task, every=5)
    assert caught.value.field == field
    assert snapshot(db_url) == []


def test_duplicate_name_raises_and_keeps_the_first(api: ScheduleManager, db_url: str) -> None:
    api.create("dup", "t.first", every=10)
    before = snapshot(db_url)
    with pytest.raises(ScheduleExists) as caught:
        api.create("dup", "t.second", crontab="* * * * *")
    assert (caught.value.schedule, caught.value.field) == ("dup", "name")
    assert "'dup'" in str(caught.value) and "already exists" in str(caught.value)
    assert snapshot(db_url) == before


INVALID_UPDATE: list[tuple[str, dict[str, Any], str]] = [
    ("bad-crontab", {"crontab": "0 25 * * *"}, "cron_hour"),
    ("raw-cron-field", {"cron_minute": "60"}, "cron_minute"),
    ("negative", {"every": -1}, "interval_seconds"),
    ("bad-tz", {"timezone": "Nowhere/Special"}, "timezone"),
    ("args-not-json", {"args": [object()]}, "args"),
    ("args-set", {"args": {1}}, "args"),
    ("kwargs-list", {"kwargs": [1]}, "kwargs"),
    ("option-unknown", {"options": {"eta": "now"}}, "options"),
    ("unknown-kind", {"kind": "sometimes"}, "kind"),
    ("next_run_at", {"next_run_at": NOW}, "next_run_at"),
    ("total_run_count", {"total_run_count": 0}, "total_run_count"),
    ("window", {"start_time": NOW, "end_time": NOW - timedelta(1)}, "end_time"),
]


@pytest.mark.parametrize(
    ("case", "changes", "field"), INVALID_UPDATE, ids=[c[0] for c in INVALID_UPDATE]
)
def test_invalid_update_raises_and_leaves_the_row(
    api: ScheduleManager, db_url: str, case: str, changes: dict[str, Any], field: str
) -> None:
    api.create("s", "t.s", crontab="0 3 * * *", args=[1], kwargs={"a": 1})
    sql(
        db_url,
        "UPDATE pg_beat_schedules SET next_run_at = now() + interval '1 hour', total_run_count = 7",
    )
    before = snapshot(db_url)
    with pytest.raises(InvalidSchedule) as caught:
        api.update("s", **changes)
    assert (caught.value.schedule, caught.value.field) == ("s", field)
    assert snapshot(db_url) == before


def test_update_kind_without_its_columns_is_rejected(api: ScheduleManager, db_url: str) -> None:
    api.create("s", "t.s", crontab="0 3 * * *")
    before = snapshot(db_url)
    # kind=interval without interval_seconds: the merged row has no interval to run on.
    with pytest.raises(InvalidSchedule) as caught:
        api.update("s", kind="interval")
    assert caught.value.field == "interval_seconds"
    assert snapshot(db_url) == before


# --- sync_config -------------------------------------------------------------------------------


def interval_entry(task: str, seconds: float, **extra: Any) -> Row:
    return {"task": task, "kind": "interval", "interval_seconds": seconds, **extra}


def sync(api: ScheduleManager, entries: dict[str, Row], owner: str = "proj", **kw: Any) -> Any:
    return api.sync_config(entries, owner=owner, **kw)


def test_sync_config_upserts_and_keeps_run_state(api: ScheduleManager, db_url: str) -> None:
    result = sync(api, {"a": interval_entry("t.a", 10), "b": interval_entry("t.b", 20)})
    assert (result.upserted, result.removed, result.kept) == (2, [], [])
    assert {s.name: s.source for s in api.list()} == {"a": "config", "b": "config"}
    assert {r[0] for r in sql(db_url, "SELECT config_owner FROM pg_beat_schedules")} == {"proj"}
    ran_at = datetime(2029, 6, 1, 12, tzinfo=UTC)
    sql(
        db_url,
        "UPDATE pg_beat_schedules SET total_run_count = 41, last_run_at = %s, last_due_at = %s",
        ran_at,
        ran_at,
    )
    # A changed entry is rewritten; its run state survives, its plan is redone.
    result = sync(api, {"a": interval_entry("t.a", 15, args=[1]), "b": interval_entry("t.b", 20)})
    assert result.upserted == 2
    a = row(db_url, "a")
    assert (a["interval_seconds"], a["args"], a["source"]) == (15.0, [1], "config")
    assert (a["total_run_count"], a["last_run_at"], a["last_due_at"]) == (41, ran_at, ran_at)
    assert a["next_run_at"] is None
    b = row(db_url, "b")
    assert (b["total_run_count"], b["last_run_at"]) == (41, ran_at)


def test_entries_gone_from_beat_schedule_are_kept_and_named_unless_pruning_is_asked_for(
    api: ScheduleManager, caplog: pytest.LogCaptureFixture
) -> None:
    sync(api, {"a": interval_entry("t.a", 10), "b": interval_entry("t.b", 20)})
    with caplog.at_level(logging.INFO, logger="pg_beat.api"):
        result = sync(api, {"b": interval_entry("t.b", 20)})
    assert (result.removed, result.kept) == ([], ["a"])
    assert [s.name for s in api.list()] == ["a", "b"]
    assert "'a' of 'proj' are no longer in its beat_schedule and were kept" in caplog.text
    # An empty beat_schedule (an app with none, an old version) deletes nothing either.
    assert sync(api, {}).removed == []
    assert sorted(s.name for s in api.list()) == ["a", "b"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pg_beat.api"):
        result = sync(api, {"b": interval_entry("t.b", 20)}, prune=True)
    assert (result.removed, result.kept) == (["a"], [])
    assert [s.name for s in api.list()] == ["b"]
    assert "schedule 'a' removed: no longer in the beat_schedule of 'proj'" in caplog.text


def test_two_apps_sharing_a_group_lose_none_of_each_others_schedules(
    api: ScheduleManager, caplog: pytest.LogCaptureFixture
) -> None:
    sync(api, {"billing": interval_entry("t.b", 10)}, owner="billing-app")
    sync(api, {"reports": interval_entry("t.r", 20)}, owner="reports-app")
    # Each prunes only its own; an entry of the other's name is refused, not taken over.
    sync(api, {}, owner="billing-app", prune=False)
    with caplog.at_level(logging.WARNING, logger="pg_beat.api"):
        result = sync(api, {"reports": interval_entry("t.x", 5)}, owner="billing-app", prune=True)
    assert result.conflicts == {"reports": "reports-app"}
    assert "'reports' of 'billing-app' skipped" in caplog.text
    assert {s.name: s.task for s in api.list()} == {"reports": "t.r"}  # billing pruned its own
    assert sync(api, {"reports": interval_entry("t.r", 20)}, owner="reports-app").upserted == 1


def test_an_old_and_a_new_version_started_in_turn_keep_both_sets(api: ScheduleManager) -> None:
    old = {"a": interval_entry("t.a", 10)}
    new = {"a": interval_entry("t.a", 10), "b": interval_entry("t.b", 20)}
    sync(api, new)
    sync(api, old)  # an old replica restarts during the rolling deploy
    sync(api, new)
    sync(api, old)
    assert sorted(s.name for s in api.list()) == ["a", "b"]


def test_config_rows_of_no_owner_are_adopted(api: ScheduleManager, db_url: str) -> None:
    """Rows written before owners were recorded belong to the first app that has them."""
    sync(api, {"a": interval_entry("t.a", 10)})
    sql(db_url, "UPDATE pg_beat_schedules SET config_owner = NULL")
    assert sync(api, {"a": interval_entry("t.a", 10)}, owner="other").conflicts == {}
    assert row(db_url, "a")["config_owner"] == "other"


def test_sync_config_never_touches_api_rows(api: ScheduleManager, db_url: str) -> None:
    api.create("from-api", "t.api", every=30)
    sql(
        db_url,
        "INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds) "
        "VALUES ('from-sql', 't.sql', 'interval', 40)",
    )
    before = snapshot(db_url)
    sync(api, {"cfg": interval_entry("t.cfg", 10)})
    sync(api, {}, prune=True)
    assert snapshot(db_url) == before
    assert {s.name: s.source for s in api.list()} == {"from-api": "api", "from-sql": "api"}


def test_sync_config_leaves_an_api_row_of_the_same_name_alone(
    api: ScheduleManager, db_url: str
) -> None:
    api.create("shared", "t.api", every=30)
    before = snapshot(db_url)
    assert sync(api, {"shared": interval_entry("t.cfg", 5)}).conflicts == {"shared": "api"}
    sync(api, {}, prune=True)
    assert snapshot(db_url) == before


def test_an_edit_of_a_config_row_warns_and_detach_makes_it_the_apis(
    api: ScheduleManager, caplog: pytest.LogCaptureFixture
) -> None:
    sync(api, {"a": interval_entry("t.a", 10)})
    with caplog.at_level(logging.WARNING, logger="pg_beat.api"):
        api.update("a", every=20)
    assert "comes from the beat_schedule of 'proj': the next start of that app resets" in (
        caplog.text
    )
    detached = api.detach("a")
    assert (detached.source, detached.spec.interval_seconds) == ("api", 20.0)
    assert sync(api, {"a": interval_entry("t.a", 10)}).conflicts == {"a": "api"}
    assert api.get("a").spec.interval_seconds == 20.0
    with pytest.raises(ScheduleNotFound):
        api.detach("nope")


def test_unchanged_sync_writes_nothing(api: ScheduleManager, db_url: str) -> None:
    entries = {
        "i": interval_entry(
            "t.i", 10, args=[1, {"x": 2}], kwargs={"k": "v"}, options={"queue": "q", "expires": 5.0}
        ),
        "c": {
            "task": "t.c",
            "kind": "crontab",
            "cron_minute": "*/5",
            "cron_hour": "9-17",
            "timezone": "Europe/Berlin",
        },
        "s": {
            "task": "t.s",
            "kind": "solar",
            "solar_event": "sunrise",
            "latitude": 48.1,
            "longitude": 11.6,
        },
    }
    sync(api, entries)
    planned = datetime(2030, 1, 1, tzinfo=UTC)
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = %s", planned)
    before = snapshot(db_url)
    # Any UPDATE, even of equal values, leaves a new row version: a new xmin.
    versions = "SELECT xmin::text FROM pg_beat_schedules ORDER BY id"
    written = sql(db_url, versions)
    assert sync(api, entries).upserted == 3
    assert snapshot(db_url) == before
    assert sql(db_url, versions) == written
    assert {r[0] for r in sql(db_url, "SELECT next_run_at FROM pg_beat_schedules")} == {planned}


def test_sync_config_kind_change_drops_old_columns(api: ScheduleManager, db_url: str) -> None:
    sync(api, {"a": interval_entry("t.a", 10)})
    sync(api, {"a": {"task": "t.a", "kind": "crontab", "cron_minute": "0"}})
    stored = row(db_url, "a")
    assert (stored["kind"], stored["cron_minute"], stored["interval_seconds"]) == (
        "crontab",
        "0",
        None,
    )


def test_sync_config_validates_every_entry_before_writing(
    api: ScheduleManager, db_url: str
) -> None:
    sync(api, {"old": interval_entry("t.old", 10)})
    before = snapshot(db_url)
    with pytest.raises(InvalidSchedule) as caught:
        sync(
            api,
            {
                "new": interval_entry("t.new", 10),
                "broken": {"task": "t.b", "kind": "crontab", "cron_hour": "25"},
            },
        )
    assert (caught.value.schedule, caught.value.field) == ("broken", "cron_hour")
    assert snapshot(db_url) == before


# --- triggers: plain SQL ------------------------------------------------------------------------


def test_sql_update_of_the_definition_sets_next_run_at_null(
    api: ScheduleManager, db_url: str
) -> None:
    api.create("s", "t.s", every=60)
    sql(
        db_url,
        "UPDATE pg_beat_schedules SET next_run_at = now() + interval '1 minute', "
        "last_error = 'stale'",
    )
    before = row(db_url, "s")
    sql(db_url, "UPDATE pg_beat_schedules SET interval_seconds = 5 WHERE name = 's'")
    after = row(db_url, "s")
    assert after["interval_seconds"] == 5.0
    assert after["next_run_at"] is None and after["last_error"] is None
    assert after["updated_at"] > before["updated_at"]


@pytest.mark.parametrize(
    "assignment",
    [
        "cron_minute = '5'",
        "timezone = 'Asia/Tokyo'",
        "kind = 'interval', interval_seconds = 10",
        "start_time = now() + interval '1 day'",
        "end_time = now() + interval '1 day'",
    ],
)
def test_every_definition_column_replans(db_url: str, assignment: str) -> None:
    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", crontab="0 3 * * *")
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = now() + interval '1 minute'")
    sql(db_url, f"UPDATE pg_beat_schedules SET {assignment} WHERE name = 's'")
    assert row(db_url, "s")["next_run_at"] is None


def test_sql_update_setting_next_run_at_keeps_it(api: ScheduleManager, db_url: str) -> None:
    api.create("s", "t.s", every=60)
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = now() + interval '1 minute'")
    wanted = datetime(2031, 3, 4, 5, 6, 7, tzinfo=UTC)
    sql(
        db_url,
        "UPDATE pg_beat_schedules SET interval_seconds = 5, next_run_at = %s WHERE name = 's'",
        wanted,
    )
    stored = row(db_url, "s")
    assert (stored["interval_seconds"], stored["next_run_at"]) == (5.0, wanted)


def test_sql_update_of_other_columns_keeps_the_plan(api: ScheduleManager, db_url: str) -> None:
    api.create("s", "t.s", every=60)
    planned = datetime(2031, 3, 4, tzinfo=UTC)
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = %s", planned)
    sql(
        db_url,
        "UPDATE pg_beat_schedules SET description = 'x', enabled = false, "
        "args = '[1]' WHERE name = 's'",
    )
    assert row(db_url, "s")["next_run_at"] == planned


def test_editing_a_parked_row_gives_it_another_chance(api: ScheduleManager, db_url: str) -> None:
    api.create("s", "t.s", every=60)
    sql(db_url, "UPDATE pg_beat_schedules SET last_error = 'bad args', next_run_at = NULL")
    sql(db_url, "UPDATE pg_beat_schedules SET args = '[2]' WHERE name = 's'")
    assert row(db_url, "s")["last_error"] is None


def test_the_schedulers_own_writes_neither_replan_nor_notify(
    api: ScheduleManager, db_url: str
) -> None:
    api.create("s", "t.s", every=60)
    planned = datetime(2031, 3, 4, tzinfo=UTC)
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = %s", planned)
    with psycopg.connect(libpq(db_url), autocommit=True) as listener:
        listener.execute("LISTEN pg_beat_schedules")
        with psycopg.connect(libpq(db_url), autocommit=True, options="-c pg_beat.dispatch=on") as c:
            c.execute("UPDATE pg_beat_schedules SET interval_seconds = 5")
        assert list(listener.notifies(timeout=0.5)) == []
    assert row(db_url, "s")["next_run_at"] == planned


# --- NOTIFY ---------------------------------------------------------------------------------------


def next_notification(listener: psycopg.Connection[Any]) -> psycopg.Notify:
    notes = list(listener.notifies(timeout=5, stop_after=1))
    assert notes, "no NOTIFY on pg_beat_schedules within 5 s"
    return notes[0]


def test_notify_on_api_and_sql_changes(api: ScheduleManager, db_url: str) -> None:
    with psycopg.connect(libpq(db_url), autocommit=True) as listener:
        listener.execute("LISTEN pg_beat_schedules")
        api.create("s", "t.s", every=60)
        note = next_notification(listener)
        assert (note.channel, note.payload) == ("pg_beat_schedules", "INSERT")
        api.update("s", every=30)
        assert next_notification(listener).payload == "UPDATE"
        sql(db_url, "UPDATE pg_beat_schedules SET interval_seconds = 5 WHERE name = 's'")
        assert next_notification(listener).payload == "UPDATE"
        sql(
            db_url,
            "INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds) "
            "VALUES ('t', 't.t', 'interval', 1)",
        )
        assert next_notification(listener).payload == "INSERT"
        api.delete("s")
        assert next_notification(listener).payload == "DELETE"
        sql(db_url, "TRUNCATE pg_beat_schedules CASCADE")
        assert next_notification(listener).payload == "TRUNCATE"


def test_a_rolled_back_validation_sends_no_notify(api: ScheduleManager, db_url: str) -> None:
    api.create("s", "t.s", every=60)
    with psycopg.connect(libpq(db_url), autocommit=True) as listener:
        listener.execute("LISTEN pg_beat_schedules")
        with pytest.raises(InvalidSchedule):
            api.update("s", crontab="99 * * * *")
        assert list(listener.notifies(timeout=0.5)) == []


# --- database down -------------------------------------------------------------------------------


def test_database_unavailable(db_url: str) -> None:
    url = f"postgresql://pg_beat:s3cret-pw@127.0.0.1:{free_port()}/nothing"
    calls: list[Callable[[ScheduleManager], Any]] = [
        lambda api: api.get("s"),
        lambda api: api.list(),
        lambda api: api.create("s", "t.s", every=5),
        lambda api: api.update("s", every=5),
        lambda api: api.delete("s"),
        lambda api: api.run_now("s"),
        lambda api: api.sync_config({}, owner="proj"),
    ]
    with ScheduleManager(url) as api:
        for call in calls:
            with pytest.raises(DatabaseUnavailable) as caught:
                call(api)
            message = str(caught.value)
            assert "127.0.0.1" in message and "unavailable" in message
            assert "s3cret-pw" not in message
        # Validation comes first: bad input is reported as such even with the database down.
        with pytest.raises(InvalidSchedule):
            api.create("s", "t.s", every=-1)


def test_database_lost_and_back(private_cluster: pg.PrivateCluster) -> None:
    url = private_cluster.url()
    migrate.upgrade(url)
    with ScheduleManager(url) as api:
        api.create("s", "t.s", every=5)  # the pool now holds a live connection
        private_cluster.stop()
        with pytest.raises(DatabaseUnavailable):
            api.list()
        with pytest.raises(DatabaseUnavailable):
            api.update("s", every=10)
        private_cluster.start()
        assert [s.name for s in api.list()] == ["s"]
        assert api.update("s", every=10).spec.interval_seconds == 10.0


# --- a row locked by another session ------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda api: api.update("s", every=10), id="update"),
        pytest.param(lambda api: api.disable("s"), id="disable"),
        pytest.param(lambda api: api.delete("s"), id="delete"),
        pytest.param(lambda api: api.run_now("s"), id="run_now"),
    ],
)
def test_a_locked_row_raises_schedule_locked(
    db_url: str, call: Callable[[ScheduleManager], Any]
) -> None:
    settings = Settings(database_url=db_url, lock_timeout=0.3)
    with ScheduleManager(settings=settings) as api:
        api.create("s", "t.s", every=5)
        before = snapshot(db_url)
        with psycopg.connect(libpq(db_url)) as admin:  # an admin's open transaction in psql
            admin.execute("SELECT * FROM pg_beat_schedules FOR UPDATE")
            started = time.monotonic()
            with pytest.raises(ScheduleLocked) as caught:
                call(api)
            assert time.monotonic() - started < 3.0
            admin.rollback()
        assert caught.value.schedule == "s"
        assert snapshot(db_url) == before


# --- overlap policy, max_runtime, run_once ----------------------------------------------------


def test_overlap_fields_are_stored_read_updated_and_reset(api: ScheduleManager) -> None:
    info = api.create("o", "t.o", every=10, overlap_policy="buffer_one", max_runtime=90)
    assert (info.overlap_policy, info.max_runtime, info.run_once) == ("buffer_one", 90.0, None)
    assert info.as_dict()["overlap_policy"] == "buffer_one"
    info = api.update("o", overlap_policy="skip", run_once=True)
    assert (info.overlap_policy, info.max_runtime, info.run_once) == ("skip", 90.0, True)
    info = api.update("o", overlap_policy=None, max_runtime=None, run_once=None)
    assert (info.overlap_policy, info.max_runtime, info.run_once) == (None, None, None)
    assert api.get("o").buffered_due_at is None


@pytest.mark.parametrize(
    ("values", "field", "text"),
    [
        ({"overlap_policy": "sometimes"}, "overlap_policy", "unknown overlap policy 'sometimes'"),
        ({"max_runtime": 0}, "max_runtime", "seconds > 0, got 0"),
        ({"max_runtime": float("inf")}, "max_runtime", "got inf"),
        ({"max_runtime": "1h"}, "max_runtime", "got '1h'"),
        ({"run_once": "yes"}, "run_once", "true or false, got 'yes'"),
    ],
)
def test_invalid_overlap_fields_name_the_field_and_the_value_and_write_nothing(
    api: ScheduleManager, db_url: str, values: dict[str, Any], field: str, text: str
) -> None:
    api.create("keep", "t.k", every=10)
    before = snapshot(db_url)
    for write in (
        lambda: api.create("new", "t.n", every=10, **values),
        lambda: api.update("keep", **values),
    ):
        with pytest.raises(InvalidSchedule) as caught:
            write()
        assert caught.value.field == field
        assert str(caught.value).startswith(f"schedule '{caught.value.schedule}': {field}: ")
        assert text in str(caught.value)
    assert snapshot(db_url) == before


def test_sync_config_writes_and_resets_the_overlap_fields(api: ScheduleManager) -> None:
    entry = {"task": "t.c", "kind": "interval", "interval_seconds": 5.0}
    api.sync_config({"c": {**entry, "overlap_policy": "skip", "max_runtime": 30.0}}, owner="app")
    assert (api.get("c").overlap_policy, api.get("c").max_runtime) == ("skip", 30.0)
    api.sync_config({"c": entry}, owner="app")  # taken out of the entry: back to the setting
    assert (api.get("c").overlap_policy, api.get("c").max_runtime) == (None, None)
    with pytest.raises(InvalidSchedule) as caught:
        api.sync_config({"c": {**entry, "overlap_policy": "queue"}}, owner="app")
    assert caught.value.field == "overlap_policy"
