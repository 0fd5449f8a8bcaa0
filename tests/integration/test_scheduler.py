"""``pg_beat.Scheduler`` in-process with a real Celery app and real PostgreSQL: the lazy banner
instance, the ``beat_schedule`` sync, the schema check, start-up retries, and shutdown."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery, current_app
from celery.schedules import crontab, schedule, solar
from support import pg
from support.env import unavailable
from support.pg import libpq_url as libpq
from support.procs import ProcessGroup
from support.waiting import wait_for

from pg_beat import migrate, startup, store
from pg_beat.api import ScheduleManager
from pg_beat.config import Settings, env_name
from pg_beat.publish.outbound import UNKNOWN_TASK_SCHEDULES
from pg_beat.scheduler import Scheduler

pytestmark = pytest.mark.timeout(90)

AppFactory = Callable[..., Celery]


# --- helpers -------------------------------------------------------------------------------------


def sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def counts(url: str) -> dict[str, int]:
    tables = ("pg_beat_schedules", "pg_beat_runs", "pg_beat_leases", "pg_beat_replicas")
    return {t: int(sql(url, f"SELECT count(*) FROM {t}")[0][0]) for t in tables}


NOTHING = {"pg_beat_schedules": 0, "pg_beat_runs": 0, "pg_beat_leases": 0, "pg_beat_replicas": 0}


def rows_by_name(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM pg_beat_schedules")
        assert cur.description is not None
        columns = [c.name for c in cur.description]
        return {r[columns.index("name")]: dict(zip(columns, r, strict=True)) for r in cur}


def advisory_locks(url: str) -> list[tuple[Any, ...]]:
    """pg_beat's advisory locks in this database (granted or awaited)."""
    return sql(
        url,
        "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        store.lease.LOCK_CLASS_ID,
    )


@pytest.fixture(autouse=True)
def _no_pg_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every setting may come from PG_BEAT_<NAME>: none may leak in from the caller's shell.
    for item in fields(Settings):
        monkeypatch.delenv(env_name(item.name), raising=False)


@pytest.fixture
def make_app(redis_url: str) -> Iterator[AppFactory]:
    """Celery apps with short lease settings; each becomes the current app, as under
    ``celery -A app beat``, until the test ends."""
    previous = current_app._get_current_object()
    apps: list[Celery] = []

    def make(url: str, current: bool = True, named: bool = True, **conf: Any) -> Celery:
        name = f"pg_beat_test_{secrets.token_hex(3)}" if named else None
        app = Celery(name, broker=redis_url, set_as_current=current)
        app.conf.update(
            pg_beat_database_url=url,
            pg_beat_replica_name=f"sched-test-{secrets.token_hex(4)}",
            pg_beat_lease_ttl=3.0,
            pg_beat_heartbeat_interval=0.2,
            pg_beat_hang_timeout=30.0,
            beat_max_loop_interval=1,
        )
        app.conf.update(conf)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
    previous.set_current()


@contextmanager
def running(app: Celery, **kwargs: Any) -> Iterator[Scheduler]:
    scheduler = Scheduler(app, **kwargs)
    try:
        yield scheduler
    finally:
        scheduler.close()


BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "float": {
        "task": "t.float",
        "schedule": 2.5,
        "args": (1, "two"),
        "kwargs": {"k": "v"},
        "options": {"queue": "fast", "priority": 3, "expires": 60, "countdown": 5},
    },
    "timedelta": {"task": "t.timedelta", "schedule": timedelta(minutes=5)},
    "schedule": {"task": "t.schedule", "schedule": schedule(timedelta(seconds=30))},
    "crontab": {
        "task": "t.crontab",
        "schedule": crontab(minute="*/15", hour="9-17", day_of_week="mon-fri"),
    },
    "solar": {"task": "t.solar", "schedule": solar("sunset", 52.52, 13.405)},
}


# --- the lazy instance Celery builds for its banner -----------------------------------------------


def test_lazy_instance_writes_nothing_and_reports_the_schema(
    db_url: str, make_app: AppFactory
) -> None:
    app = make_app(db_url, beat_schedule=BEAT_SCHEDULE, timezone="Europe/Berlin")
    with running(app, lazy=True) as scheduler:
        info = scheduler.info
        assert scheduler.dispatcher is None and scheduler.watchdog is None
        assert counts(db_url) == NOTHING
    assert counts(db_url) == NOTHING
    assert f"schema -> at {migrate.head_revision()} (ok)" in info
    assert "ttl 3s, heartbeat 0.2s" in info
    assert "timezone Europe/Berlin" in info
    assert "database -> postgres@127.0.0.1" in info and db_url.rsplit("/", 1)[1] in info
    # The banner's check left no session behind.
    replica = app.conf.pg_beat_replica_name
    assert sql(
        db_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
        f"pg_beat:%:{replica}:%",
    ) == [(0,)]


