"""Exit codes, and the one-line errors the CLI reports (see :mod:`pg_beat.cli` for the table)."""

from __future__ import annotations

from typing import IO, Any

import click

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

# SQLSTATEs that mean "could not talk to the database" rather than "the statement failed".
_UNREACHABLE_STATES = ("57P01", "57P02", "57P03", "3D000", "28000", "28P01")


class CliError(click.ClickException):
    """A failure reported as one line on stderr; exit code 1 (bad input or state)."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"pg-beat: error: {self.format_message()}", err=True)


class CliUsageError(CliError):
    """A usage error (exit code 2), reported on one line unlike click's own."""

    exit_code = EXIT_USAGE


class DatabaseUnreachable(CliError):
    """The database could not be reached (exit code 3)."""

    exit_code = EXIT_UNREACHABLE


def usage_error(exc: click.UsageError) -> CliError:
    """Click's usage error as one line, with a pointer to the command's ``--help``."""
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return CliUsageError(exc.format_message() + hint)


def driver_errors() -> tuple[type[Exception], ...]:
    """The exceptions SQLAlchemy and psycopg raise for a database error.

    A function, not a constant, so that importing the CLI does not import the drivers.
    """
    import psycopg
    from sqlalchemy.exc import DBAPIError

    return (DBAPIError, psycopg.Error)


def database_error(exc: Exception, url: str) -> CliError:
    """The CLI error for a SQLAlchemy or psycopg error: exit 3 when unreachable, else 1."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    from pg_beat.urls import redact_url

    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    sqlstate = getattr(orig, "sqlstate", None)
    unreachable = (isinstance(exc, DBAPIError) and exc.connection_invalidated) or (
        isinstance(orig, psycopg.OperationalError)
        and (sqlstate is None or sqlstate.startswith("08") or sqlstate in _UNREACHABLE_STATES)
    )
    if unreachable:
        return DatabaseUnreachable(f"cannot reach the database at {redact_url(url)}: {first}")
    if sqlstate == "42P01":  # undefined_table
        return CliError(f"database error: {first}: run 'pg-beat db upgrade'")
    return CliError(f"database error: {first}")
