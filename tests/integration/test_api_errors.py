"""ScheduleManager's errors in the caller's words (issue #10): the argument names it was given,
one clear exception for an unmigrated database (the CLI's message), a database that is down,
and warnings about schedules that an app's beat_schedule owns.

Wording is matched loosely; ``field`` (the column) stays machine-readable.
"""

from __future__ import annotations

import logging
import pickle
from datetime import datetime, timezone
from typing import Any

import pytest
from click.testing import CliRunner
from support.pg import free_port

from pg_beat import migrate
from pg_beat.api import ScheduleManager
from pg_beat.cli import main
from pg_beat.exceptions import (
    DatabaseUnavailable,
    InvalidSchedule,
    PgBeatError,
    ScheduleExists,
    ScheduleNotFound,
    SchemaMismatch,
)

pytestmark = pytest.mark.timeout(60)

UTC = timezone.utc


@pytest.fixture
def api(db_url: str) -> Any:
    with ScheduleManager(db_url) as manager:
        yield manager


def invalid(call: Any) -> InvalidSchedule:
    with pytest.raises(InvalidSchedule) as caught:
        call()
    return caught.value


# --- the caller's words -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "argument", "needles"),
    [
        (
            {"crontab": "0 7 * * mon-fir"},
            "cron_day_of_week",
            "crontab",
            ["day of week 'mon-fir' is invalid", "0-6 (0 = Sunday)", "sun..sat", "(mon-fri)"],
        ),
        ({"crontab": "0 0 1 13 *"}, "cron_month_of_year", "crontab", ["'13'", "jan..dec"]),
        ({"crontab": "* *"}, "crontab", "crontab", ["must have 5 fields"]),
        ({"every": "soon"}, "interval_seconds", "every", ["invalid duration 'soon'"]),
        ({"every": -1}, "interval_seconds", "every", ["positive"]),
        ({"clocked": datetime(2030, 1, 1)}, "clocked_at", "clocked", ["2030-01-01T00:00:00"]),
        ({"solar": ("noon", 1.0, 2.0)}, "solar_event", "solar", ["'noon'", "solar_noon"]),
        ({"solar": ("sunset", 1.0, 200.0)}, "longitude", "solar", ["longitude 200.0"]),
        ({"crontab": "* * * * *", "timezone": "Mars/Base"}, "timezone", "timezone", ["IANA"]),
        ({"every": 5, "options": {"eta": 1}}, "options", "options", ["unknown option 'eta'"]),
        ({"every": 5, "args": "1,2"}, "args", "args", ["list"]),
        ({"kind": "crontab", "cron_hour": "25"}, "cron_hour", "cron_hour", ["hour '25'"]),
        ({"kind": "interval"}, "interval_seconds", "every", ["None"]),
    ],
)
def test_errors_name_the_argument_the_caller_used(
    api: ScheduleManager, kwargs: dict[str, Any], field: str, argument: str, needles: list[str]
) -> None:
    error = invalid(lambda: api.create("s", "t.s", **kwargs))
    assert (error.field, error.argument) == (field, argument)
    message = str(error)
    assert message.startswith(f"schedule 's': {argument}: "), message
    for needle in needles:
        assert needle in message, message
    assert f": {field}: " not in message or argument == field, message


def test_update_names_the_argument_too(api: ScheduleManager) -> None:
    api.create("s", "t.s", crontab="0 3 * * *")
    error = invalid(lambda: api.update("s", crontab="0 3 * * sunday-ish"))
    assert (error.field, error.argument) == ("cron_day_of_week", "crontab")
    assert str(error).startswith("schedule 's': crontab: day of week 'sunday-ish' is invalid")
    error = invalid(lambda: api.update("s", cron_minute="99"))
    assert str(error).startswith("schedule 's': cron_minute: minute '99' is invalid")
    error = invalid(lambda: api.update("s", task=""))
    assert str(error) == "schedule 's': task: must be a task name, not ''"


def test_messages_that_name_the_problem_themselves_have_no_argument(api: ScheduleManager) -> None:
    error = invalid(lambda: api.create("s", "t.s"))
    assert (error.field, error.argument) == ("kind", "")
    assert str(error) == "schedule 's': say when it runs: give one of every=, crontab=, clocked= " \
        "or solar="  # fmt: skip
    error = invalid(lambda: api.create("s", "t.s", every=1, solar=("sunset", 0.0, 0.0)))
    assert str(error) == "schedule 's': give only one of every=, solar="
    api.create("s", "t.s", every=1)
    with pytest.raises(ScheduleExists) as caught:
        api.create("s", "t.s", every=1)
    assert caught.value.field == "name"
    assert str(caught.value) == "schedule 's': a schedule with this name already exists"


def test_sync_config_names_columns_as_its_entries_do(api: ScheduleManager) -> None:
    error = invalid(
        lambda: api.sync_config(
            {"broken": {"task": "t.b", "kind": "crontab", "cron_day_of_week": "mon-fir"}},
            owner="proj",
        )
    )
    assert (error.field, error.argument) == ("cron_day_of_week", "cron_day_of_week")
    assert "sun..sat" in str(error)


