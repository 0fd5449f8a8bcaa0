"""pg_beat's connections against the servers users run: the session settings read back from the
server, directly and through a real PgBouncer with its default settings in both pool modes;
the pool mode ``auto`` tells a pooler from a direct connection; nothing is prepared behind a
transaction pool; every URL form reaches the server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from support.env import unavailable
from support.pgbouncer import PgBouncer, PgBouncerUnavailable

from pg_beat import store
from pg_beat.config import Settings

pytestmark = pytest.mark.timeout(60)

EXPECTED = {
    "statement_timeout": "4s",
    "lock_timeout": "1500ms",
    "idle_in_transaction_session_timeout": "7s",
    "tcp_keepalives_idle": "1",
    "tcp_keepalives_count": "2",
}


def settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "replica_name": "conn-test",
        "statement_timeout": 4.0,
        "lock_timeout": 1.5,
        "idle_in_transaction_timeout": 7.0,
    }
    values.update(overrides)
    return Settings(**values)


def shown(url: str, **overrides: Any) -> tuple[str, dict[str, str]]:
    """The pool mode pg_beat chose, and the settings a transaction of its engine runs with."""
    connector = store.connections.Connector(settings(url, **overrides))
    engine = connector.engine("test", dispatch=True)
    try:
        with engine.connect() as conn:
            # Several transactions: behind a transaction pool each may reach another server
            # session, and every one must carry the settings.
            for _ in range(3):
                with conn.begin():
                    values = {
                        name: str(conn.execute(text(f"SHOW {name}")).scalar_one())
                        for name in (*EXPECTED, "pg_beat.dispatch", "application_name")
                    }
                    assert values["pg_beat.dispatch"] == "on"
                    assert values["application_name"] == f"pg_beat:{connector.token}:conn-test:test"
                    assert {k: values[k] for k in EXPECTED} == EXPECTED
        return connector.mode, values
    finally:
        engine.dispose()


@pytest.fixture(params=["session", "transaction"])
def bouncer(request: pytest.FixtureRequest, db_url: str) -> Iterator[tuple[PgBouncer, str]]:
    target = make_url(db_url)
    try:
        with PgBouncer(target_port=target.port or 5432, pool_mode=request.param) as running:
            yield running, running.url(target.database or "postgres")
    except PgBouncerUnavailable as exc:
        unavailable(str(exc))


def test_settings_read_back_on_a_direct_connection(db_url: str) -> None:
    mode, _ = shown(db_url)
    assert mode == "session"


def test_settings_read_back_through_pgbouncer_with_its_defaults(
    bouncer: tuple[PgBouncer, str],
) -> None:
    """PgBouncer refuses the ``options`` startup parameter by default: pg_beat never sends it,
    and sets every value after connecting (SET LOCAL per transaction behind a pooler)."""
    _, url = bouncer
    mode, _ = shown(url)
    assert mode == "transaction"  # auto: a pooler, whatever its mode: the mode safe in both


@pytest.mark.parametrize("bouncer", ["session"], indirect=True)
def test_session_mode_through_a_session_pool(bouncer: tuple[PgBouncer, str]) -> None:
    running, url = bouncer
    assert running.pool_mode == "session"
    mode, _ = shown(url, pool_mode="session")
    assert mode == "session"


def test_nothing_is_prepared_behind_a_transaction_pool(bouncer: tuple[PgBouncer, str]) -> None:
    """psycopg prepares a statement after 5 runs; through a transaction pool the next run may
    reach a server session that has it already (DuplicatePreparedStatement) or lacks it."""
    running, url = bouncer
    engine = store.connections.Connector(settings(url)).engine("test")
    try:
        with engine.connect() as conn:
            for _ in range(20):
                with conn.begin():
                    store.connections.db_now(conn)
                    store.connections.backend_pid(conn)
    finally:
        engine.dispose()
    assert "prepared statement" not in running.log()


@pytest.mark.parametrize(
    "form",
    ["uri", "sqlalchemy-repeated-host", "libpq-lists", "keywords", "multi-host-uri"],
)
def test_every_url_form_connects(db_url: str, form: str) -> None:
    url = make_url(db_url)
    host, port, db = url.host, url.port or 5432, url.database
    urls = {
        "uri": f"postgresql://postgres@{host}:{port}/{db}",
        "sqlalchemy-repeated-host": f"postgresql+psycopg://postgres@/{db}?host={host}:{port}",
        "libpq-lists": f"postgres://postgres@/{db}?host={host}&port={port}",
        "keywords": f"host={host} port={port} dbname={db} user=postgres",
        # The first host refuses: libpq goes on to the next one.
        "multi-host-uri": f"postgresql://postgres@{host}:1,{host}:{port}/{db}"
        "?target_session_attrs=read-write",
    }
    mode, _ = shown(urls[form])
    assert mode == "session"
