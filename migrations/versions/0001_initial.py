"""Initial pg_beat schema: schedules, runs, leases, leader terms, replicas, change triggers.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)

# Definition columns: a change to any of them (by the API or by plain SQL) re-plans the schedule.
_DEFINITION = (
    "kind, interval_seconds, cron_minute, cron_hour, cron_day_of_week, cron_day_of_month,"
    " cron_month_of_year, timezone, solar_event, latitude, longitude, clocked_at,"
    " start_time, end_time"
)


def _row(prefix: str) -> str:
    return ", ".join(f"{prefix}.{column.strip()}" for column in _DEFINITION.split(","))


SCHEDULE_CHANGED = f"""
CREATE FUNCTION pg_beat_schedule_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The scheduler's own bookkeeping (next_run_at, run counts) must not re-plan anything.
    IF coalesce(current_setting('pg_beat.dispatch', true), '') = 'on' THEN
        RETURN NEW;
    END IF;
    NEW.updated_at := now();
    -- A new definition is planned afresh by the scheduler, unless the writer set next_run_at.
    IF ROW({_row("NEW")}) IS DISTINCT FROM ROW({_row("OLD")})
       AND NEW.next_run_at IS NOT DISTINCT FROM OLD.next_run_at THEN
        NEW.next_run_at := NULL;
        NEW.last_error := NULL;
    ELSIF NEW.last_error IS NOT NULL AND OLD.last_error IS NOT NULL
       AND NEW.last_error = OLD.last_error
       AND ROW(NEW.task, NEW.args, NEW.kwargs, NEW.options)
           IS DISTINCT FROM ROW(OLD.task, OLD.args, OLD.kwargs, OLD.options) THEN
        -- A row parked for bad data was edited: give it another chance.
        NEW.next_run_at := NULL;
        NEW.last_error := NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER pg_beat_schedule_changed BEFORE UPDATE ON pg_beat_schedules
    FOR EACH ROW EXECUTE FUNCTION pg_beat_schedule_changed();

CREATE FUNCTION pg_beat_notify_schedules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('pg_beat.dispatch', true), '') <> 'on' THEN
        PERFORM pg_notify('pg_beat_schedules', TG_OP);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER pg_beat_notify_schedules AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON pg_beat_schedules FOR EACH STATEMENT EXECUTE FUNCTION pg_beat_notify_schedules();
