"""``pg-beat schedules`` errors and warnings in the CLI's own words (issue #10): option names,
not columns or API arguments; conflicting or useless options refused; ``--at`` in the past;
an unknown group; schedules from an app's beat_schedule; failing schedules; URLs as typed.

Wording is matched loosely (the key words), and no output may hold a traceback.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from support.pg import free_port
from support.pg import libpq_url as libpq

import pg_beat
from pg_beat.api import ScheduleManager
from pg_beat.cli import main

pytestmark = pytest.mark.timeout(60)

#: Column names and API-only words a CLI message must not show.
NOT_CLI_WORDS = re.compile(
    r"\b(cron_\w+|interval_seconds|clocked_at|solar_event|latitude:|longitude:|misfire_policy"
    r"|catch_up_limit|start_time|end_time|crontab=|every=|clocked=|solar=)"
)
ADD = ("schedules", "add", "bad", "app.task")


def cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, *args], catch_exceptions=False)


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def one_line_error(result: Result, code: int, *needles: str) -> str:
    """The single ``pg-beat: error:`` line, checked for ``code`` and each needle."""
    no_traceback(result)
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("pg-beat: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def warnings_of(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("pg-beat: warning: ")]


def ok(url: str, *args: str) -> Result:
    result = cli(url, *args)
    no_traceback(result)
    assert result.exit_code == 0, result.output
    return result


def sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def names(url: str) -> list[str]:
    return [r[0] for r in sql(url, "SELECT name FROM pg_beat_schedules ORDER BY name")]


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- crontab: the option, the field, and what each field accepts -------------------------------


@pytest.mark.parametrize(
    ("expression", "needles"),
    [
        ("0 7 * * mon-fir", ["day of week 'mon-fir'", "0-6 (0 = Sunday)", "sun..sat", "mon-fri"]),
        ("0 7 * * 7", ["day of week '7'", "sun..sat"]),
        ("61 * * * *", ["minute '61'", "0-59"]),
        ("0 24 * * *", ["hour '24'", "0-23"]),
        ("0 0 32 * *", ["day of month '32'", "1-31"]),
        ("0 0 1 13 *", ["month '13'", "1-12", "jan..dec"]),
        ("0 0 1 jna *", ["month 'jna'", "jan..dec"]),
        ("5/15 * * * *", ["minute '5/15'", "'5-59/15' or '*/15'"]),
        ("0 0 30 2 *", ["never matches", "'30'", "'2'"]),
        ("* * *", ["'* * *'", "must have 5 fields", "not 3"]),
    ],
)
def test_a_bad_crontab_names_the_option_the_field_and_what_is_allowed(
    db_url: str, expression: str, needles: list[str]
) -> None:
    line = one_line_error(cli(db_url, *ADD, "--cron", expression), 1, "schedule 'bad': --cron: ")
    for needle in needles:
        assert needle in line, line
    assert not NOT_CLI_WORDS.search(line), line
    assert names(db_url) == []


def test_a_valid_crontab_with_names_prints_one_line_and_nothing_else(db_url: str) -> None:
    result = ok(db_url, "schedules", "add", "r", "t.r", "--cron", "0 7 * jan-jun mon-fri",
                "--tz", "Europe/Berlin")  # fmt: skip
    assert result.stdout == "added schedule 'r': t.r, cron '0 7 * jan-jun mon-fri' Europe/Berlin\n"
    assert result.stderr == ""


# --- every other option is named as typed ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--every", "soon"), ["--every: ", "invalid duration 'soon'"]),
        (("--every", "0"), ["--every", "'0'"]),
        (("--cron", "0 3 * * *", "--tz", "Mars/Olympus"), ["--tz: ", "'Mars/Olympus'", "IANA"]),
        (("--every", "1m", "--args", "{}"), ["--args: ", "list"]),
        (("--every", "1m", "--args", "[1,"), ["--args", "not valid JSON"]),
        (("--every", "1m", "--kwargs", "[1]"), ["--kwargs: ", "string keys"]),
        (("--every", "1m", "--misfire", "later"), ["--misfire: ", "'later'", "fire_once"]),
        (("--every", "1m", "--catch-up-limit", "0"), ["--catch-up-limit: ", ">= 1"]),
        (
            ("--every", "1m", "--catch-up-limit", "5000"),
            ["--catch-up-limit: ", "most 1000", "5000"],
        ),
        (
            ("--every", "1m", "--start", "2030-01-01T00:00Z", "--end", "2029-01-01T00:00Z"),
            ["--end: ", "is not after the start time"],
        ),
        (("--every", "1m", "--start", "soon"), ["--start 'soon'", "ISO 8601"]),
        (("--at", "2030-12-01T09:00"), ["--at", "no timezone"]),
        (("--solar", "high_noon", "--lat", "1", "--lon", "2"), ["--solar: ", "'high_noon'"]),
        (("--solar", "sunset", "--lat", "91", "--lon", "0"), ["--lat: ", "91", "-90 and 90"]),
        (("--solar", "sunset", "--lat", "0", "--lon", "-181"), ["--lon: ", "-181"]),
    ],
)
def test_add_errors_name_the_option(db_url: str, args: tuple[str, ...], needles: list[str]) -> None:
    line = one_line_error(cli(db_url, *ADD, *args), 1, "schedule 'bad': ", *needles)
    assert not NOT_CLI_WORDS.search(line), line
    assert names(db_url) == []


def test_task_and_name_are_named_as_the_command_takes_them(db_url: str) -> None:
    one_line_error(cli(db_url, "schedules", "add", "x", " ", "--every", "1m"), 1, "TASK: ")
    ok(db_url, "schedules", "add", "x", "t.x", "--every", "1m")
    one_line_error(cli(db_url, "schedules", "update", "x", "--task", ""), 1, "--task: ")
    line = one_line_error(
        cli(db_url, "schedules", "add", "x", "t.x", "--every", "1m"), 1, "'x'", "already exists"
    )
    assert "NAME" not in line and "name:" not in line


def test_update_errors_name_the_option(db_url: str) -> None:
    ok(db_url, "schedules", "add", "dup", "app.task", "--every", "1m")
    line = one_line_error(
        cli(db_url, "schedules", "update", "dup", "--cron", "* 25 * * *"), 1, "--cron: ", "'25'"
    )
    assert not NOT_CLI_WORDS.search(line), line


# --- usage errors (exit 2): options that conflict, are missing, or would do nothing -------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ((), ["say when it runs", "--every, --cron, --at or --solar"]),
        (("--every", "1m", "--cron", "* * * * *"), ["give only one of --every, --cron"]),
        (("--every", "1m", "--tz", "Europe/Berlin"), ["--tz", "--every", "--cron"]),
        (("--at", "2030-12-01T09:00Z", "--tz", "Europe/Berlin"), ["--tz", "--at", "offset"]),
        (
            ("--solar", "sunset", "--lat", "1", "--lon", "2", "--tz", "Europe/Berlin"),
            ["--tz", "--solar"],
        ),
        (("--every", "1m", "--allow-past"), ["--allow-past", "--at"]),
        (("--lat", "1", "--lon", "2"), ["--solar", "--lat and --lon"]),
        (("--solar", "sunset"), ["--lat and --lon"]),
        (("--every", "1m", "--priority", "300"), ["--priority", "300"]),
        (("--every", "1m", "--expires", "nan"), ["--expires", "nan"]),
        (("--every", "1m", "--expires", "0"), ["--expires"]),
    ],
)
def test_conflicting_missing_or_useless_options_are_usage_errors(
    db_url: str, args: tuple[str, ...], needles: list[str]
) -> None:
    one_line_error(cli(db_url, *ADD, *args), 2, *needles)
    assert names(db_url) == []


def test_tz_alone_on_update_needs_a_crontab(db_url: str) -> None:
    ok(db_url, "schedules", "add", "tick", "t.tick", "--every", "1m")
    one_line_error(
        cli(db_url, "schedules", "update", "tick", "--tz", "Europe/Berlin"),
        2,
        "--tz",
        "crontab schedules only",
        "every 1m",
        "--cron",
    )
    one_line_error(
        cli(db_url, "schedules", "update", "tick", "--every", "5s", "--tz", "Europe/Berlin"),
        2,
        "--tz does not apply to --every",
    )
    updated = ok(db_url, "schedules", "update", "tick", "--cron", "0 9 * * *", "--tz", "Asia/Tokyo")
    assert "cron '0 9 * * *' Asia/Tokyo" in updated.stdout
    assert ok(db_url, "schedules", "update", "tick", "--tz", "UTC").stderr == ""


# --- --at in the past ---------------------------------------------------------------------------


def test_at_in_the_past_is_refused_unless_allowed(db_url: str) -> None:
    past = iso(datetime.now(timezone.utc) - timedelta(days=2))
    one_line_error(
        cli(db_url, "schedules", "add", "launch", "t.launch", "--at", past),
        1,
        f"--at {past} is in the past",
        "database clock",
        "would run at once",
        "--allow-past",
    )
    assert names(db_url) == []
    result = ok(db_url, "schedules", "add", "launch", "t.launch", "--at", past, "--allow-past")
    assert result.stdout.startswith("added schedule 'launch'") and result.stderr == ""

    one_line_error(cli(db_url, "schedules", "update", "launch", "--at", past), 1, "is in the past")
    future = iso(datetime.now(timezone.utc) + timedelta(days=2))
    assert ok(db_url, "schedules", "update", "launch", "--at", future).stderr == ""
    assert ok(db_url, "schedules", "add", "later", "t.l", "--at", future).stderr == ""


# --- an unknown group ---------------------------------------------------------------------------


def test_listing_an_unknown_group_warns(db_url: str) -> None:
    result = ok(db_url, "--group", "typo", "schedules", "list")
    assert result.stdout.strip() == "no schedules in group 'typo'"
    (warning,) = warnings_of(result)
    assert "group 'typo'" in warning and "no scheduler" in warning and "--group" in warning

    result = ok(db_url, "--group", "typo", "schedules", "list", "--json")
    assert json.loads(result.stdout) == []
    assert len(warnings_of(result)) == 1


def test_a_group_in_use_is_not_warned_about(db_url: str) -> None:
    ok(db_url, "--group", "reports", "schedules", "add", "r", "t.r", "--every", "1h")
    assert warnings_of(ok(db_url, "--group", "reports", "schedules", "list")) == []
    # A group with a scheduler (its lease row) but no schedules yet is in use too.
    sql(db_url, "INSERT INTO pg_beat_leases (group_name) VALUES ('quiet')")
    result = ok(db_url, "--group", "quiet", "schedules", "list")
    assert warnings_of(result) == [] and result.stderr == ""


def test_a_schedule_not_found_in_an_unknown_group_says_so(db_url: str) -> None:
    ok(db_url, "schedules", "add", "tick", "t.tick", "--every", "1m")
    for args in (("show", "tick"), ("update", "tick", "--every", "5s"), ("remove", "tick")):
        one_line_error(
            cli(db_url, "--group", "typo", "schedules", *args),
            1,
            "schedule 'tick': not found",
            "group 'typo' has no schedules",
            "--group",
        )
    line = one_line_error(cli(db_url, "schedules", "show", "ghost"), 1, "'ghost': not found")
    assert "group" not in line  # the default group is in use


# --- schedules from an app's beat_schedule ----------------------------------------------------


@pytest.fixture
def config_row(db_url: str) -> str:
    with ScheduleManager(db_url) as api:
        api.sync_config({"cfg": {"task": "t.c", "kind": "interval", "interval_seconds": 10}},
                        owner="proj")  # fmt: skip
    return "cfg"


def test_editing_a_config_schedule_notes_the_reset_and_suggests_detach(
    db_url: str, config_row: str
) -> None:
    for args in (("update", "cfg", "--every", "20s"), ("disable", "cfg"), ("enable", "cfg")):
        result = ok(db_url, "schedules", *args)
        (warning,) = warnings_of(result)
        assert "'cfg'" in warning and "beat_schedule of 'proj'" in warning, warning
        assert "next start" in warning and "pg-beat schedules detach cfg" in warning, warning
        assert "pg-beat: error" not in result.stderr
    assert "see 'detach'" in ok(db_url, "schedules", "show", "cfg").stdout

    detached = ok(db_url, "schedules", "detach", "cfg")
    assert detached.stdout.startswith("detached schedule 'cfg': t.c, every 20s")
    assert detached.stderr == ""
    assert sql(db_url, "SELECT source, config_owner FROM pg_beat_schedules") == [("api", None)]
    assert ok(db_url, "schedules", "update", "cfg", "--every", "30s").stderr == ""
    shown = json.loads(ok(db_url, "schedules", "detach", "cfg", "--json").stdout)
    assert shown["source"] == "api" and shown["name"] == "cfg"
    one_line_error(cli(db_url, "schedules", "detach", "ghost"), 1, "'ghost': not found")


def test_removing_a_config_schedule_warns_that_it_comes_back(db_url: str, config_row: str) -> None:
    result = ok(db_url, "schedules", "remove", "cfg")
    assert result.stdout.strip() == "schedule 'cfg' removed"
    (warning,) = warnings_of(result)
    assert "beat_schedule of 'proj'" in warning and "creates it again" in warning


# --- failing schedules ------------------------------------------------------------------------


def test_list_and_show_mark_failing_schedules(db_url: str) -> None:
    ok(db_url, "schedules", "add", "good", "t.g", "--every", "1m")
    ok(db_url, "schedules", "add", "poison", "t.p", "--every", "1m")
    error = "publish failed: message too large (70000 bytes > 65536): " + "x" * 80
    sql(db_url, "UPDATE pg_beat_schedules SET last_error = %s WHERE name = 'poison'", error)
    rows = {line.split()[0]: line for line in ok(db_url, "schedules", "list").stdout.splitlines()}
    assert "FAILING: publish failed: message too" in rows["poison"]
    assert "x" * 80 not in rows["poison"]  # cut short
    assert "FAILING" not in rows["good"] and rows["good"].endswith(" -")
    shown = ok(db_url, "schedules", "show", "poison").stdout
    assert f"FAILING: {error}" in shown
    listed = json.loads(ok(db_url, "schedules", "list", "--json").stdout)
    assert {s["name"]: s["last_error"] for s in listed} == {"good": None, "poison": error}


# --- URLs as typed, schema, no traceback ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("notaurl", "'notaurl'"),
        ("postgresql://u:pw@localhost:notaport/db", "'postgresql://u:***@localhost:notaport/db'"),
        ("host=db password=pw port=abc", "'host=db password=*** port=abc'"),
        ("postgresql://u:pw@[::1/db?sslmode=bogus", "u:***@"),
    ],
)
def test_a_bad_url_is_shown_as_typed_without_its_password(url: str, shown: str) -> None:
    for args in (("schedules", "list"), ("schedules", "add", "a", "t.a", "--every", "1m")):
        line = one_line_error(cli(url, *args), 1, shown)
        assert "pw" not in line and "unparseable" not in line


def test_an_unreachable_database_is_one_line_with_the_url_as_typed() -> None:
    port = free_port()
    url = f"postgresql://beat:s3cret@127.0.0.1:{port}/nothing"
    for args in (("schedules", "list"), ("schedules", "detach", "x")):
        line = one_line_error(cli(url, *args), 3, "cannot reach the database")
        assert f"postgresql://beat:***@127.0.0.1:{port}/nothing" in line
        assert "s3cret" not in line


def test_no_placeholder_for_urls_is_left_in_the_package() -> None:
    package = Path(pg_beat.__file__).parent
    for source in package.rglob("*.py"):
        assert "<unparseable URL>" not in source.read_text(), source


def test_unmigrated_database_is_one_line_for_every_schedule_command(empty_db_url: str) -> None:
    for args in (
        ("schedules", "add", "a", "t.a", "--every", "1m"),
        ("schedules", "update", "a", "--every", "1m"),
        ("schedules", "detach", "a"),
        ("schedules", "show", "a"),
        ("schedules", "list"),
    ):
        one_line_error(cli(empty_db_url, *args), 1, "not migrated", "'pg-beat db upgrade'")


# --- overlap policy, max_runtime, run_once ----------------------------------------------------


def test_overlap_options_set_show_and_reset(db_url: str) -> None:
    ok(db_url, *ADD, "--every", "1m", "--overlap", "skip", "--max-runtime", "90", "--run-once")
    shown = ok(db_url, "schedules", "show", "bad").output
    assert re.search(r"overlap policy\s+skip", shown), shown
    assert re.search(r"max runtime\s+90s", shown) and re.search(r"run once\s+yes", shown)
    data = json.loads(ok(db_url, "schedules", "show", "bad", "--json").output)
    assert (data["overlap_policy"], data["max_runtime"], data["run_once"]) == ("skip", 90.0, True)
    ok(db_url, "schedules", "update", "bad", "--no-run-once", "--overlap", "buffer_one")
    data = json.loads(ok(db_url, "schedules", "show", "bad", "--json").output)
    assert (data["overlap_policy"], data["run_once"]) == ("buffer_one", False)
    ok(
        db_url,
        "schedules",
        "update",
        "bad",
        "--overlap",
        "default",
        "--max-runtime",
        "default",
        "--run-once-default",
    )
    shown = ok(db_url, "schedules", "show", "bad").output
    for label in ("overlap policy", "max runtime", "run once"):
        assert re.search(rf"{label}\s+\(scheduler default\)", shown), shown


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (("--overlap", "sometimes"), 1, ["--overlap: ", "'sometimes'", "buffer_one"]),
        (("--max-runtime", "0"), 1, ["--max-runtime: ", "> 0"]),
        (("--max-runtime", "soon"), 2, ["--max-runtime", "'soon'"]),
        (("--run-once", "--run-once-default"), 2, ["--run-once-default", "not both"]),
    ],
)
def test_overlap_option_errors_name_the_option(
    db_url: str, args: tuple[str, ...], code: int, needles: list[str]
) -> None:
    line = one_line_error(cli(db_url, *ADD, "--every", "1m", *args), code, *needles)
    assert "overlap_policy" not in line and "max_runtime" not in line, line
    assert names(db_url) == []