def test_worded_is_the_message_with_another_word(api: ScheduleManager) -> None:
    error = invalid(lambda: api.create("s", "t.s", crontab="61 * * * *"))
    assert error.worded("--cron").startswith("schedule 's': --cron: minute '61' is invalid: use")
    assert error.worded("") == f"schedule 's': {error.reason}"
    assert error.reason.startswith("minute '61' is invalid")


# --- a timezone that would do nothing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({"every": 5}, "interval"),
        ({"clocked": datetime(2030, 1, 1, tzinfo=UTC)}, "clocked"),
        ({"solar": ("sunset", 1.0, 2.0)}, "solar"),
    ],
)
def test_a_timezone_for_a_schedule_that_is_no_crontab_is_refused(
    api: ScheduleManager, kwargs: dict[str, Any], kind: str
) -> None:
    error = invalid(lambda: api.create("s", "t.s", timezone="Europe/Berlin", **kwargs))
    assert (error.field, error.argument) == ("timezone", "timezone")
    assert "crontab schedules only" in str(error) and f"this {kind} schedule" in str(error)
    assert api.list() == []


def test_a_timezone_update_needs_a_crontab(api: ScheduleManager) -> None:
    api.create("tick", "t.tick", every=5)
    error = invalid(lambda: api.update("tick", timezone="Europe/Berlin"))
    assert error.field == "timezone" and "crontab schedules only" in str(error)
    api.update("tick", crontab="0 9 * * *", timezone="Europe/Berlin")
    assert api.update("tick", timezone="Asia/Tokyo").spec.timezone == "Asia/Tokyo"


# --- the schema -------------------------------------------------------------------------------


def test_an_unmigrated_database_raises_the_clis_message(empty_db_url: str) -> None:
    result = CliRunner().invoke(main, ["--database-url", empty_db_url, "schedules", "list"])
    assert result.exit_code == 1
    cli_message = result.stderr.strip().removeprefix("pg-beat: error: ")
    assert "not migrated" in cli_message

    with ScheduleManager(empty_db_url) as api:
        for call in (
            api.list,
            lambda: api.get("s"),
            lambda: api.create("s", "t.s", every=5),
            lambda: api.update("s", every=5),
            lambda: api.delete("s"),
            lambda: api.run_now("s"),
            lambda: api.detach("s"),
            lambda: api.sync_config({}, owner="proj"),
        ):
            with pytest.raises(SchemaMismatch) as caught:
                call()
            assert str(caught.value) == cli_message
            assert isinstance(caught.value, PgBeatError)
            assert "UndefinedTable" not in repr(caught.value.__cause__)
        # Not remembered as a failure: once migrated, the same manager works.
        migrate.upgrade(empty_db_url)
        api.create("s", "t.s", every=5)
        assert [s.name for s in api.list()] == ["s"]


def test_the_schema_is_checked_once_per_manager_and_not_when_constructed(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = migrate.current_revision

    def counting(*args: Any, **kwargs: Any) -> str | None:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(migrate, "current_revision", counting)
    with ScheduleManager(db_url) as api:
        assert calls == []
        api.create("a", "t.a", every=5)
        api.list()
        api.update("a", every=6)
        assert len(calls) == 1
    with ScheduleManager(db_url) as other:
        other.get("a")
    assert len(calls) == 2


def test_constructing_against_a_dead_server_is_free_and_use_is_unavailable() -> None:
    port = free_port()
    api = ScheduleManager(f"postgresql://beat:s3cret@127.0.0.1:{port}/app")  # no I/O here
    with pytest.raises(DatabaseUnavailable) as caught:
        api.list()
    message = str(caught.value)
    assert f"postgresql://beat:***@127.0.0.1:{port}/app" in message
    assert "s3cret" not in message and "unavailable" in message
    api.close()


# --- schedules an app's beat_schedule owns -------------------------------------------------------


def test_editing_or_deleting_a_config_schedule_warns_with_the_fix(
    api: ScheduleManager, caplog: pytest.LogCaptureFixture
) -> None:
    api.sync_config({"cfg": {"task": "t.c", "kind": "interval", "interval_seconds": 10}},
                    owner="proj")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pg_beat.api"):
        api.update("cfg", every=20)
    (record,) = caplog.records
    assert "beat_schedule of 'proj'" in record.message and "next start" in record.message
    assert "pg-beat schedules detach cfg" in record.message
    assert "ScheduleManager.detach" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pg_beat.api"):
        api.delete("cfg")
    (record,) = caplog.records
    assert "beat_schedule of 'proj'" in record.message and "creates it again" in record.message
    caplog.clear()
    api.create("own", "t.o", every=5)
    with caplog.at_level(logging.WARNING, logger="pg_beat.api"):
        api.update("own", every=6)
        api.delete("own")
    assert caplog.records == []


def test_errors_survive_a_round_trip_through_str_and_keep_their_attributes(
    api: ScheduleManager,
) -> None:
    error = invalid(lambda: api.create("s", "t.s", crontab="0 0 * * mon-fir"))
    assert error.schedule == "s" and error.field == "cron_day_of_week"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.schedule, copy.field, copy.argument) == ("s", "cron_day_of_week", "crontab")
    assert str(copy).startswith("schedule 's': crontab: day of week 'mon-fir' is invalid")
    missing = pickle.loads(pickle.dumps(ScheduleNotFound("gone")))
    assert (type(missing), str(missing)) == (ScheduleNotFound, "schedule 'gone': not found")
