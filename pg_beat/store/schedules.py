"""Statements that manage schedules: read, insert, update, delete, and the beat_schedule sync."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, RowMapping

SCHEDULE_COLUMNS = (
    "name",
    "task",
    "kind",
    "interval_seconds",
    "cron_minute",
    "cron_hour",
    "cron_day_of_week",
    "cron_day_of_month",
    "cron_month_of_year",
    "timezone",
    "solar_event",
    "latitude",
    "longitude",
    "clocked_at",
    "args",
    "kwargs",
    "options",
    "enabled",
    "one_off",
    "start_time",
    "end_time",
    "description",
    "misfire_policy",
    "catch_up_limit",
)

_SELECT_SCHEDULE = "SELECT * FROM pg_beat_schedules WHERE group_name = :group"


def get_schedule(conn: Connection, group: str, name: str) -> RowMapping | None:
    return (
        conn.execute(text(_SELECT_SCHEDULE + " AND name = :name"), {"group": group, "name": name})
        .mappings()
        .first()
    )


def lock_schedule(conn: Connection, group: str, name: str) -> RowMapping | None:
    """The row, locked for an edit (waits at most ``lock_timeout`` for an admin's lock)."""
    return (
        conn.execute(
            text(_SELECT_SCHEDULE + " AND name = :name FOR UPDATE"), {"group": group, "name": name}
        )
        .mappings()
        .first()
    )


def list_schedules(
    conn: Connection, group: str, *, source: str | None = None, limit: int | None = None
) -> Sequence[RowMapping]:
    sql = _SELECT_SCHEDULE + (" AND source = :source" if source else "")
    sql += " ORDER BY next_run_at NULLS LAST, name"
    if limit is not None:
        sql += " LIMIT :limit"
    return (
        conn.execute(text(sql), {"group": group, "source": source, "limit": limit}).mappings().all()
    )


def api_names_among(conn: Connection, group: str, names: Iterable[str]) -> set[str]:
    """Which of ``names`` belong to schedules made through the API or SQL."""
    rows = conn.execute(
        text(
            "SELECT name FROM pg_beat_schedules "
            "WHERE group_name = :g AND source = 'api' AND name = ANY(:names)"
        ),
        {"g": group, "names": list(names)},
    )
    return {row[0] for row in rows}


def delete_config_schedules_except(conn: Connection, group: str, keep: Iterable[str]) -> int:
    """Remove ``source='config'`` rows whose entry left ``beat_schedule`` (partial index)."""
    result = conn.execute(
        text(
            "DELETE FROM pg_beat_schedules WHERE group_name = :g AND source = 'config' "
            "AND NOT (name = ANY(:keep))"
        ),
        {"g": group, "keep": list(keep)},
    )
    return int(result.rowcount)


def insert_schedule(conn: Connection, group: str, values: Mapping[str, Any]) -> RowMapping:
    columns = ["group_name", *values.keys()]
    sql = (
        f"INSERT INTO pg_beat_schedules ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) RETURNING *"
    )
    return (
        conn.execute(text(sql).bindparams(*_json_params(values)), {"group_name": group, **values})
        .mappings()
        .one()
    )


def update_schedule(
    conn: Connection, group: str, name: str, values: Mapping[str, Any]
) -> RowMapping | None:
    assigns = ", ".join(f"{c} = :{c}" for c in values)
    sql = (
        f"UPDATE pg_beat_schedules SET {assigns} "
        "WHERE group_name = :_group AND name = :_name RETURNING *"
    )
    return (
        conn.execute(
            text(sql).bindparams(*_json_params(values)), {"_group": group, "_name": name, **values}
        )
        .mappings()
        .first()
    )


def upsert_config_schedule(conn: Connection, group: str, values: Mapping[str, Any]) -> None:
    """Insert or refresh a ``beat_schedule`` entry, keeping its run state (source 'config').

    A row of the same name made through the API or SQL is left alone: config never takes it.
    """
    columns = ["group_name", "source", *values.keys()]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in values if c != "name")
    # Only write when something differs, so an unchanged config re-plans nothing.
    differs = " OR ".join(
        f"pg_beat_schedules.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in values if c != "name"
    )
    sql = (
        f"INSERT INTO pg_beat_schedules ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT (group_name, name) DO UPDATE SET {updates} "
        f"WHERE pg_beat_schedules.source = 'config' AND ({differs})"
    )
    conn.execute(
        text(sql).bindparams(*_json_params(values)),
        {"group_name": group, "source": "config", **values},
    )


def delete_schedules(conn: Connection, group: str, names: Iterable[str]) -> int:
    result = conn.execute(
        text("DELETE FROM pg_beat_schedules WHERE group_name = :g AND name = ANY(:names)"),
        {"g": group, "names": list(names)},
    )
    return int(result.rowcount)


def _json_params(values: Mapping[str, Any]) -> list[Any]:
    from sqlalchemy import bindparam
    from sqlalchemy.dialects.postgresql import JSONB

    return [bindparam(c, type_=JSONB) for c in ("args", "kwargs", "options") if c in values]


def run_now(conn: Connection, group: str, name: str) -> bool:
    result = conn.execute(
        text(
            "UPDATE pg_beat_schedules SET next_run_at = clock_timestamp(), enabled = true "
            "WHERE group_name = :g AND name = :n"
        ),
        {"g": group, "n": name},
    )
    return bool(result.rowcount)
