"""Database URLs: every form users paste, libpq conninfo out, secrets masked as typed."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from pg_beat.exceptions import ConfigurationError
from pg_beat.urls import conninfo, describe, libpq_url, parse, redact_url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@db.example:6543/app",
        "postgres://u:pw@db.example:6543/app",
        "postgresql+psycopg://u:pw@db.example:6543/app",
        "postgresql+psycopg2://u:pw@db.example:6543/app",
        "host=db.example port=6543 dbname=app user=u password=pw",
    ],
)
def test_every_scheme_gives_the_same_libpq_keywords(url: str) -> None:
    assert parse(url) == {
        "user": "u",
        "password": "pw",
        "host": "db.example",
        "port": "6543",
        "dbname": "app",
    }


MULTI = {"user": "u", "dbname": "db", "host": "h1,h2", "port": "5432,5433"}


@pytest.mark.parametrize(
    "url",
    [
        # libpq's URI with several hosts
        "postgresql://u@h1:5432,h2:5433/db",
        # SQLAlchemy's repeated host=h:p
        "postgresql+psycopg://u@/db?host=h1:5432&host=h2:5433",
        # libpq's lists in the query
        "postgres://u@/db?host=h1,h2&port=5432,5433",
        # libpq's keyword form
        "host=h1,h2 port=5432,5433 dbname=db user=u",
    ],
)
def test_multi_host_forms(url: str) -> None:
    assert parse(url) == MULTI


def test_multi_host_keeps_target_session_attrs_for_libpq() -> None:
    url = "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write&sslmode=disable"
    info = conninfo_to_dict(conninfo(url, application_name="x"))
    assert info["target_session_attrs"] == "read-write"
    assert (info["host"], info["port"], info["application_name"]) == ("h1,h2", "5432,5433", "x")


def test_repeated_hosts_without_ports_get_the_default_port_only_when_some_have_one() -> None:
    assert parse("postgresql://u@/db?host=a&host=b")["host"] == "a,b"
    assert "port" not in parse("postgresql://u@/db?host=a&host=b")
    assert parse("postgresql://u@/db?host=a:6000&host=b")["port"] == "6000,5432"


def test_a_socket_directory_host_is_kept() -> None:
    assert parse("postgresql:///app?host=/var/run/postgresql") == {
        "dbname": "app",
        "host": "/var/run/postgresql",
    }


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("mysql://u:pw@h/db", "unsupported database URL scheme 'mysql'"),
        ("sqlite:///tmp/x.db", "unsupported database URL scheme 'sqlite'"),
        ("postgresql+asyncpg://u@h/db", "'postgresql+asyncpg'"),
        ("not a url", "invalid database URL 'not a url'"),
        ("", "invalid database URL"),
        ("postgresql://u@h:abc/db", "port 'abc' is not a number"),
        ("postgresql://u@h:70000/db", "port '70000'"),
        ("postgresql://u@h/db?bogus=1", "invalid URI query parameter"),
    ],
)
def test_parse_rejects_naming_what_was_typed(url: str, text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse(url)
    assert text in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:hunter2@h/db",
        "postgresql://u:hunter2@h:abc/db",
        "postgresql://u:hunter2@h/db?bogus=1",
        "host=h port=x password=hunter2",
    ],
)
def test_rejection_does_not_print_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse(url)
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


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
        ("postgresql://u:hunter2@h1:1,h2:2/app", "postgresql://u:***@h1:1,h2:2/app"),
        (
            "postgresql://u@h/app?password=hunter2&sslmode=x",
            "postgresql://u@h/app?password=***&sslmode=x",
        ),
        ("host=h password=hunter2 dbname=x", "host=h password=*** dbname=x"),
        ("host=h password='hun ter2' dbname=x", "host=h password=*** dbname=x"),
        ("::not a url::", "::not a url::"),
    ],
)
def test_redact_url_shows_what_was_typed_without_the_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@h1:5432,h2:5433/db", "u@h1:5432,h2:5433/db"),
        ("host=h dbname=x", "h/x"),
        ("postgresql:///x", "localhost/x"),
    ],
)
def test_describe(url: str, expected: str) -> None:
    assert describe(url) == expected
