"""Database URLs: the forms users paste, the psycopg 3 driver, libpq form, secrets masked."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from pg_beat.exceptions import ConfigurationError
from pg_beat.urls import libpq_url, normalise_url, redact_url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@db.example:6543/app",
        "postgres://u:pw@db.example:6543/app",
        "postgresql+psycopg://u:pw@db.example:6543/app",
        "postgresql+psycopg2://u:pw@db.example:6543/app",
    ],
)
def test_normalise_url_uses_psycopg3(url: str) -> None:
    parsed = normalise_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "u",
        "pw",
        "db.example",
        6543,
        "app",
    )


def test_normalise_url_accepts_a_url_object_and_keeps_the_query() -> None:
    parsed = normalise_url(make_url("postgres://u@h/app?sslmode=require&application_name=x"))
    assert parsed.drivername == "postgresql+psycopg"
    assert dict(parsed.query) == {"sslmode": "require", "application_name": "x"}


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("mysql://u:pw@h/db", "unsupported database URL scheme 'mysql'"),
        ("sqlite:///tmp/x.db", "unsupported database URL scheme 'sqlite'"),
        ("postgresql+asyncpg://u@h/db", "'postgresql+asyncpg'"),
        ("not a url", "invalid database URL"),
        ("", "invalid database URL"),
    ],
)
def test_normalise_url_rejects(url: str, text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        normalise_url(url)
    assert text in str(caught.value)
    assert "postgresql://" in str(caught.value)


def test_rejection_does_not_print_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        normalise_url("mysql://u:hunter2@h/db")
    assert "hunter2" not in str(caught.value)


def test_libpq_url() -> None:
    assert libpq_url("postgresql+psycopg://u:pw@h:5433/app") == "postgresql://u:pw@h:5433/app"
    assert libpq_url("postgres://u@h/app") == "postgresql://u@h/app"


def test_libpq_url_keeps_special_characters_of_the_password() -> None:
    url = "postgresql://u:p%40ss%2Fw%3Ard@h/app?sslmode=disable"
    info = conninfo_to_dict(libpq_url(url))
    assert info["password"] == "p@ss/w:rd"
    assert (info["user"], info["host"], info["dbname"], info["sslmode"]) == (
        "u",
        "h",
        "app",
        "disable",
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:hunter2@h/app", "postgresql://u:***@h/app"),
        ("postgresql+psycopg://u@h:5432/app", "postgresql+psycopg://u@h:5432/app"),
        ("postgresql://h/app", "postgresql://h/app"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact_url(make_url(url)) == expected


def test_redact_unparseable() -> None:
    assert redact_url("::not a url::") == "<unparseable URL>"