def test_banner_on_an_unmigrated_database(empty_db_url: str, make_app: AppFactory) -> None:
    app = make_app(empty_db_url)
    with running(app, lazy=True) as scheduler:
        info = scheduler.info
    assert "schema -> MISMATCH" in info and "pg-beat db upgrade" in info


def test_banner_with_the_database_down(make_app: AppFactory) -> None:
    url = f"postgresql://pg_beat:s3cret-pw@127.0.0.1:{pg.free_port()}/nothing"
    app = make_app(url)
    with running(app, lazy=True) as scheduler:
        info = scheduler.info
    assert "schema -> unknown (database unreachable" in info
    assert "s3cret-pw" not in info


# --- beat_schedule sync ---------------------------------------------------------------------------


def test_start_syncs_beat_schedule(db_url: str, make_app: AppFactory) -> None:
    app = make_app(db_url, beat_schedule=BEAT_SCHEDULE, timezone="Europe/Berlin")
    with running(app) as scheduler:
        assert scheduler.dispatcher is not None
        assert scheduler.schedule == {}  # schedules are read from the database as they fall due
        rows = rows_by_name(db_url)
    assert set(rows) == set(BEAT_SCHEDULE)
    assert {r["source"] for r in rows.values()} == {"config"}
    assert {name: r["task"] for name, r in rows.items()} == {
        name: e["task"] for name, e in BEAT_SCHEDULE.items()
    }
    assert {name: (r["kind"], r["interval_seconds"]) for name, r in rows.items()} == {
        "float": ("interval", 2.5),
        "timedelta": ("interval", 300.0),
        "schedule": ("interval", 30.0),
        "crontab": ("crontab", None),
        "solar": ("solar", None),
    }
    cron = rows["crontab"]
    assert (
        cron["cron_minute"],
        cron["cron_hour"],
        cron["cron_day_of_month"],
        cron["cron_month_of_year"],
        cron["cron_day_of_week"],
        cron["timezone"],
    ) == ("*/15", "9-17", "*", "*", "mon-fri", "Europe/Berlin")
    sun = rows["solar"]
    assert (sun["solar_event"], sun["latitude"], sun["longitude"]) == ("sunset", 52.52, 13.405)
    first = rows["float"]
    assert (first["args"], first["kwargs"]) == ([1, "two"], {"k": "v"})
    # Only message options are kept ("countdown" makes no sense for a periodic task).
    assert first["options"] == {"queue": "fast", "priority": 3, "expires": 60}
    assert "beat_schedule" in first["description"]


def test_restart_with_a_changed_beat_schedule(db_url: str, make_app: AppFactory) -> None:
    with running(make_app(db_url, beat_schedule=BEAT_SCHEDULE, pg_beat_config_owner="proj")):
        pass
    with ScheduleManager(db_url) as api:
        api.create("from-api", "t.api", every=60)
    sql(db_url, "UPDATE pg_beat_schedules SET total_run_count = 12, last_run_at = now()")
    before = rows_by_name(db_url)

    changed = {
        "float": {**BEAT_SCHEDULE["float"], "schedule": 5.0},
        "crontab": BEAT_SCHEDULE["crontab"],
    }
    with running(make_app(db_url, beat_schedule=changed, pg_beat_config_owner="proj")):
        after = rows_by_name(db_url)
    # Entries gone from beat_schedule are kept (another version of the app may have them)...
    assert set(after) == {*BEAT_SCHEDULE, "from-api"}
    app = make_app(
        db_url, beat_schedule=changed, pg_beat_config_owner="proj", pg_beat_config_prune=True
    )
    with running(app):
        after = rows_by_name(db_url)
    # ...unless pruning is asked for.
    assert set(after) == {"float", "crontab", "from-api"}
    assert after["float"]["interval_seconds"] == 5.0
    for name in ("float", "crontab"):
        assert after[name]["total_run_count"] == 12
        assert after[name]["last_run_at"] == before[name]["last_run_at"]
        assert after[name]["created_at"] == before[name]["created_at"]
    assert after["crontab"]["updated_at"] == before["crontab"]["updated_at"]  # unchanged entry
    assert after["from-api"] == before["from-api"]


