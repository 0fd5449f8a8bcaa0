"""SQLAlchemy models of pg_beat's tables. The schema itself is created only by Alembic."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Schedule(Base):
    """One periodic task; ``next_run_at`` is the only thing the due query reads."""

    __tablename__ = "pg_beat_schedules"
    __table_args__ = (
        UniqueConstraint("group_name", "name"),
        CheckConstraint("kind IN ('interval', 'crontab', 'solar', 'clocked')", name="kind"),
        CheckConstraint(
            "kind <> 'interval' OR (interval_seconds IS NOT NULL AND interval_seconds > 0)",
            name="interval_positive",
        ),
        CheckConstraint("kind <> 'clocked' OR clocked_at IS NOT NULL", name="clocked_at"),
        CheckConstraint(
            "kind <> 'solar' OR (solar_event IS NOT NULL AND latitude BETWEEN -90 AND 90"
            " AND longitude BETWEEN -180 AND 180)",
            name="solar",
        ),
        CheckConstraint("jsonb_typeof(args) = 'array'", name="args_array"),
        CheckConstraint("jsonb_typeof(kwargs) = 'object'", name="kwargs_object"),
        CheckConstraint("jsonb_typeof(options) = 'object'", name="options_object"),
        CheckConstraint(
            "misfire_policy IS NULL OR misfire_policy IN ('fire_once', 'skip', 'catch_up')",
            name="misfire_policy",
        ),
        CheckConstraint("catch_up_limit IS NULL OR catch_up_limit > 0", name="catch_up_limit"),
        CheckConstraint("source IN ('config', 'api')", name="source"),
        CheckConstraint(
            "start_time IS NULL OR end_time IS NULL OR start_time < end_time", name="window"
        ),
        CheckConstraint("length(name) BETWEEN 1 AND 200", name="name_length"),
        CheckConstraint("length(task) > 0", name="task_nonempty"),
        Index(
            "ix_pg_beat_schedules_due",
            "group_name",
            "next_run_at",
            postgresql_where=text("enabled AND next_run_at IS NOT NULL"),
        ),
        Index(
            "ix_pg_beat_schedules_config",
            "group_name",
            "name",
            postgresql_where=text("source = 'config'"),
        ),
        Index(
            "ix_pg_beat_schedules_unplanned",
            "group_name",
            postgresql_where=text("enabled AND next_run_at IS NULL AND last_error IS NULL"),
        ),
        Index(
            "ix_pg_beat_schedules_failing",
            "group_name",
            postgresql_where=text("last_error IS NOT NULL"),
        ),
        Index(
            "ix_pg_beat_schedules_run_once",
            "group_name",
            "run_once_at",
            postgresql_where=text("run_once_at IS NOT NULL"),
        ),
        CheckConstraint(
            "overlap_policy IS NULL OR overlap_policy IN ('allow', 'skip', 'buffer_one')",
            name="overlap_policy",
        ),
        CheckConstraint("max_runtime IS NULL OR max_runtime > 0", name="max_runtime"),
        Index(
            "ix_pg_beat_schedules_buffered",
            "group_name",
            "buffered_due_at",
            postgresql_where=text("buffered_due_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    group_name: Mapped[str] = mapped_column(Text, server_default="default")
    name: Mapped[str] = mapped_column(Text)
    task: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    interval_seconds: Mapped[float | None] = mapped_column(Double)
    cron_minute: Mapped[str] = mapped_column(Text, server_default="*")
    cron_hour: Mapped[str] = mapped_column(Text, server_default="*")
    cron_day_of_week: Mapped[str] = mapped_column(Text, server_default="*")
    cron_day_of_month: Mapped[str] = mapped_column(Text, server_default="*")
    cron_month_of_year: Mapped[str] = mapped_column(Text, server_default="*")
    timezone: Mapped[str] = mapped_column(Text, server_default="UTC")
    solar_event: Mapped[str | None] = mapped_column(Text)
    latitude: Mapped[float | None] = mapped_column(Double)
    longitude: Mapped[float | None] = mapped_column(Double)
    clocked_at: Mapped[datetime | None] = mapped_column(TZ)
    args: Mapped[Any] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    kwargs: Mapped[Any] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    options: Mapped[Any] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    one_off: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    start_time: Mapped[datetime | None] = mapped_column(TZ)
    end_time: Mapped[datetime | None] = mapped_column(TZ)
    description: Mapped[str] = mapped_column(Text, server_default="")
    misfire_policy: Mapped[str | None] = mapped_column(Text)
    catch_up_limit: Mapped[int | None] = mapped_column(Integer)
    next_run_at: Mapped[datetime | None] = mapped_column(TZ)
    last_due_at: Mapped[datetime | None] = mapped_column(TZ)
    last_run_at: Mapped[datetime | None] = mapped_column(TZ)
    total_run_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text, server_default="api")
    #: For ``source='config'``: the app (``pg_beat_config_owner``, else the Celery app's name)
    #: whose ``beat_schedule`` wrote the row; a start only ever prunes its own rows.
    config_owner: Mapped[str | None] = mapped_column(Text)
    #: After a tick made due by hand (run now), the due time where the grid resumes.
    resume_at: Mapped[datetime | None] = mapped_column(TZ)
    #: One tick asked for by hand while the row is disabled (run now), due at this time; the
    #: claim that records it clears it, leaving ``enabled`` and the grid as they were.
    run_once_at: Mapped[datetime | None] = mapped_column(TZ)
    #: ``allow``, ``skip`` or ``buffer_one``; NULL: the ``pg_beat_overlap_policy`` setting.
    overlap_policy: Mapped[str | None] = mapped_column(Text)
    #: Seconds after which an unfinished run stops blocking this schedule (overlap policies,
    #: run-once); NULL: the ``pg_beat_max_runtime`` setting.
    max_runtime: Mapped[float | None] = mapped_column(Double)
    #: Each tick's task runs once even when the broker delivers it twice; NULL: the
    #: ``pg_beat_run_once`` setting.
    run_once: Mapped[bool | None] = mapped_column(Boolean)
    #: The one tick ``buffer_one`` holds back while the previous run goes on.
    buffered_due_at: Mapped[datetime | None] = mapped_column(TZ)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class Run(Base):
    """One claimed tick; the unique key is what makes a tick claimable only once."""

    __tablename__ = "pg_beat_runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "due_at"),
        CheckConstraint(
            "status IN ('claimed', 'sent', 'skipped', 'failed', 'expired')", name="status"
        ),
        Index(
            "ix_pg_beat_runs_unsent",
            "group_name",
            "epoch",
            postgresql_where=text("status = 'claimed'"),
        ),
        Index("ix_pg_beat_runs_claimed_at", "claimed_at"),
        CheckConstraint(
            "outcome IS NULL OR outcome IN ('success', 'failure', 'retry', 'revoked', 'lost')",
            name="outcome",
        ),
        Index("ix_pg_beat_runs_task_id", "task_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    group_name: Mapped[str] = mapped_column(Text)
    schedule_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("pg_beat_schedules.id", ondelete="CASCADE")
    )
    schedule_name: Mapped[str] = mapped_column(Text)
    due_at: Mapped[datetime] = mapped_column(TZ)
    task_id: Mapped[str] = mapped_column(Text)
    epoch: Mapped[int] = mapped_column(BigInteger)
    replica: Mapped[str] = mapped_column(Text)
    claimed_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(TZ)
    status: Mapped[str] = mapped_column(Text, server_default="claimed")
    error: Mapped[str | None] = mapped_column(Text)
    #: Why the tick was skipped (misfire, overlap) or held back (``buffer_one``).
    reason: Mapped[str | None] = mapped_column(Text)
    # What the workers saw (pg_beat.worker); NULL until a tracking worker started the task.
    worker: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(TZ)
    finished_at: Mapped[datetime | None] = mapped_column(TZ)
    #: success, failure, retry, revoked or lost; NULL: not finished (or not tracked).
    outcome: Mapped[str | None] = mapped_column(Text)
    runtime: Mapped[float | None] = mapped_column(Double)
    outcome_error: Mapped[str | None] = mapped_column(Text)
    #: Executions started (the first, retries, redeliveries after a lost one).
    attempts: Mapped[int | None] = mapped_column(Integer)
    #: Deliveries of the same execution that did not run (run-once) or ran again (tracking).
    duplicates: Mapped[int | None] = mapped_column(Integer)


class Execution(Base):
    """One execution of a tick's task that a worker started: a retry, a redelivery and a
    duplicate delivery each get one (the audit reads them)."""

    __tablename__ = "pg_beat_executions"
    __table_args__ = (
        CheckConstraint(
            "delivery IN ('first', 'retry', 'redelivery', 'duplicate')", name="delivery"
        ),
        CheckConstraint(
            "outcome IS NULL OR outcome IN "
            "('success', 'failure', 'retry', 'revoked', 'lost', 'duplicate')",
            name="outcome",
        ),
        Index("ix_pg_beat_executions_task_id", "task_id"),
        Index("ix_pg_beat_executions_started_at", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    task_id: Mapped[str] = mapped_column(Text)
    group_name: Mapped[str | None] = mapped_column(Text)
    schedule_id: Mapped[int | None] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer, server_default="0")
    worker: Mapped[str] = mapped_column(Text)
    delivery: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(TZ)
    outcome: Mapped[str | None] = mapped_column(Text)
    runtime: Mapped[float | None] = mapped_column(Double)
    error: Mapped[str | None] = mapped_column(Text)


class ScheduleHealth(Base):
    """Per schedule, its last outcomes and consecutive failures, kept by the workers. No
    foreign key: a worker's write must never lock a schedule row a claim would then skip."""

    __tablename__ = "pg_beat_schedule_health"
    __table_args__ = (Index("ix_pg_beat_schedule_health_group_name", "group_name"),)

    schedule_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    group_name: Mapped[str] = mapped_column(Text)
    last_outcome: Mapped[str | None] = mapped_column(Text)
    last_finished_at: Mapped[datetime | None] = mapped_column(TZ)
    last_success_at: Mapped[datetime | None] = mapped_column(TZ)
    last_failure_at: Mapped[datetime | None] = mapped_column(TZ)
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class Worker(Base):
    """A worker process that records outcomes, with its heartbeat (``name``: ``host:pid``)."""

    __tablename__ = "pg_beat_workers"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    hostname: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    stopped_at: Mapped[datetime | None] = mapped_column(TZ)