"""


def upgrade() -> None:
    op.create_table(
        "pg_beat_schedules",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("group_name", sa.Text(), server_default="default", nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("interval_seconds", sa.Double(), nullable=True),
        sa.Column("cron_minute", sa.Text(), server_default="*", nullable=False),
        sa.Column("cron_hour", sa.Text(), server_default="*", nullable=False),
        sa.Column("cron_day_of_week", sa.Text(), server_default="*", nullable=False),
        sa.Column("cron_day_of_month", sa.Text(), server_default="*", nullable=False),
        sa.Column("cron_month_of_year", sa.Text(), server_default="*", nullable=False),
        sa.Column("timezone", sa.Text(), server_default="UTC", nullable=False),
        sa.Column("solar_event", sa.Text(), nullable=True),
        sa.Column("latitude", sa.Double(), nullable=True),
        sa.Column("longitude", sa.Double(), nullable=True),
        sa.Column("clocked_at", TZ, nullable=True),
        sa.Column("args", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("kwargs", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("options", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("one_off", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("start_time", TZ, nullable=True),
        sa.Column("end_time", TZ, nullable=True),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("misfire_policy", sa.Text(), nullable=True),
        sa.Column("catch_up_limit", sa.Integer(), nullable=True),
        sa.Column("next_run_at", TZ, nullable=True),
        sa.Column("last_due_at", TZ, nullable=True),
        sa.Column("last_run_at", TZ, nullable=True),
        sa.Column("total_run_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), server_default="api", nullable=False),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("group_name", "name", name="uq_pg_beat_schedules_group_name"),
        sa.CheckConstraint(
            "kind IN ('interval', 'crontab', 'solar', 'clocked')",
            name="ck_pg_beat_schedules_kind",
        ),
        sa.CheckConstraint(
            "kind <> 'interval' OR (interval_seconds IS NOT NULL AND interval_seconds > 0)",
            name="ck_pg_beat_schedules_interval_positive",
        ),
        sa.CheckConstraint(
            "kind <> 'clocked' OR clocked_at IS NOT NULL", name="ck_pg_beat_schedules_clocked_at"
        ),
        sa.CheckConstraint(
            "kind <> 'solar' OR (solar_event IS NOT NULL AND latitude BETWEEN -90 AND 90"
            " AND longitude BETWEEN -180 AND 180)",
            name="ck_pg_beat_schedules_solar",
        ),
        sa.CheckConstraint("jsonb_typeof(args) = 'array'", name="ck_pg_beat_schedules_args_array"),
        sa.CheckConstraint(
            "jsonb_typeof(kwargs) = 'object'", name="ck_pg_beat_schedules_kwargs_object"
        ),
        sa.CheckConstraint(
            "jsonb_typeof(options) = 'object'", name="ck_pg_beat_schedules_options_object"
        ),
        sa.CheckConstraint(
            "misfire_policy IS NULL OR misfire_policy IN ('fire_once', 'skip', 'catch_up')",
            name="ck_pg_beat_schedules_misfire_policy",
        ),
        sa.CheckConstraint(
            "catch_up_limit IS NULL OR catch_up_limit > 0",
            name="ck_pg_beat_schedules_catch_up_limit",
        ),
        sa.CheckConstraint("source IN ('config', 'api')", name="ck_pg_beat_schedules_source"),
        sa.CheckConstraint(
            "start_time IS NULL OR end_time IS NULL OR start_time < end_time",
            name="ck_pg_beat_schedules_window",
        ),
        sa.CheckConstraint(
            "length(name) BETWEEN 1 AND 200", name="ck_pg_beat_schedules_name_length"
        ),
        sa.CheckConstraint("length(task) > 0", name="ck_pg_beat_schedules_task_nonempty"),
    )
    op.create_index(
        "ix_pg_beat_schedules_due",
        "pg_beat_schedules",
        ["group_name", "next_run_at"],
        postgresql_where=sa.text("enabled AND next_run_at IS NOT NULL"),
    )
    op.create_index(
        "ix_pg_beat_schedules_config",
        "pg_beat_schedules",
        ["group_name", "name"],
        postgresql_where=sa.text("source = 'config'"),
    )
    op.create_index(
        "ix_pg_beat_schedules_unplanned",
        "pg_beat_schedules",
        ["group_name"],
        postgresql_where=sa.text("enabled AND next_run_at IS NULL AND last_error IS NULL"),
    )
    op.create_table(
        "pg_beat_runs",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("group_name", sa.Text(), nullable=False),
        sa.Column(
            "schedule_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "pg_beat_schedules.id",
                ondelete="CASCADE",
                name="fk_pg_beat_runs_schedule_id_pg_beat_schedules",
            ),
            nullable=False,
        ),
        sa.Column("schedule_name", sa.Text(), nullable=False),
        sa.Column("due_at", TZ, nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("replica", sa.Text(), nullable=False),
        sa.Column("claimed_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("sent_at", TZ, nullable=True),
        sa.Column("status", sa.Text(), server_default="claimed", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("schedule_id", "due_at", name="uq_pg_beat_runs_schedule_id"),
        sa.CheckConstraint(
            "status IN ('claimed', 'sent', 'skipped', 'failed')", name="ck_pg_beat_runs_status"
        ),
    )
    op.create_index(
        "ix_pg_beat_runs_unsent",
        "pg_beat_runs",
        ["group_name", "epoch"],
        postgresql_where=sa.text("status = 'claimed'"),
    )
    op.create_index("ix_pg_beat_runs_claimed_at", "pg_beat_runs", ["claimed_at"])
    op.create_table(
        "pg_beat_leases",
        sa.Column("group_name", sa.Text(), primary_key=True),
        sa.Column("epoch", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("holder", sa.Text(), nullable=True),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("backend_pid", sa.Integer(), nullable=True),
        sa.Column("acquired_at", TZ, nullable=True),
        sa.Column("heartbeat_at", TZ, nullable=True),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("progress_at", TZ, nullable=True),
    )
    op.create_table(
        "pg_beat_leader_terms",
        sa.Column("group_name", sa.Text(), primary_key=True),
        sa.Column("epoch", sa.BigInteger(), primary_key=True),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("acquired_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("previous_holder", sa.Text(), nullable=True),
        sa.Column("previous_expires_at", TZ, nullable=True),
        sa.Column("ended_at", TZ, nullable=True),
    )
    op.create_table(
        "pg_beat_replicas",
        sa.Column("group_name", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("backend_pid", sa.Integer(), nullable=True),
        sa.Column("started_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("last_seen_at", TZ, server_default=sa.func.now(), nullable=False),
    )
    op.execute(SCHEDULE_CHANGED)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS pg_beat_notify_schedules ON pg_beat_schedules")
    op.execute("DROP TRIGGER IF EXISTS pg_beat_schedule_changed ON pg_beat_schedules")
    op.execute("DROP FUNCTION IF EXISTS pg_beat_notify_schedules()")
    op.execute("DROP FUNCTION IF EXISTS pg_beat_schedule_changed()")
    op.drop_table("pg_beat_replicas")
    op.drop_table("pg_beat_leader_terms")
    op.drop_table("pg_beat_leases")
    op.drop_index("ix_pg_beat_runs_claimed_at", table_name="pg_beat_runs")
    op.drop_index("ix_pg_beat_runs_unsent", table_name="pg_beat_runs")
    op.drop_table("pg_beat_runs")
    op.drop_index("ix_pg_beat_schedules_unplanned", table_name="pg_beat_schedules")
    op.drop_index("ix_pg_beat_schedules_config", table_name="pg_beat_schedules")
    op.drop_index("ix_pg_beat_schedules_due", table_name="pg_beat_schedules")
    op.drop_table("pg_beat_schedules")