def test_a_start_that_prunes_never_removes_another_apps_rows(
    db_url: str, make_app: AppFactory
) -> None:
    """App A's beat_schedule never names app B's entries: a start of A with pruning removes
    A's own stale rows only, whatever else is in the group."""
    reports = {"reports": {"task": "t.reports", "schedule": 20.0}}
    billing = {"billing": {"task": "t.billing", "schedule": 10.0}}
    with running(make_app(db_url, beat_schedule=reports, pg_beat_config_owner="reports-app")):
        pass
    old_billing = {**billing, "old-billing": {"task": "t.old", "schedule": 30.0}}
    with running(make_app(db_url, beat_schedule=old_billing, pg_beat_config_owner="billing-app")):
        pass
    before = rows_by_name(db_url)
    assert set(before) == {"reports", "billing", "old-billing"}
    app = make_app(
        db_url, beat_schedule=billing, pg_beat_config_owner="billing-app", pg_beat_config_prune=True
    )
    with running(app):
        after = rows_by_name(db_url)
    assert set(after) == {"reports", "billing"}  # billing's stale row pruned, reports' kept
    assert after["reports"] == before["reports"]
    assert after["reports"]["config_owner"] == "reports-app"


def owner_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if getattr(r, "action", None) == "config_owner_default"
    ]