class Lease(Base):
    """The leadership lease of one scheduler group; ``epoch`` is the fencing token."""

    __tablename__ = "pg_beat_leases"

    group_name: Mapped[str] = mapped_column(Text, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, server_default="0")
    holder: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    backend_pid: Mapped[int | None] = mapped_column(Integer)
    acquired_at: Mapped[datetime | None] = mapped_column(TZ)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TZ)
    expires_at: Mapped[datetime | None] = mapped_column(TZ)
    progress_at: Mapped[datetime | None] = mapped_column(TZ)
    #: Set when the holder handed the lease over on purpose (shutdown, a hang, giving an epoch
    #: up); cleared by the next takeover.
    released_at: Mapped[datetime | None] = mapped_column(TZ)


class LeaderTerm(Base):
    """One row per epoch: who led, from when, until when and why it ended (failover history)."""

    __tablename__ = "pg_beat_leader_terms"

    group_name: Mapped[str] = mapped_column(Text, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    holder: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    reason: Mapped[str] = mapped_column(Text)
    previous_holder: Mapped[str | None] = mapped_column(Text)
    previous_expires_at: Mapped[datetime | None] = mapped_column(TZ)
    ended_at: Mapped[datetime | None] = mapped_column(TZ)


class Replica(Base):
    """A beat process of a group, heartbeating its role so ``pg-beat status`` can show it."""

    __tablename__ = "pg_beat_replicas"

    group_name: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(Text)
    backend_pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    #: Since when this replica's broker connection fails; NULL: it works, or is not known.
    broker_failing_since: Mapped[datetime | None] = mapped_column(TZ)
    #: The broker's last error, cut short.
    broker_error: Mapped[str | None] = mapped_column(Text)
    #: When this replica last found out how its broker is.
    broker_checked_at: Mapped[datetime | None] = mapped_column(TZ)
    #: Ticks waiting to be published, as this replica last reported them; NULL: not reported.
    ticks_waiting: Mapped[int | None] = mapped_column(Integer)


class SchemaCompat(Base):
    """Per applied revision (from 0003 on), the oldest pg_beat code revision that may run
    against it: written by the migrations only, read by a replica that finds the database at
    a revision it does not know (:mod:`pg_beat.compat`). Its two first columns are read by
    every release from 0003 on: never rename or drop them."""

    __tablename__ = "pg_beat_schema_compat"

    revision: Mapped[str] = mapped_column(Text, primary_key=True)
    oldest_code_revision: Mapped[str] = mapped_column(Text)
    applied_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
