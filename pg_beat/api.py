"""The schedule management API: validate first, then write in one transaction.

>>> schedules = ScheduleManager("postgresql://localhost/app")
>>> schedules.create("nightly-report", "reports.nightly", crontab="0 3 * * *",
...                  timezone="Europe/Berlin")
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError, OperationalError

from pg_beat import schedules, store
from pg_beat.config import Settings
from pg_beat.exceptions import (
    DatabaseUnavailable,
    InvalidSchedule,
    ScheduleExists,
    ScheduleLocked,
    ScheduleNotFound,
)
from pg_beat.schedules import ScheduleSpec
from pg_beat.urls import redact_url
from pg_beat.validation import (
    CRON_FIELDS,
    SPEC_FIELDS,
    definition,
    spec_from_row,
    validate_values,
)

logger = logging.getLogger("pg_beat.api")

_KIND_COLUMNS = ("interval_seconds", "solar_event", "latitude", "longitude", "clocked_at")
_EDITABLE = set(store.schedules.SCHEDULE_COLUMNS) - {"name"}
#: The keyword of :meth:`ScheduleManager.create` and ``update`` that sets each column whose
#: own name is not one: errors name what the caller wrote (``crontab``, not ``cron_hour``).
ARGUMENTS = {
    "interval_seconds": "every",
    **dict.fromkeys(CRON_FIELDS, "crontab"),
    "clocked_at": "clocked",
    "solar_event": "solar",
    "latitude": "solar",
    "longitude": "solar",
}


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as stored, with its run state (times are aware, UTC)."""

    name: str
    task: str
    kind: str
    spec: ScheduleSpec
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    enabled: bool
    one_off: bool
    description: str
    misfire_policy: str | None
    catch_up_limit: int | None
    #: None: the scheduler's setting (``pg_beat_overlap_policy``, ``pg_beat_max_runtime`` in
    #: seconds, ``pg_beat_run_once``).
    overlap_policy: str | None
    max_runtime: float | None
    run_once: bool | None
    #: The due time of the tick ``buffer_one`` holds back while the previous run goes on.
    buffered_due_at: datetime | None
    next_run_at: datetime | None
    last_run_at: datetime | None
    total_run_count: int
    last_error: str | None
    source: str
    created_at: datetime
    updated_at: datetime

    @property
    def schedule_text(self) -> str:
        return schedules.describe(self.spec)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (ISO-8601 times); the CLI's ``--json`` output."""
        out: dict[str, Any] = {}
        for item in fields(self):
            if item.name == "spec":
                continue
            value = getattr(self, item.name)
            out[item.name] = value.isoformat() if isinstance(value, datetime) else value
        spec = {k: getattr(self.spec, k) for k in SPEC_FIELDS if k != "name"}
        out["schedule"] = {
            k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in spec.items()
            if v is not None
        }
        out["schedule_text"] = self.schedule_text
        return out


def info_from_row(row: RowMapping) -> ScheduleInfo:
    names = {f.name for f in fields(ScheduleInfo)} - {"spec"}
    return ScheduleInfo(spec=spec_from_row(row), **{k: row[k] for k in names})


def _timezone_applies(name: str, values: Mapping[str, Any], given: Collection[str]) -> None:
    """Refuse a ``timezone`` given for a schedule that is not a crontab: it would do nothing."""
    kind = values.get("kind")
    if "timezone" in given and kind != "crontab":
        raise InvalidSchedule(
            name,
            f"applies to crontab schedules only, not to this {kind} schedule: leave it out",
            field="timezone",
        )


@contextmanager
def _callers_words(given: Collection[str], kind_from: str | None) -> Iterator[None]:
    """Name the bad part of an :class:`InvalidSchedule` as the caller did: ``crontab`` for
    a crontab given as ``crontab=``, ``cron_hour`` for one given as ``cron_hour=``.

    ``given`` are the keywords the caller passed by column name; ``kind_from`` the one of
    every/crontab/clocked/solar used, if any.
    """
    try:
        yield
    except InvalidSchedule as exc:
        field = exc.field
        if field is not None and exc.argument == field and field not in given:
            if field == "kind" and kind_from is not None:
                exc.argument = kind_from
            else:
                exc.argument = ARGUMENTS.get(field, field)
        raise


