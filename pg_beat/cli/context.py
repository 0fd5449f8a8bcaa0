"""What every command shares: the global options (:class:`Env`), the connections made from
them, ``--json`` and ISO 8601 times.

SQLAlchemy, psycopg, Celery (via the settings) and Alembic are imported where they are used,
not here: the CLI's modules are all imported for ``pg-beat --help``, which needs none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from pg_beat.cli.errors import CliError, CliUsageError, database_error
from pg_beat.exceptions import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from pg_beat.api import ScheduleManager
    from pg_beat.config import Settings


@dataclass
class Env:
    """The global options, and the connections made from them."""

    url: str | None
    schema: str | None
    group: str
    connect_timeout: int
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            if not self.url:
                raise CliUsageError(
                    "no database URL: pass --database-url or set PG_BEAT_DATABASE_URL"
                )
            from pg_beat.config import Settings

            try:
                self._settings = Settings(
                    database_url=self.url,
                    schema=self.schema or None,
                    group=self.group,
                    connect_timeout=float(self.connect_timeout),
                )
            except ConfigurationError:
                raise
            except (ValueError, TypeError) as exc:
                from pg_beat.urls import redact_url

                raise CliError(f"invalid database URL {redact_url(self.url)!r}: {exc}") from exc
        return self._settings

    @property
    def migrate_url(self) -> str:
        """The URL for Alembic, with the connect timeout added unless it names one."""
        from pg_beat import urls

        url = self.settings.database_url
        if "connect_timeout" in urls.parse(url):
            return url
        return urls.conninfo(url, connect_timeout=self.connect_timeout)

    @contextmanager
    def connect(self, *, schema: bool = True) -> Iterator[Connection]:
        """An autocommit connection; with ``schema``, fails unless the schema is at head."""
        settings = self.settings  # no or a bad URL fails here, before the drivers are imported
        from sqlalchemy.exc import DBAPIError

        from pg_beat import store

        engine = store.connections.make_engine(settings, "cli")
        try:
            try:
                conn = engine.connect()
            except DBAPIError as exc:
                raise database_error(exc, settings.database_url) from exc
            with conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                if schema:
                    require_schema(conn, self.schema)
                yield conn
        finally:
            engine.dispose()

    @contextmanager
    def manager(self) -> Iterator[ScheduleManager]:
        from pg_beat.api import ScheduleManager

        manager = ScheduleManager(settings=self.settings)
        try:
            yield manager
        finally:
            manager.close()


def require_schema(conn: Connection, schema: str | None) -> None:
    """Raise :class:`SchemaMismatch` unless this pg_beat may run against the database's schema
    (at its head, or ahead of it and declared compatible)."""
    from pg_beat import migrate

    migrate.require_compatible(conn, schema)


def unknown_group_warning(conn: Connection, group: str) -> str | None:
    """A warning when ``group`` has no schedules and no scheduler ever ran in it (no lease
    row): most likely a typo in --group. None for a group in use."""
    from pg_beat import store

    if store.lease.read_lease(conn, group) is not None or store.schedules.list_schedules(
        conn, group, limit=1
    ):
        return None
    return (
        f"group {group!r} has no schedules and no scheduler has run in it: check --group "
        "(or PG_BEAT_GROUP); an app's group is its pg_beat_group, 'default' unless set"
    )


def warn(message: str) -> None:
    """``pg-beat: warning: ...`` on stderr, one line."""
    click.echo(f"pg-beat: warning: {' '.join(message.split())}", err=True)


pass_env = click.make_pass_decorator(Env)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (stable keys) instead of a table."
)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (times ISO 8601, durations in seconds)."""
    from pg_beat import status

    click.echo(status.dumps(value))


def parse_time(text: str, option: str, schedule: str | None = None) -> datetime:
    """An aware datetime from ISO 8601 (``Z`` allowed); naive times are refused."""
    where = f"schedule {schedule!r}: " if schedule else ""
    raw = text.strip()
    if raw[-1:] in ("Z", "z"):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise CliError(
            f"{where}{option} {text!r} is not an ISO 8601 time (e.g. 2030-12-01T09:00Z)"
        ) from exc
    if value.utcoffset() is None:
        raise CliError(
            f"{where}{option} {text!r} has no timezone: add Z for UTC or an offset like +01:00"
        )
    return value
