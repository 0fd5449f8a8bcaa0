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
    "overlap_policy",
    "max_runtime",
    "run_once",
)

#: What a schedule row is read as: named columns, never ``*``, so that a column a later
#: migration adds does not change the result type of a statement a running replica has
#: prepared ("cached plan must not change result type").
ROW_COLUMNS = (
    "id",
    *SCHEDULE_COLUMNS,
    "next_run_at",
    "last_due_at",
    "last_run_at",
    "total_run_count",
    "last_error",
    "source",
    "config_owner",
    "resume_at",
    "run_once_at",
    "buffered_due_at",
    "created_at",
    "updated_at",
)
ROW = ", ".join(ROW_COLUMNS)
_SELECT_SCHEDULE = f"SELECT {ROW} FROM pg_beat_schedules WHERE group_name = :group"


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


def foreign_names_among(
    conn: Connection, group: str, names: Iterable[str], owner: str
) -> dict[str, str]:
    """Which of ``names`` belong to someone other than ``owner``'s ``beat_schedule``: made
    through the API or SQL (``'api'``), or another app's config (its owner's name)."""
    rows = conn.execute(
        text(
            "SELECT name, CASE WHEN source = 'api' THEN 'api' ELSE config_owner END "
            "FROM pg_beat_schedules WHERE group_name = :g AND name = ANY(:names) "
            "AND (source = 'api' OR config_owner IS DISTINCT FROM :owner) "
            "AND NOT (source = 'config' AND config_owner IS NULL)"
        ),
        {"g": group, "names": list(names), "owner": owner},
    )
    return {row[0]: row[1] for row in rows}


def config_names(conn: Connection, group: str, owner: str) -> list[str]:
    """Names of the config rows ``owner``'s ``beat_schedule`` wrote (partial index)."""
    rows = conn.execute(
        text(
            "SELECT name FROM pg_beat_schedules "
            "WHERE group_name = :g AND source = 'config' AND config_owner = :owner ORDER BY name"
        ),
        {"g": group, "owner": owner},
    )
    return [row[0] for row in rows]


def delete_config_schedules(
    conn: Connection, group: str, owner: str, names: Iterable[str]
) -> list[str]:
    """Remove ``owner``'s config rows of these names; the names removed."""
    rows = conn.execute(
        text(
            "DELETE FROM pg_beat_schedules WHERE group_name = :g AND source = 'config' "
            "AND config_owner = :owner AND name = ANY(:names) RETURNING name"
        ),
        {"g": group, "owner": owner, "names": list(names)},
    )
    return sorted(row[0] for row in rows)


def detach_schedule(conn: Connection, group: str, name: str) -> RowMapping | None:
    """Make a config row the API's: no ``beat_schedule`` sync touches it again."""
    return (
        conn.execute(
            text(
                "UPDATE pg_beat_schedules SET source = 'api', config_owner = NULL "
                f"WHERE group_name = :g AND name = :n RETURNING {ROW}"
            ),
            {"g": group, "n": name},
        )
        .mappings()
        .first()
    )


def insert_schedule(conn: Connection, group: str, values: Mapping[str, Any]) -> RowMapping:
    columns = ["group_name", *values.keys()]
    sql = (
        f"INSERT INTO pg_beat_schedules ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) RETURNING {ROW}"
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
        f"WHERE group_name = :_group AND name = :_name RETURNING {ROW}"
    )
    return (
        conn.execute(
            text(sql).bindparams(*_json_params(values)), {"_group": group, "_name": name, **values}
        )
        .mappings()
        .first()
    )


def upsert_config_schedule(
    conn: Connection, group: str, owner: str, values: Mapping[str, Any]
) -> None:
    """Insert or refresh ``owner``'s ``beat_schedule`` entry, keeping its run state.

    Rows of the same name made through the API or SQL, or by another owner, are left alone
    (the caller skips them); a config row of no owner (written before owners were recorded)
    becomes ``owner``'s.
    """
    columns = ["group_name", "source", "config_owner", *values.keys()]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in ["config_owner", *values] if c != "name")
    # Only write when something differs, so an unchanged config re-plans nothing.
    differs = " OR ".join(
        f"pg_beat_schedules.{c} IS DISTINCT FROM EXCLUDED.{c}"
        for c in ["config_owner", *values]
        if c != "name"
    )
    sql = (
        f"INSERT INTO pg_beat_schedules ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT (group_name, name) DO UPDATE SET {updates} "
        "WHERE pg_beat_schedules.source = 'config' "
        "AND (pg_beat_schedules.config_owner IS NULL OR pg_beat_schedules.config_owner = "
        f"EXCLUDED.config_owner) AND ({differs})"
    )
    conn.execute(
        text(sql).bindparams(*_json_params(values)),
        {"group_name": group, "source": "config", "config_owner": owner, **values},
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


# Enabled: due now, on its grid's path (the trigger keeps the planned due time in resume_at, so
# the grid resumes after this tick); a tick asked for while it was disabled and not yet taken
# is replaced by this one. Disabled: one tick due now (or at the one already asked for, if
# earlier), which the claim records and clears; enabled and next_run_at stay as they are. One
# statement, so the branch follows the row as it is when the update locks it.
RUN_NOW = text(
    """
    UPDATE pg_beat_schedules SET
        next_run_at = CASE WHEN enabled THEN clock_timestamp() ELSE next_run_at END,
        run_once_at = CASE WHEN enabled THEN NULL
                           ELSE least(run_once_at, clock_timestamp()) END
    WHERE group_name = :g AND name = :n
    RETURNING """
    + ROW
)


def run_now(conn: Connection, group: str, name: str) -> RowMapping | None:
    """Make the schedule due now (see RUN_NOW); the row as written, None when there is none."""
    return conn.execute(RUN_NOW, {"g": group, "n": name}).mappings().first()