def _kind_from(**definitions: object) -> str | None:
    return next((k for k, v in definitions.items() if v is not None), None)


@contextmanager
def _locked_as(name: str) -> Iterator[None]:
    """Turn a lock timeout on the schedule's row into :class:`ScheduleLocked`."""
    try:
        yield
    except OperationalError as exc:
        if store.connections.sqlstate(exc) == "55P03":  # lock_not_available
            raise ScheduleLocked(name) from exc
        raise


_DEFAULTS: dict[str, Any] = {
    "cron_minute": "*",
    "cron_hour": "*",
    "cron_day_of_week": "*",
    "cron_day_of_month": "*",
    "cron_month_of_year": "*",
    "timezone": "UTC",
    "args": [],
    "kwargs": {},
    "options": {},
    "enabled": True,
    "one_off": False,
    "description": "",
}


_CONFIG_DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(_KIND_COLUMNS, None),
    "start_time": None,
    "end_time": None,
    "misfire_policy": None,
    "catch_up_limit": None,
    "overlap_policy": None,
    "max_runtime": None,
    "run_once": None,
    **_DEFAULTS,
}


class ScheduleManager:
    """Create, read, update and delete the schedules of one scheduler group."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        group: str = "default",
        schema: str | None = None,
        settings: Settings | None = None,
        connector: store.connections.Connector | None = None,
    ) -> None:
        if settings is None:
            if database_url is None:
                raise TypeError("ScheduleManager needs a database_url or settings")
            settings = Settings(database_url=database_url, group=group, schema=schema)
        self.settings = settings
        self.group = settings.group
        connector = connector or store.connections.Connector(settings)
        self._engine: Engine = connector.engine("api", pool_size=2)
        self._schema_checked = False  # on first use: constructing stays free of I/O

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> ScheduleManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                if not self._schema_checked:
                    self._check_schema(conn)
                yield conn
        except OperationalError as exc:
            if not store.connections.connection_lost(exc):
                raise
            raise DatabaseUnavailable(
                f"database at {redact_url(self.settings.database_url)} is unavailable: {exc.orig}"
            ) from exc

    def _check_schema(self, conn: Connection) -> None:
        """Raise :class:`~pg_beat.exceptions.SchemaMismatch` unless this pg_beat may run
        against the schema, rather than a driver error naming a missing table."""
        from pg_beat import migrate  # Alembic: imported on first use, not with the API

        migrate.require_compatible(conn, self.settings.schema)
        self._schema_checked = True

    # --- reads -----------------------------------------------------------------------------

    def get(self, name: str) -> ScheduleInfo:
        with self._begin() as conn:
            row = store.schedules.get_schedule(conn, self.group, name)
        if row is None:
            raise ScheduleNotFound(name)
        return info_from_row(row)

    def list(self, *, limit: int | None = None) -> list[ScheduleInfo]:
        with self._begin() as conn:
            return [
                info_from_row(r)
                for r in store.schedules.list_schedules(conn, self.group, limit=limit)
            ]

    # --- writes ----------------------------------------------------------------------------

    def create(
        self,
        name: str,
        task: str,
        *,
        every: float | timedelta | str | None = None,
        crontab: str | None = None,
        clocked: datetime | None = None,
        solar: tuple[str, float, float] | None = None,
        **values: Any,
    ) -> ScheduleInfo:
        """Add a schedule; exactly one of ``every`` (seconds), ``crontab``, ``clocked``, ``solar``
        (or the raw ``kind`` columns). Raises :class:`InvalidSchedule` or :class:`ScheduleExists`
        and writes nothing on bad input; ``timezone`` goes with ``crontab`` only.

        While its previous run is unfinished, ``overlap_policy`` says what a tick does:
        ``"allow"`` (sent anyway), ``"skip"`` (recorded skipped) or ``"buffer_one"`` (one held
        back and sent when that run finishes); ``max_runtime`` (seconds > 0) is how long an
        unfinished run blocks at most; ``run_once`` makes the workers run each tick once
        however often it is delivered. None (the default) for each: the scheduler's setting
        (``pg_beat_overlap_policy``, ``pg_beat_max_runtime``, ``pg_beat_run_once``)."""
        kind_from = _kind_from(every=every, crontab=crontab, clocked=clocked, solar=solar)
        with _callers_words({*values, "task"}, kind_from):
            full = {
                **_DEFAULTS,
                **values,
                "task": task,
                **definition(name, every=every, crontab=crontab, clocked=clocked, solar=solar),
            }
            if "kind" not in full:
                raise InvalidSchedule(
                    name,
                    "say when it runs: give one of every=, crontab=, clocked= or solar=",
                    field="kind",
                    argument="",
                )
            validate_values(name, full)
            _timezone_applies(name, full, values)
        try:
            with self._begin() as conn:
                row = store.schedules.insert_schedule(conn, self.group, {"name": name, **full})
        except IntegrityError as exc:
            if store.connections.sqlstate(exc) == "23505":
                raise ScheduleExists(name) from exc
            raise InvalidSchedule(name, f"rejected by the database: {exc.orig}") from exc
        return info_from_row(row)

    def update(
        self,
        name: str,
        *,
        every: float | timedelta | str | None = None,
        crontab: str | None = None,
        clocked: datetime | None = None,
        solar: tuple[str, float, float] | None = None,
        **values: Any,
    ) -> ScheduleInfo:
        """Change some fields; the result is validated as a whole before it is written."""
        kind_from = _kind_from(every=every, crontab=crontab, clocked=clocked, solar=solar)
        with _callers_words(values, kind_from):
            changes = {
                **values,
                **definition(name, every=every, crontab=crontab, clocked=clocked, solar=solar),
            }
        unknown = set(changes) - _EDITABLE
        if unknown:
            raise InvalidSchedule(
                name,
                f"cannot update field(s): {', '.join(sorted(unknown))}",
                field=sorted(unknown)[0],
                argument="",
            )
        with self._begin() as conn:
            with _locked_as(name):
                row = store.schedules.lock_schedule(conn, self.group, name)
            if row is None:
                raise ScheduleNotFound(name)
            current = {k: row[k] for k in store.schedules.SCHEDULE_COLUMNS if k != "name"}
            merged = dict(current)
            if "kind" in changes:
                # A new kind drops the old kind's columns instead of keeping stale ones.
                merged.update(dict.fromkeys(_KIND_COLUMNS, None))
                merged.update(dict.fromkeys(CRON_FIELDS, "*"))
            merged.update(changes)
            with _callers_words(values, kind_from):
                validate_values(name, merged)
                _timezone_applies(name, merged, values)
            if row["source"] == "config":
                logger.warning(
                    "schedule %r comes from the beat_schedule of %r: the next start of that app "
                    "resets this change; to keep it, detach it from that app: "
                    "'pg-beat schedules detach %s' (ScheduleManager.detach in Python)",
                    name,
                    row["config_owner"] or "an app",
                    name,
                    extra={"action": "config_edit", "schedule": name},
                )
            delta = {k: v for k, v in merged.items() if v != current[k]}
            if not delta:
                return info_from_row(row)
            written = store.schedules.update_schedule(conn, self.group, name, delta)
            assert written is not None
        return info_from_row(written)

    def enable(self, name: str) -> ScheduleInfo:
        return self.update(name, enabled=True)

    def disable(self, name: str) -> ScheduleInfo:
        return self.update(name, enabled=False)

    def delete(self, name: str) -> None:
        with self._begin() as conn, _locked_as(name):
            row = store.schedules.lock_schedule(conn, self.group, name)
            if row is None or not store.schedules.delete_schedules(conn, self.group, [name]):
                raise ScheduleNotFound(name)
        if row["source"] == "config":
            logger.warning(
                "schedule %r came from the beat_schedule of %r: the next start of that app "
                "creates it again, unless it is removed from that beat_schedule too",
                name,
                row["config_owner"] or "an app",
                extra={"action": "config_delete", "schedule": name},
            )

    def run_now(self, name: str) -> ScheduleInfo:
        """Send one extra tick of the schedule now; the schedule as it is afterwards.

        An enabled schedule is made due now, and its grid resumes where it was after this
        tick. A disabled schedule sends one tick and stays disabled: its grid is left as it
        was, and run-now again before that tick is claimed still sends one. Either way the
        tick goes out as soon as the leader sees the change (``NOTIFY``), with a task id of
        its own (see :func:`pg_beat.publish.ticks.task_id_for`).
        """
        with self._begin() as conn, _locked_as(name):
            row = store.schedules.run_now(conn, self.group, name)
        if row is None:
            raise ScheduleNotFound(name)
        return info_from_row(row)

    def detach(self, name: str) -> ScheduleInfo:
        """Make a schedule from ``beat_schedule`` an API schedule: no start of the app that
        wrote it changes or removes it again (edit or delete it here instead)."""
        with self._begin() as conn, _locked_as(name):
            row = store.schedules.detach_schedule(conn, self.group, name)
        if row is None:
            raise ScheduleNotFound(name)
        return info_from_row(row)

    def sync_config(
        self, entries: Mapping[str, Mapping[str, Any]], *, owner: str, prune: bool = False
    ) -> SyncResult:
        """Make ``owner``'s config rows match ``entries`` (name -> column values).

        Rows made through the API or SQL, and another owner's, are never touched: an entry of
        the same name is skipped with a warning. ``owner``'s rows whose entry is gone are
        removed only with ``prune`` (each logged by name); otherwise they are kept and named
        in one warning, since another version of the same app (a rolling deploy) may still
        have them.
        """
        checked = []
        for name, values in entries.items():
            # Every column is written, so an entry that changes kind leaves nothing stale.
            full = {**_CONFIG_DEFAULTS, **values}
            validate_values(name, full)
            checked.append((name, full))
        with self._begin() as conn:
            foreign = store.schedules.foreign_names_among(conn, self.group, entries, owner)
            for name, full in checked:
                if name not in foreign:
                    store.schedules.upsert_config_schedule(
                        conn, self.group, owner, {"name": name, **full}
                    )
            gone = [
                n for n in store.schedules.config_names(conn, self.group, owner) if n not in entries
            ]
            removed = (
                store.schedules.delete_config_schedules(conn, self.group, owner, gone)
                if prune
                else []
            )
        self._report_sync(owner, foreign, removed, [] if prune else gone)
        return SyncResult(len(checked) - len(foreign), removed, [] if prune else gone, foreign)

    def _report_sync(
        self, owner: str, foreign: Mapping[str, str], removed: Sequence[str], kept: Sequence[str]
    ) -> None:
        for name, other in sorted(foreign.items()):
            whose = "made through the API or SQL" if other == "api" else f"from {other!r}"
            logger.warning(
                "beat_schedule entry %r of %r skipped: a schedule of that name exists, %s, "
                "and is not %r's to change; rename one of them",
                name,
                owner,
                whose,
                owner,
                extra={"action": "config_conflict", "schedule": name},
            )
        for name in removed:
            logger.info(
                "schedule %r removed: no longer in the beat_schedule of %r",
                name,
                owner,
                extra={"action": "config_removed", "schedule": name},
            )
        if kept:
            logger.warning(
                "schedule(s) %s of %r are no longer in its beat_schedule and were kept (another "
                "version of the app may use them): remove them with 'pg-beat schedules remove', "
                "or set pg_beat_config_prune = True",
                ", ".join(repr(n) for n in kept),
                owner,
                extra={"action": "config_stale", "owner": owner},
            )


@dataclass(frozen=True)
class SyncResult:
    """What a ``beat_schedule`` sync did."""

    upserted: int
    removed: Sequence[str]  # names pruned (only with prune=True)
    kept: Sequence[str]  # names no longer in beat_schedule, kept (prune=False)
    conflicts: Mapping[str, str]  # name -> 'api' or the other owner
