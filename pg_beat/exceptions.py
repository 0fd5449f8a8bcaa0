"""Every error pg_beat raises, under one root so callers can catch :class:`PgBeatError`."""

from __future__ import annotations

from typing import Any


class PgBeatError(Exception):
    """Root of every pg_beat error."""


class ConfigurationError(PgBeatError):
    """Raised when a ``pg_beat_*`` setting is missing, malformed or inconsistent."""


class DatabaseUnavailable(PgBeatError):
    """Raised when PostgreSQL cannot be reached or dropped the connection."""


class SchemaMismatch(PgBeatError):
    """Raised when this pg_beat cannot run against the database's schema (behind this code, or
    ahead of it and not declared compatible with it): at the scheduler's start, by the CLI, and
    by :class:`~pg_beat.api.ScheduleManager` on first use (all through
    :func:`pg_beat.migrate.require_compatible`). The message says which side is behind and
    the command that fixes it."""


class MigrationFailed(PgBeatError):
    """Raised by a migration step that could not be completed online before its deadline (an
    index still not valid); the revision is then not recorded, and running the migration again
    resumes it."""


POOLING_MESSAGE = (
    "pg_beat_pool_mode is 'session' but the database URL goes through a transaction-pooling "
    "proxy (the advisory lock is held by another server session than this one's): set "
    "pg_beat_pool_mode = 'transaction' (or 'auto'), or point pg_beat at PostgreSQL directly or "
    "at a session pool"
)


class ScheduleError(PgBeatError):
    """Root of the errors about one schedule.

    ``schedule`` names it. ``field`` is the column at fault (``cron_hour``), for programs;
    ``argument`` the word the caller used for it (``crontab`` when the API was given
    ``crontab=``), which the message shows; ``reason`` is the message without the two.
    The CLI shows its own option instead: ``error.worded("--cron")``.
    """

    def __init__(
        self,
        schedule: str | None,
        message: str,
        *,
        field: str | None = None,
        argument: str | None = None,
    ) -> None:
        self.schedule = schedule
        self.field = field
        #: Shown before the reason; "" for a reason that names what is wrong itself.
        self.argument = field if argument is None else argument
        self.reason = message
        super().__init__(message)

    def worded(self, argument: str | None) -> str:
        """The message naming the bad part ``argument`` (none when empty)."""
        where = f"schedule {self.schedule!r}" if self.schedule else "schedule"
        return f"{where}: {argument}: {self.reason}" if argument else f"{where}: {self.reason}"

    def __str__(self) -> str:
        return self.worded(self.argument)

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other arguments than ``args``: rebuild from the attributes instead.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[ScheduleError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidSchedule(ScheduleError):
    """Raised when a schedule's definition is invalid (bad crontab, timezone, interval, args)."""


class ScheduleNotFound(ScheduleError):
    """Raised when no schedule of that name exists in the scheduler group."""

    def __init__(self, schedule: str) -> None:
        super().__init__(schedule, "not found")


class ScheduleExists(ScheduleError):
    """Raised when a schedule is created with a name that is already taken in its group."""

    def __init__(self, schedule: str) -> None:
        super().__init__(
            schedule, "a schedule with this name already exists", field="name", argument=""
        )


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


class AuditTooLarge(PgBeatError):
    """Raised by ``pg-beat runs audit`` when one schedule would have more due times in the
    window than :data:`pg_beat.audit.MAX_DUE_TIMES`."""
