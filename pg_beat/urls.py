"""Database URLs: accept what users paste, hand SQLAlchemy psycopg 3, never log secrets."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pg_beat.exceptions import ConfigurationError

_ACCEPTED = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")


def normalise_url(url: str | URL) -> URL:
    """Return ``url`` with the ``postgresql+psycopg`` driver; ``postgres://`` is accepted too."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise ConfigurationError(
            f"invalid database URL {redact_url(str(url))!r}: expected postgresql://user@host/db"
        ) from exc
    if parsed.drivername not in _ACCEPTED:
        raise ConfigurationError(
            f"unsupported database URL scheme {parsed.drivername!r}: pg_beat needs postgresql://"
        )
    return parsed.set(drivername="postgresql+psycopg")


def libpq_url(url: str | URL) -> str:
    """The URL as libpq/psycopg understands it (no SQLAlchemy driver suffix)."""
    return normalise_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def redact_url(url: str | URL) -> str:
    """The URL with its password masked, for logs and error messages."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return "<unparseable URL>"
    return parsed.render_as_string(hide_password=True)