def test_an_app_without_a_main_name_is_warned_once_that_its_owner_is_shared(
    db_url: str, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pg_beat")
    with running(make_app(db_url, named=False, beat_schedule=BEAT_SCHEDULE)) as scheduler:
        wait_for(lambda: scheduler.state.epoch is not None, what="leadership")
    (line,) = owner_warnings(caplog)
    assert "no main name" in line and "owned by 'celery'" in line
    assert "set pg_beat_config_owner (or PG_BEAT_CONFIG_OWNER)" in line
    assert "\n" not in line
    assert {r[0] for r in sql(db_url, "SELECT config_owner FROM pg_beat_schedules")} == {"celery"}


@pytest.mark.parametrize(
    "conf",
    [
        {"named": True},
        {"named": False, "pg_beat_config_owner": "billing"},
        {"named": False, "pg_beat_sync_config": False},
    ],
    ids=["main-name", "config-owner", "no-sync"],
)
def test_no_owner_warning_when_the_owner_is_the_apps_own(
    conf: dict[str, Any], db_url: str, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pg_beat")
    with running(make_app(db_url, beat_schedule=BEAT_SCHEDULE, **conf)):
        pass
    assert owner_warnings(caplog) == []


def test_sync_can_be_turned_off(db_url: str, make_app: AppFactory) -> None:
    app = make_app(db_url, beat_schedule=BEAT_SCHEDULE, pg_beat_sync_config=False)
    with running(app):
        assert counts(db_url)["pg_beat_schedules"] == 0


def test_crontab_with_its_own_timezone_default_utc(db_url: str, make_app: AppFactory) -> None:
    entries = {"c": {"task": "t.c", "schedule": crontab(minute=0, hour=3)}}
    with running(make_app(db_url, beat_schedule=entries)):
        row = rows_by_name(db_url)["c"]
    assert (row["cron_minute"], row["cron_hour"], row["timezone"]) == ("0", "3", "UTC")


def test_crontab_with_list_fields(db_url: str, make_app: AppFactory) -> None:
    entries = {"c": {"task": "t.c", "schedule": crontab(minute=0, hour=[1, 2])}}
    with running(make_app(db_url, beat_schedule=entries)):
        row = rows_by_name(db_url)["c"]
    assert (row["cron_minute"], row["cron_hour"]) == ("0", "1,2")


def test_crontab_takes_the_timezone_of_the_schedulers_app(
    db_url: str, make_app: AppFactory
) -> None:
    make_app(db_url, timezone="UTC")  # some other app is the current one
    entries = {"c": {"task": "t.c", "schedule": crontab(minute=0, hour=3)}}
    app = make_app(db_url, current=False, beat_schedule=entries, timezone="Asia/Tokyo")
    with running(app):
        row = rows_by_name(db_url)["c"]
    assert row["timezone"] == "Asia/Tokyo"


def test_an_invalid_beat_schedule_entry_stops_start_and_writes_nothing(
    db_url: str, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    entries = {
        "good": {"task": "t.good", "schedule": 10},
        "bad": {"task": "t.bad", "schedule": "every day"},
    }
    with caplog.at_level(logging.CRITICAL, logger="pg_beat"), pytest.raises(SystemExit) as caught:
        Scheduler(make_app(db_url, beat_schedule=entries))
    assert caught.value.code == 78  # EX_CONFIG: a supervisor should not merely restart it
    assert "'bad'" in caplog.text and "cannot start" in caplog.text
    assert counts(db_url) == NOTHING


# --- schema -------------------------------------------------------------------------------------


def test_schema_mismatch_stops_start(
    empty_db_url: str, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.CRITICAL, logger="pg_beat"), pytest.raises(SystemExit) as caught:
        Scheduler(make_app(empty_db_url, beat_schedule=BEAT_SCHEDULE))
    assert caught.value.code == 78
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "pg-beat db upgrade" in line
    assert "none (not migrated)" in line and migrate.head_revision() in line


def test_a_schema_ahead_and_declared_compatible_starts_with_one_info_line(
    db_url: str, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    head = migrate.head_revision()
    # As a later release's migration leaves it: a revision this code does not know, whose
    # record declares this code's head compatible.
    sql(db_url, "UPDATE pg_beat_alembic_version SET version_num = '0004_future'")
    sql(db_url, "INSERT INTO pg_beat_schema_compat VALUES ('0004_future', %s)", head)
    app = make_app(db_url, beat_schedule=BEAT_SCHEDULE)
    with running(app, lazy=True) as lazy:
        assert f"schema -> at 0004_future, ahead of this pg_beat ({head})" in lazy.info
    with caplog.at_level(logging.INFO, logger="pg_beat"), running(app) as scheduler:
        wait_for(lambda: scheduler.state.epoch is not None, 10, "leadership")
    lines = [r.getMessage() for r in caplog.records if "ahead of this pg_beat" in r.getMessage()]
    assert lines == [
        f"pg_beat: database schema is at 0004_future, ahead of this pg_beat ({head}), and "
        f"declares code from {head} on compatible: starting"
    ]
    assert counts(db_url)["pg_beat_schedules"] == 5


def test_a_schema_ahead_and_incompatible_stops_start(
    db_url: str, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    head = migrate.head_revision()
    sql(db_url, "UPDATE pg_beat_alembic_version SET version_num = '0005_future'")
    sql(db_url, "INSERT INTO pg_beat_schema_compat VALUES ('0005_future', '0004_future')")
    with caplog.at_level(logging.CRITICAL, logger="pg_beat"), pytest.raises(SystemExit) as caught:
        Scheduler(make_app(db_url, beat_schedule=BEAT_SCHEDULE))
    assert caught.value.code == 78
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert line.endswith(
        "database schema is at 0005_future, which needs pg_beat code at revision 0004_future "
        f"or later; this pg_beat is at {head}: upgrade pg_beat (or roll back with 'pg-beat db "
        f"downgrade {head}' run by the pg_beat that migrated it)"
    )
    assert counts(db_url) == NOTHING


def test_schema_setting(empty_db_url: str, make_app: AppFactory) -> None:
    migrate.upgrade(empty_db_url, schema="beat")
    app = make_app(empty_db_url, pg_beat_schema="beat", beat_schedule=BEAT_SCHEDULE)
    with running(app, lazy=True) as lazy:
        assert f"schema -> at {migrate.head_revision()} (ok)" in lazy.info
        assert "(schema beat)" in lazy.info
    with running(app) as scheduler:
        wait_for(lambda: scheduler.state.epoch is not None, 10, "leadership")
    assert sql(empty_db_url, "SELECT count(*) FROM beat.pg_beat_schedules") == [(5,)]
    # The public schema was never migrated: without the setting, start-up refuses.
    with pytest.raises(SystemExit) as caught:
        Scheduler(make_app(empty_db_url))
    assert caught.value.code == 78


# --- database unreachable at start ---------------------------------------------------------------


class StartRetries:
    """Counts the pauses of start-up between two tries (``pg_beat.startup``'s sleeps)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = time.sleep

        def sleep(seconds: float) -> None:
            self.count += 1
            real(seconds)

        monkeypatch.setattr(startup, "time", SimpleNamespace(sleep=sleep))


def construct_in_background(app: Celery) -> tuple[threading.Thread, dict[str, Any]]:
    """``Scheduler(app)`` in a daemon thread, for a start-up that waits: the outcome dict gets
    ``scheduler``, or ``error`` (SystemExit included, for the test to report)."""
    outcome: dict[str, Any] = {}

    def construct() -> None:
        try:
            outcome["scheduler"] = Scheduler(app)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=construct, daemon=True)
    thread.start()
    return thread, outcome


def test_start_waits_for_the_database(
    private_cluster: pg.PrivateCluster,
    make_app: AppFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="pg_beat")
    retries = StartRetries(monkeypatch)
    url = private_cluster.url()
    migrate.upgrade(url)
    private_cluster.stop()
    app = make_app(url, beat_schedule={"s": {"task": "t.s", "schedule": 60}})
    thread, outcome = construct_in_background(app)
    try:
        wait_for(
            lambda: any("not usable yet" in r.getMessage() for r in caplog.records),
            10,
            "the 'not usable yet' log line",
        )
        wait_for(lambda: retries.count >= 3, 15, "a few retries against the stopped server")
        assert thread.is_alive() and outcome == {}
        private_cluster.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), "Scheduler() did not finish after the database came up"
    finally:
        if thread.is_alive():
            private_cluster.start()
            thread.join(timeout=30)
        if "scheduler" in outcome:
            scheduler = outcome["scheduler"]
            try:
                assert scheduler.dispatcher is not None and scheduler.watchdog is not None
                wait_for(lambda: scheduler.state.epoch is not None, 10, "leadership")
            finally:
                scheduler.close()
    assert "error" not in outcome, outcome.get("error")
    assert sql(url, "SELECT name, source FROM pg_beat_schedules") == [("s", "config")]
    unreachable = [r for r in caplog.records if "not usable yet" in r.getMessage()]
    assert len(unreachable) == 1, "logged once, not once per retry"
    assert any("database reachable" in r.getMessage() for r in caplog.records)


# --- shutdown -------------------------------------------------------------------------------------


def test_close_releases_the_lease_at_once_and_twice_is_fine(
    db_url: str, make_app: AppFactory
) -> None:
    scheduler = Scheduler(make_app(db_url))
    try:
        wait_for(lambda: scheduler.state.epoch is not None, 10, "leadership")
        epoch = scheduler.state.epoch
        assert [granted for _, granted in advisory_locks(db_url)] == [True]
    finally:
        scheduler.close()
    scheduler.close()
    lease = sql(
        db_url,
        "SELECT epoch, expires_at <= clock_timestamp(), backend_pid FROM pg_beat_leases",
    )
    assert lease == [(epoch, True, None)]
    wait_for(lambda: advisory_locks(db_url) == [], 5, "advisory lock released")
    ended = sql(
        db_url, "SELECT ended_at IS NOT NULL FROM pg_beat_leader_terms WHERE epoch = %s", epoch
    )
    assert ended == [(True,)]
    assert scheduler.watchdog is not None
    scheduler.watchdog.join(timeout=5)
    assert not scheduler.watchdog.is_alive()


def test_release_at_shutdown_terminates_no_session_but_our_lock_holder(
    db_url: str, make_app: AppFactory
) -> None:
    """The lease session's pid the watchdog remembers is a hint: after a restart of the server
    it may be any client's, or one of ours without the lock (invariant 13)."""
    with running(make_app(db_url)) as scheduler:
        wait_for(lambda: scheduler.state.epoch is not None, 10, "leadership")
        epoch = scheduler.state.epoch
        ours = scheduler.connector.application_name("dispatch")
        with (
            psycopg.connect(libpq(db_url), autocommit=True, application_name="psql") as stranger,
            psycopg.connect(libpq(db_url), autocommit=True, application_name=ours) as unlocked,
        ):
            for session in (stranger, unlocked):
                scheduler._release(epoch, session.info.backend_pid)
                time.sleep(0.3)  # a terminated backend would be gone by now
                assert session.execute("SELECT 1").fetchone() == (1,)


def test_the_next_replica_leads_without_waiting_for_the_ttl(
    db_url: str, make_app: AppFactory
) -> None:
    ttl = 10.0
    first = Scheduler(make_app(db_url, pg_beat_lease_ttl=ttl))
    try:
        wait_for(lambda: first.state.epoch is not None, 10, "first leads")
        first_epoch = first.state.epoch
        with running(make_app(db_url, pg_beat_lease_ttl=ttl)) as second:
            queued = [False, True]  # the first holds the lock, the second waits for it
            wait_for(
                lambda: sorted(granted for _, granted in advisory_locks(db_url)) == queued,
                10,
                "the second queued on the lock",
            )
            assert second.state.epoch is None  # standing by
            first.close()
            closed_at = time.monotonic()
            wait_for(lambda: second.state.epoch is not None, ttl, "second leads")
            assert time.monotonic() - closed_at < ttl / 2
            assert second.state.epoch == (first_epoch or 0) + 1
    finally:
        first.close()


def test_close_right_after_start_leaves_no_lease_behind(db_url: str, make_app: AppFactory) -> None:
    # As when beat gets SIGTERM while it starts: three tries, each must leave nothing held.
    for _ in range(3):
        scheduler = Scheduler(make_app(db_url))
        scheduler.close()
        assert scheduler.watchdog is not None
        scheduler.watchdog.join(timeout=5)
        assert not scheduler.watchdog.is_alive()
        held = sql(
            db_url, "SELECT count(*) FROM pg_beat_leases WHERE expires_at > clock_timestamp()"
        )
        assert (held, advisory_locks(db_url)) == ([(0,)], [])


def test_close_of_a_lazy_instance(db_url: str, make_app: AppFactory) -> None:
    scheduler = Scheduler(make_app(db_url), lazy=True)
    scheduler.close()
    scheduler.close()
    assert counts(db_url) == NOTHING


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({"pg_beat_lease_ttl": 2.0, "pg_beat_heartbeat_interval": 1.0}, "pg_beat_lease_ttl"),
        ({"pg_beat_heartbeat_interval": 0}, "pg_beat_heartbeat_interval"),
        ({"pg_beat_lease_ttl": "5"}, "pg_beat_lease_ttl"),
        ({"pg_beat_statement_timeout": -1}, "pg_beat_statement_timeout"),
        ({"pg_beat_publish_margin": 2.9}, "pg_beat_publish_margin"),
        ({"pg_beat_on_hang": "panic"}, "pg_beat_on_hang"),
        ({"pg_beat_misfire_policy": "never"}, "pg_beat_misfire_policy"),
        ({"pg_beat_batch_size": 0}, "pg_beat_batch_size"),
        ({"pg_beat_catch_up_limit": 1.5}, "pg_beat_catch_up_limit"),
        ({"pg_beat_catch_up_limit": 1001}, "pg_beat_catch_up_limit must be at most 1000"),
        ({"pg_beat_database_url": "mysql://u@h/db"}, "postgresql://"),
    ],
    ids=[
        "ttl-under-3x-heartbeat",
        "heartbeat-zero",
        "ttl-string",
        "statement-timeout-negative",
        "margin-too-big",
        "on-hang",
        "misfire",
        "batch-size",
        "catch-up-float",
        "catch-up-over-the-bound",
        "url-scheme",
    ],
)
@pytest.mark.parametrize("lazy", [False, True], ids=["run", "lazy"])
def test_invalid_settings(
    db_url: str, make_app: AppFactory, conf: dict[str, Any], named: str, lazy: bool
) -> None:
    app = make_app(db_url, beat_schedule=BEAT_SCHEDULE, **conf)
    with pytest.raises(SystemExit) as caught:  # one line on stderr, no traceback
        Scheduler(app, lazy=lazy)
    assert named in str(caught.value.code) and str(caught.value.code).startswith("pg_beat: ")
    assert counts(db_url) == NOTHING


def test_missing_database_url(make_app: AppFactory) -> None:
    app = make_app("postgresql://unused/x")
    app.conf.pg_beat_database_url = None
    with pytest.raises(SystemExit) as caught:
        Scheduler(app, lazy=True)
    assert "pg_beat_database_url" in str(caught.value.code)
    assert "PG_BEAT_DATABASE_URL" in str(caught.value.code)


def test_database_url_from_the_environment(
    db_url: str, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_BEAT_DATABASE_URL", libpq(db_url))
    app = make_app("unused")
    app.conf.pg_beat_database_url = None
    with running(app, lazy=True) as scheduler:
        assert f"schema -> at {migrate.head_revision()} (ok)" in scheduler.info


def test_a_read_only_server_at_start_is_waited_for_not_crashed_on(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pointed at a hot standby (SQLSTATE 25006 on every write), beat waits with one line and
    starts once the server accepts writes (it was promoted)."""
    from support.replication import ReplicatedPair

    caplog.set_level(logging.INFO, logger="pg_beat")
    retries = StartRetries(monkeypatch)
    try:
        pair = ReplicatedPair().start()
    except Exception as exc:  # initdb / pg_basebackup missing, or no user to run them as
        unavailable(f"cannot start a primary with a standby: {exc}")
    try:
        migrate.upgrade(pair.primary.url())
        pair.wait_replayed()
        app = make_app(pair.standby.url(), beat_schedule={"s": {"task": "t.s", "schedule": 60}})
        thread, outcome = construct_in_background(app)
        wait_for(
            lambda: any("read-only" in r.getMessage() for r in caplog.records),
            15,
            "the read-only line",
        )
        wait_for(lambda: retries.count >= 3, 15, "several retries")
        assert thread.is_alive() and outcome == {}
        pair.stop_primary("immediate")
        pair.promote_standby()
        thread.join(timeout=30)
        assert not thread.is_alive() and "error" not in outcome, outcome
        scheduler = outcome["scheduler"]
        try:
            wait_for(lambda: scheduler.state.epoch is not None, 10, "leadership")
        finally:
            scheduler.close()
        waiting = [r for r in caplog.records if "not usable yet" in r.getMessage()]
        assert len(waiting) == 1 and "read-only" in waiting[0].getMessage()
        assert not [r for r in caplog.records if r.exc_info]  # no traceback
    finally:
        pair.cleanup()


def test_a_task_this_app_does_not_know_is_warned_about_per_schedule_and_still_sent(
    db_url: str, make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo in a task name is otherwise seen only by the workers ('unregistered task'). One
    warning per schedule, once each, up to a few per task name: then one line for the rest."""
    app = make_app(db_url)

    @app.task(name="proj.tasks.cleanup")
    def cleanup() -> None: ...

    limit = UNKNOWN_TASK_SCHEDULES
    typos = [f"typo-{i}" for i in range(limit + 2)]
    with ScheduleManager(db_url) as api:
        for name in typos:
            api.create(name, "proj.tasks.clenaup", every=1)
        api.create("known", "proj.tasks.cleanup", every=1)
    caplog.set_level(logging.INFO, logger="pg_beat")
    with running(app) as scheduler:
        wait_for(lambda: scheduler.state.epoch is not None, 10, "leadership")
        deadline = time.monotonic() + 15
        # Every schedule at least twice: a second tick of a schedule warns no more.
        while scheduler.dispatcher is not None and scheduler.dispatcher.sent_total < 3 * 8:
            assert time.monotonic() < deadline, "the ticks were not sent"
            scheduler.tick()
    warnings = [r.getMessage() for r in caplog.records if "which this app does not know" in
                r.getMessage()]  # fmt: skip
    each = [w for w in warnings if w.startswith("pg_beat: schedule ")]
    assert len(each) == limit, warnings
    assert all("'proj.tasks.clenaup'" in w for w in each)
    assert len({w.split("'")[1] for w in each}) == limit  # a different schedule each time
    rest = [w for w in warnings if w.startswith("pg_beat: more schedules")]
    assert len(rest) == 1, warnings
    # Sent all the same: the task may live on the workers only.
    sent = sql(
        db_url, "SELECT count(DISTINCT schedule_name) FROM pg_beat_runs WHERE status = 'sent'"
    )
    assert sent == [(len(typos) + 1,)]


def test_a_backlog_goes_out_in_redis_pipelines_each_tick_once_beside_a_poison_tick(
    db_url: str, make_app: AppFactory, redis_url: str
) -> None:
    """On Redis the publisher sends a backlog in batches (one pipeline each). A message refused
    before it is buffered (over pg_beat_max_message_bytes) is parked alone: every other tick of
    its batch reaches the queue, each once, with its own task id."""
    queue = f"pg_beat_test_{secrets.token_hex(4)}"
    app = make_app(db_url, task_default_queue=queue, pg_beat_max_message_bytes=10_000)
    names = [f"b{i:03d}" for i in range(120)]
    with ScheduleManager(db_url) as api:
        for name in names:
            api.create(name, "t.backlog", every=3600)
        api.create("too-big", "t.backlog", every=3600, args=["x" * 20_000])
    # A backlog: every schedule 90 minutes behind (fire_once: one late tick each, the next
    # one 30 minutes ahead).
    sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = now() - interval '90 minutes'")
    client = redis.Redis.from_url(redis_url)
    try:
        with running(app) as scheduler:
            assert scheduler.dispatcher is not None
            publisher = scheduler.dispatcher.publisher
            opened = publisher.sender.open_batch
            assert opened is not None
            batches: list[int] = []

            def counting() -> Any:
                batches.append(publisher.backlog)
                return opened()

            publisher.sender.open_batch = counting
            done = "SELECT count(*) FROM pg_beat_runs WHERE status IN ('sent', 'failed')"
            deadline = time.monotonic() + 30
            while sql(db_url, done) != [(len(names) + 1,)]:
                assert time.monotonic() < deadline, sql(
                    db_url, "SELECT status, count(*) FROM pg_beat_runs GROUP BY status"
                )
                scheduler.tick()
        messages = [json.loads(m) for m in client.lrange(queue, 0, -1)]
    finally:
        client.delete(queue)
        client.close()
    assert batches and len(batches) < len(names) / 2, batches  # batched, not one by one
    sent = dict(
        sql(db_url, "SELECT task_id, schedule_name FROM pg_beat_runs WHERE status = 'sent'")
    )
    ids = [m["headers"]["id"] for m in messages]
    assert sorted(ids) == sorted(sent) and len(set(ids)) == len(names)  # each tick once
    assert sorted(sent.values()) == names
    assert {m["headers"]["pg_beat_schedule"] for m in messages} == set(names)
    failed = sql(db_url, "SELECT schedule_name, error FROM pg_beat_runs WHERE status = 'failed'")
    assert [name for name, _ in failed] == ["too-big"]
    assert "pg_beat_max_message_bytes" in failed[0][1]


def test_a_redis_that_stops_answering_mid_backlog_loses_no_tick_and_logs_two_lines(
    db_url: str, make_app: AppFactory, procs: ProcessGroup, caplog: pytest.LogCaptureFixture
) -> None:
    """A private Redis stops answering (SIGSTOP) while a backlog goes out in pipelines: every
    flush times out and is retried in order; nothing is parked as failed, the replica keeps its
    lease, and once Redis answers again every tick is in the queue exactly once: the pipelines
    that waited in the stalled server's socket buffer run when it answers, and their retries
    find each tick's marker and push nothing (pg_beat.publish.dedup).
    The outage costs two log lines: one when publishing fails, one when it works again, with
    how long it failed."""
    server = shutil.which("redis-server")
    if server is None:
        unavailable("redis-server (Debian package redis-server) for a Redis of this test's own")
    port = pg.free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs.spawn("redis", argv)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, 10, "the test's own Redis")
    queue = "pg_beat_stall"
    app = make_app(db_url, broker_url=f"redis://127.0.0.1:{port}/0", task_default_queue=queue)

    @app.task(name="t.backlog")
    def backlog() -> None: ...

    names = [f"b{i:02d}" for i in range(80)]
    with ScheduleManager(db_url) as api:
        for name in names:
            api.create(name, "t.backlog", every=3600)
    sent = "SELECT count(*) FROM pg_beat_runs WHERE status = 'sent'"
    with running(app) as scheduler:
        deadline = time.monotonic() + 10
        while (epoch := scheduler.state.epoch) is None:  # ticks warm the broker connection
            assert time.monotonic() < deadline, "the lease"
            scheduler.tick()
        caplog.set_level(logging.INFO, logger="pg_beat")
        caplog.clear()
        procs.signal("redis", signal.SIGSTOP)
        try:
            sql(db_url, "UPDATE pg_beat_schedules SET next_run_at = now() - interval '90 minutes'")
            until = time.monotonic() + 2.5  # several flushes time out (half the publish margin)
            while time.monotonic() < until:
                scheduler.tick()
            assert sql(db_url, sent) == [(0,)]
        finally:
            procs.signal("redis", signal.SIGCONT)
        deadline = time.monotonic() + 30
        while sql(db_url, sent) != [(len(names),)]:
            assert time.monotonic() < deadline, sql(
                db_url, "SELECT status, count(*) FROM pg_beat_runs GROUP BY status"
            )
            scheduler.tick()
        assert scheduler.state.epoch == epoch  # no step-down, no takeover
    messages = [json.loads(m) for m in client.lrange(queue, 0, -1)]
    client.close()
    runs = dict(sql(db_url, "SELECT task_id, schedule_name FROM pg_beat_runs"))
    copies = Counter(m["headers"]["id"] for m in messages)
    assert set(copies) == set(runs)  # every tick is in the queue, and nothing else
    assert max(copies.values()) == 1, copies.most_common(3)  # and once
    assert sorted(runs.values()) == names
    assert sql(db_url, "SELECT count(*) FROM pg_beat_runs WHERE status <> 'sent'") == [(0,)]
    # The publish path's lines (the watchdog's "now the leader" may land after the clear).
    loud = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name == "pg_beat.dispatch"
    ]
    assert len(loud) == 2, loud
    assert "publishing failed; keeping the lease" in loud[0], loud
    assert "works again after failing for" in loud[1], loud
