"""Schema compatibility records; each replica's broker health; run-now of a disabled schedule.

- ``pg_beat_schema_compat``: per applied revision (from this one on), the oldest pg_beat code
  revision that may run against it. Every revision from this one on writes its row in its
  upgrade (``ddl.record_compat``) and deletes it in its downgrade (``ddl.forget_compat``). A
  replica that finds the database at a revision it does not know (a later release migrated
  it) runs if that row names a revision of its own chain (:mod:`pg_beat.compat`), so deploys
  can roll. Every release from this one on reads ``revision`` and ``oldest_code_revision``:
  never rename or drop them.
- ``pg_beat_replicas.broker_failing_since`` (NULL: the broker works, or is unknown),
  ``broker_error`` (cut short), ``broker_checked_at`` and ``ticks_waiting``: what a replica
  last saw of its broker, so that a standby can tell it would do better than the leader.
- ``pg_beat_schedules.run_once_at`` (NULL: none asked for): one tick asked for by hand (run now
  of a disabled schedule), due at that time; the claim that records it clears it, and the row
  keeps ``enabled`` and its grid (``next_run_at``) as they were. Found through
  ``ix_pg_beat_schedules_run_once``, partial on the rows that have one (the due index covers
  enabled rows only).

Expand only, online: a new table, nullable columns without a default (no table rewrite), an
index built ``CONCURRENTLY`` until it is valid, each statement in a transaction of its own with
a short lock timeout (:mod:`pg_beat.ddl`). Code at 0002 runs against this schema unchanged (it
names its columns and reads none of the new ones), which the record says; a run-now of a
disabled schedule asked for through this release waits until a replica of this release leads
(0002 never reads ``run_once_at``). Releases at 0002 still demand their own head when they
start, as they do not read the record.

Revision ID: 0003_schema_compat_broker_health
Revises: 0002_failures_owners_release
Create Date: 2026-12-08
"""

from __future__ import annotations

from pg_beat import ddl

revision = "0003_schema_compat_broker_health"
down_revision = "0002_failures_owners_release"
branch_labels = None
depends_on = None

#: The oldest pg_beat code revision that may run against this schema.
OLDEST_CODE_REVISION = "0002_failures_owners_release"

BROKER_COLUMNS = (
    ("broker_failing_since", "timestamptz"),
    ("broker_error", "text"),
    ("broker_checked_at", "timestamptz"),
    ("ticks_waiting", "integer"),
)


def upgrade() -> None:
    ddl.execute(
        "CREATE TABLE IF NOT EXISTS pg_beat_schema_compat ("
        "revision text PRIMARY KEY, "
        "oldest_code_revision text NOT NULL, "
        "applied_at timestamptz NOT NULL DEFAULT now())"
    )
    # One statement, one short ACCESS EXCLUSIVE lock on a small table the replicas heartbeat in.
    ddl.execute(
        "ALTER TABLE pg_beat_replicas "
        + ", ".join(f"ADD COLUMN IF NOT EXISTS {name} {kind}" for name, kind in BROKER_COLUMNS)
    )
    ddl.execute("ALTER TABLE pg_beat_schedules ADD COLUMN IF NOT EXISTS run_once_at timestamptz")
    ddl.create_index(
        "ix_pg_beat_schedules_run_once",
        "ON pg_beat_schedules (group_name, run_once_at) WHERE run_once_at IS NOT NULL",
    )
    ddl.record_compat(revision, OLDEST_CODE_REVISION)


def downgrade() -> None:
    ddl.forget_compat(revision)
    ddl.drop_index("ix_pg_beat_schedules_run_once")
    ddl.execute("ALTER TABLE pg_beat_schedules DROP COLUMN IF EXISTS run_once_at")
    ddl.execute(
        "ALTER TABLE pg_beat_replicas "
        + ", ".join(f"DROP COLUMN IF EXISTS {name}" for name, _ in BROKER_COLUMNS)
    )
    ddl.execute("DROP TABLE IF EXISTS pg_beat_schema_compat")
