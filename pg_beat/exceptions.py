"""Every error pg_beat raises, under one root so callers can catch :class:`PgBeatError`."""

from __future__ import annotations


class PgBeatError(Exception):
    """Root of every pg_beat error."""


class ConfigurationError(PgBeatError):
    """Raised when a ``pg_beat_*`` setting is missing, malformed or inconsistent."""


class DatabaseUnavailable(PgBeatError):
    """Raised when PostgreSQL cannot be reached or dropped the connection."""


class SchemaMismatch(PgBeatError):
    """Raised at start when the database schema is not at the revision this pg_beat needs."""


class SessionPoolingDetected(PgBeatError):
    """Raised when the URL goes through a transaction-pooling proxy that breaks session locks.

    Not raised by the scheduler, which instead logs :data:`POOLING_MESSAGE` and stands by."""


POOLING_MESSAGE = (
    "pg_beat_pool_mode is 'session' but the database URL goes through a transaction-pooling "
    "proxy (the advisory lock is held by another server session than this one's): set "
    "pg_beat_pool_mode = 'transaction' (or 'auto'), or point pg_beat at PostgreSQL directly or "
    "at a session pool"
)


class ScheduleError(PgBeatError):
    """Root of the errors about one schedule; ``schedule`` names it, ``field`` the bad part."""

    def __init__(self, schedule: str | None, message: str, *, field: str | None = None) -> None:
        self.schedule = schedule
        self.field = field
        where = f"schedule {schedule!r}" if schedule else "schedule"
        if field:
            where = f"{where}: {field}"
        super().__init__(f"{where}: {message}")


class InvalidSchedule(ScheduleError):
    """Raised when a schedule's definition is invalid (bad crontab, timezone, interval, args)."""


class ScheduleNotFound(ScheduleError):
    """Raised when no schedule of that name exists in the scheduler group."""

    def __init__(self, schedule: str) -> None:
        super().__init__(schedule, "not found")


class ScheduleExists(ScheduleError):
    """Raised when a schedule is created with a name that is already taken in its group."""

    def __init__(self, schedule: str) -> None:
        super().__init__(schedule, "a schedule with this name already exists", field="name")


class ScheduleLocked(ScheduleError):
    """Raised when an edit waited ``pg_beat_lock_timeout`` for a row another session holds."""

    def __init__(self, schedule: str) -> None:
        super().__init__(
            schedule,
            "locked by another session (an open transaction?); try again, or find it with "
            "'pg-beat status'",
        )


class MessageTooLarge(PgBeatError):
    """Raised when a tick's message is larger than ``pg_beat_max_message_bytes``."""
