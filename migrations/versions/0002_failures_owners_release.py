"""Failed and expired runs, config owners, run-now that resumes the grid, released leases.

- ``pg_beat_runs.status`` may be ``expired`` (a tick past its ``expires`` is recorded, not sent);
- ``pg_beat_schedules.config_owner``: which app's ``beat_schedule`` wrote a config row, so a
  start never prunes another app's entries;
- ``pg_beat_schedules.resume_at``: where the grid resumes after a tick made due by hand (run
  now, or ``UPDATE ... SET next_run_at = now()``), set by the trigger;
- ``pg_beat_leases.released_at``: a lease handed over on purpose, told apart from one that
  expired (the failover reason in ``pg-beat status``);
- ``ix_pg_beat_schedules_failing``: the schedules whose last tick failed or whose row is invalid.

Online, under running replicas: columns are added without a default (no table rewrite), the
check constraint is added ``NOT VALID`` and validated with a SHARE UPDATE EXCLUSIVE lock only,
the index is built ``CONCURRENTLY`` until it is valid. Every statement runs in a transaction of
its own and waits at most 0.5 s for its lock before trying again, so a replica is never queued
behind the migration for longer, and no lock is held beyond one statement (the steps are
:mod:`pg_beat.ddl`'s). Every statement can run again: an interrupted migration is finished by
running it again.

Revision ID: 0002_failures_owners_release
Revises: 0001_initial
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa

from pg_beat import ddl

revision = "0002_failures_owners_release"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
STATUSES = ("claimed", "sent", "skipped", "failed")
OLD_CHECK = "ck_pg_beat_runs_ck_pg_beat_runs_status"
DEFINITION = (
    "kind, interval_seconds, cron_minute, cron_hour, cron_day_of_week, cron_day_of_month,"
    " cron_month_of_year, timezone, solar_event, latitude, longitude, clocked_at,"
    " start_time, end_time"
)


def _row(prefix: str) -> str:
    return ", ".join(f"{prefix}.{column.strip()}" for column in DEFINITION.split(","))


def _trigger_function(resume: bool) -> str:
    """The BEFORE UPDATE trigger function; ``resume`` adds the run-now and resume_at rules."""
    clear_resume = "        NEW.resume_at := NULL;\n" if resume else ""
    run_now = (
        f"""    ELSIF NEW.next_run_at < OLD.next_run_at
       AND ROW({_row("NEW")}) IS NOT DISTINCT FROM ROW({_row("OLD")}) THEN
        -- Made due earlier by hand (run now): the grid resumes at the planned due time.
        NEW.resume_at := coalesce(OLD.resume_at, OLD.next_run_at);
"""
        if resume
        else ""
    )
    return f"""
CREATE OR REPLACE FUNCTION pg_beat_schedule_changed() RETURNS trigger LANGUAGE plpgsql AS $$
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
{clear_resume}    ELSIF NEW.last_error IS NOT NULL AND OLD.last_error IS NOT NULL
       AND NEW.last_error = OLD.last_error
       AND ROW(NEW.task, NEW.args, NEW.kwargs, NEW.options)
           IS DISTINCT FROM ROW(OLD.task, OLD.args, OLD.kwargs, OLD.options) THEN
        -- A row parked for bad data was edited: give it another chance.
        NEW.next_run_at := NULL;
        NEW.last_error := NULL;
{run_now}    END IF;
    RETURN NEW;
END $$;
"""


def _status_check(statuses: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")"


def upgrade() -> None:
    # Tables in the order a claim transaction locks them (lease, schedules, runs), each
    # statement on its own and safe to run again if the migration is interrupted.
    ddl.execute("ALTER TABLE pg_beat_leases ADD COLUMN IF NOT EXISTS released_at timestamptz")
    ddl.execute("ALTER TABLE pg_beat_schedules ADD COLUMN IF NOT EXISTS config_owner text")
    ddl.execute("ALTER TABLE pg_beat_schedules ADD COLUMN IF NOT EXISTS resume_at timestamptz")
    ddl.execute(_trigger_function(resume=True))
    # A check constraint on the run log is added NOT VALID (no scan under the lock), then
    # validated, which takes only a SHARE UPDATE EXCLUSIVE lock: inserts go on meanwhile.
    # 0001 named it ck_pg_beat_runs_ck_pg_beat_runs_status (Alembic applied the models' naming
    # convention to the name once more); the new one has the name the models give it.
    ddl.execute(
        f"ALTER TABLE pg_beat_runs DROP CONSTRAINT IF EXISTS {OLD_CHECK}, "
        "DROP CONSTRAINT IF EXISTS ck_pg_beat_runs_status, "
        "ADD CONSTRAINT ck_pg_beat_runs_status "
        f"CHECK ({_status_check((*STATUSES, 'expired'))}) NOT VALID"
    )
    ddl.execute("ALTER TABLE pg_beat_runs VALIDATE CONSTRAINT ck_pg_beat_runs_status")
    # Built until valid: an invalid index, left by an interrupted run or by a build that timed
    # out waiting for older transactions, is dropped and built again.
    ddl.create_index(
        "ix_pg_beat_schedules_failing",
        "ON pg_beat_schedules (group_name) WHERE last_error IS NOT NULL",
    )


def downgrade() -> None:
    ddl.drop_index("ix_pg_beat_schedules_failing")
    ddl.execute("UPDATE pg_beat_runs SET status = 'skipped' WHERE status = 'expired'")
    ddl.execute(
        "ALTER TABLE pg_beat_runs DROP CONSTRAINT IF EXISTS ck_pg_beat_runs_status, "
        f"ADD CONSTRAINT {OLD_CHECK} CHECK ({_status_check(STATUSES)})"
    )
    ddl.execute(_trigger_function(resume=False))
    ddl.execute("ALTER TABLE pg_beat_leases DROP COLUMN IF EXISTS released_at")
    ddl.execute("ALTER TABLE pg_beat_schedules DROP COLUMN IF EXISTS resume_at")
    ddl.execute("ALTER TABLE pg_beat_schedules DROP COLUMN IF EXISTS config_owner")
