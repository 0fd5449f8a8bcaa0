"""A replica's start: the schema check, the ``beat_schedule`` sync, waiting for the database.

Start-up waits while the database is unreachable or read-only (one log line per state change),
and ends the process on what waiting cannot cure: a database or role that does not exist, a
failed password, a schema this pg_beat cannot run against (behind it, or ahead of it and not
declared compatible), an invalid ``beat_schedule`` entry.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from celery import schedules as celery_schedules
from sqlalchemy.exc import DBAPIError

from pg_beat import compat, migrate, store
from pg_beat.api import ScheduleManager
from pg_beat.config import Settings
from pg_beat.exceptions import InvalidSchedule, PgBeatError, SchemaMismatch
from pg_beat.schedules import MESSAGE_OPTIONS
from pg_beat.urls import describe
from pg_beat.validation import split_crontab

logger = logging.getLogger("pg_beat.scheduler")

EX_CONFIG = 78  # sysexits.h: a configuration error; a supervisor should not just restart us
#: Connection failures that waiting will not cure.
_PERMANENT = re.compile(
    r"database \".*\" does not exist|role \".*\" does not exist|password authentication "
    r"failed|no pg_hba\.conf entry|authentication failed"
)


def entry_values(name: str, entry: Mapping[str, Any], default_tz: str) -> dict[str, Any]:
    """Column values for one ``beat_schedule`` entry (Celery's schedule classes in, rows out)."""
    schedule = entry.get("schedule")
    options = dict(entry.get("options") or {})
    values: dict[str, Any] = {
        "task": entry.get("task"),
        "args": list(entry.get("args") or ()),
        "kwargs": dict(entry.get("kwargs") or {}),
        "options": {k: v for k, v in options.items() if k in MESSAGE_OPTIONS},
        "description": f"from beat_schedule[{name!r}]",
    }
    values.update(_pg_beat_options(name, entry.get("pg_beat")))
    if isinstance(schedule, (int, float)):
        values.update(kind="interval", interval_seconds=float(schedule))
    elif isinstance(schedule, timedelta):
        values.update(kind="interval", interval_seconds=schedule.total_seconds())
    elif isinstance(schedule, celery_schedules.crontab):
        expression = " ".join(
            _cron_field(getattr(schedule, attr))
            for attr in (
                "_orig_minute",
                "_orig_hour",
                "_orig_day_of_month",
                "_orig_month_of_year",
                "_orig_day_of_week",
            )
        )
        # An unbound crontab would report the *current* app's zone; the scheduler's app wins.
        tz = schedule.tz if getattr(schedule, "_app", None) is not None else default_tz
        values.update(kind="crontab", timezone=str(tz), **split_crontab(expression, name))
    elif isinstance(schedule, celery_schedules.solar):
        values.update(
            kind="solar", solar_event=schedule.event, latitude=schedule.lat, longitude=schedule.lon
        )
    elif isinstance(schedule, celery_schedules.schedule):
        values.update(kind="interval", interval_seconds=schedule.run_every.total_seconds())
    else:
        raise InvalidSchedule(name, f"unsupported schedule {schedule!r}", field="schedule")
    return values


#: What a ``beat_schedule`` entry may set under its ``"pg_beat"`` key (Celery ignores it).
ENTRY_OPTIONS = ("overlap_policy", "max_runtime", "run_once")


def _pg_beat_options(name: str, given: Any) -> dict[str, Any]:
    """``"pg_beat": {"overlap_policy": "skip", "max_runtime": 600, "run_once": True}``: the
    per-schedule settings an entry sets (the row keeps NULL, the beat's setting, for the rest);
    validated with the rest of the row."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise InvalidSchedule(
            name, f"must be a dict of {', '.join(ENTRY_OPTIONS)}, not {given!r}", field="pg_beat"
        )
    unknown = sorted(set(given) - set(ENTRY_OPTIONS))
    if unknown:
        raise InvalidSchedule(
            name,
            f"unknown key(s) {', '.join(map(repr, unknown))} (one of {', '.join(ENTRY_OPTIONS)})",
            field="pg_beat",
        )
    return dict(given)


def _cron_field(value: Any) -> str:
    """A crontab field as Celery keeps it (text, number, or a collection of numbers) as text."""
    if isinstance(value, (list, tuple, set, frozenset, range)):
        return ",".join(str(v) for v in sorted(value))
    return str(value)


def schema_status(connector: store.connections.Connector, schema: str | None) -> str:
    """The schema's state for beat's banner: at head, ahead and compatible, a mismatch, or
    unknown."""
    try:
        state = check_schema(connector, schema)
    except SchemaMismatch as exc:
        return f"MISMATCH: {exc}"
    except DBAPIError as exc:
        return f"unknown (database unreachable: {store.connections.first_line(exc)})"
    return state.describe()


def check_schema(connector: store.connections.Connector, schema: str | None) -> compat.SchemaState:
    """The schema's state; raise :class:`SchemaMismatch` unless this pg_beat may run against
    it (at its head, or at a later revision that declares it compatible)."""
    engine = connector.engine("check")
    try:
        with engine.connect() as conn:
            return migrate.require_compatible(conn, schema)
    finally:
        engine.dispose()


def start_up(app: Any, settings: Settings, connector: store.connections.Connector) -> None:
    """Check the schema and sync ``beat_schedule``, retrying (with backoff, one line per
    state change) while the database is unreachable or read-only; exit on what waiting
    cannot cure."""
    if settings.sync_config:
        _warn_default_owner(app, settings)
    delay, failing, announced = 0.5, "", False
    where = describe(settings.database_url)
    while True:
        try:
            state = check_schema(connector, settings.schema)
            if state.verdict is compat.Verdict.AHEAD and not announced:
                announced = True
                logger.info(
                    "pg_beat: database schema is at %s, ahead of this pg_beat (%s), and "
                    "declares code from %s on compatible: starting",
                    state.database,
                    state.code,
                    state.oldest_code,
                    extra={"action": "schema_ahead", "replica": settings.replica_name},
                )
            if settings.sync_config:
                sync_config(app, settings, connector)
        except (PgBeatError, DBAPIError) as exc:
            reason = store.connections.first_line(exc)
            if not isinstance(exc, DBAPIError) or _PERMANENT.search(str(exc)):
                logger.critical(
                    "pg_beat: cannot start (database %s): %s",
                    where,
                    reason,
                    extra={"action": "start_failed", "replica": settings.replica_name},
                )
                raise SystemExit(EX_CONFIG) from None
            if reason != failing:
                logger.error(
                    "pg_beat: database %s not usable yet (%s); retrying with backoff",
                    where,
                    reason,
                    extra={"action": "db_wait", "replica": settings.replica_name},
                )
                failing = reason
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        if failing:
            logger.info("pg_beat: database reachable again (%s)", where)
        return


def sync_config(app: Any, settings: Settings, connector: store.connections.Connector) -> None:
    """Write the app's ``beat_schedule`` as its config rows (see ScheduleManager.sync_config)."""
    tz = str(app.conf.timezone or "UTC")
    entries = {
        name: entry_values(name, entry, tz)
        for name, entry in (app.conf.beat_schedule or {}).items()
    }
    owner = config_owner(app, settings)
    manager = ScheduleManager(settings=settings, connector=connector)
    try:
        result = manager.sync_config(entries, owner=owner, prune=settings.config_prune)
    finally:
        manager.close()
    logger.info(
        "pg_beat: beat_schedule of %r synced: %d entries, %d removed",
        owner,
        result.upserted,
        len(result.removed),
        extra={"action": "config_sync", "owner": owner},
    )


#: The owner of the config rows of an app without a main name (``Celery()``): Celery's own
#: default name, which every such app shares.
DEFAULT_OWNER = "celery"


def config_owner(app: Any, settings: Settings) -> str:
    """Whose config rows the app's ``beat_schedule`` writes: ``pg_beat_config_owner``, else
    the app's main name, else :data:`DEFAULT_OWNER`."""
    return settings.config_owner or str(app.main or DEFAULT_OWNER)


def _warn_default_owner(app: Any, settings: Settings) -> None:
    """Once per start: two apps without a main name would own each other's config rows."""
    if settings.config_owner or app.main:
        return
    logger.warning(
        "pg_beat: the Celery app has no main name, so its beat_schedule rows are owned by %r, "
        "as are those of any other app without one in group %r: each rewrites (and with "
        "pg_beat_config_prune removes) the other's; set pg_beat_config_owner (or "
        "PG_BEAT_CONFIG_OWNER) to a name for this app",
        DEFAULT_OWNER,
        settings.group,
        extra={"action": "config_owner_default", "owner": DEFAULT_OWNER},
    )
