"""Fixtures shared by every tier: databases, Redis, a private PostgreSQL, child processes.

A missing service skips a test locally but fails it under ``CI=true`` (dramatiq's check_redis).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from support import pg
from support.env import unavailable
from support.procs import ProcessGroup

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Keep each phase's report on the item, so fixtures can tell in teardown whether it failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# -- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a server where tests may create databases (see ``support.pg.admin_url``)."""
    try:
        url = pg.admin_url()
    except pg.NoPostgresAvailable as exc:
        unavailable(str(exc))
    yield url
    pg.release_admin_server()


@pytest.fixture(scope="session")
def migrated_template(pg_admin_url: str) -> Iterator[str]:
    """Name of a database migrated to head once per session, which ``db_url`` clones."""
    from pg_beat.migrate import upgrade

    name = f"pg_beat_tpl_{secrets.token_hex(6)}"
    pg.create_database(pg_admin_url, name)
    try:
        upgrade(pg.database_url(pg_admin_url, name))
        # CREATE DATABASE ... TEMPLATE fails while anybody is connected to the template.
        pg.terminate_connections(pg_admin_url, name)
        yield name
    finally:
        pg.drop_database(pg_admin_url, name)


@pytest.fixture
def db_url(pg_admin_url: str, migrated_template: str) -> Iterator[str]:
    """``postgresql+psycopg://`` URL of a fresh database at schema head, dropped after the test."""
    name = f"pg_beat_t_{secrets.token_hex(6)}"
    pg.create_database(pg_admin_url, name, template=migrated_template)
    try:
        yield pg.database_url(pg_admin_url, name)
    finally:
        pg.drop_database(pg_admin_url, name)


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """``postgresql+psycopg://`` URL of a fresh empty database (no migration), dropped after."""
    name = f"pg_beat_e_{secrets.token_hex(6)}"
    pg.create_database(pg_admin_url, name)
    try:
        yield pg.database_url(pg_admin_url, name)
    finally:
        pg.drop_database(pg_admin_url, name)


@pytest.fixture
def private_cluster() -> Iterator[pg.PrivateCluster]:
    """A started private PostgreSQL this test may stop, restart or crash; removed after."""
    cluster = pg.PrivateCluster()
    try:
        cluster.start()
    except pg.NoPostgresAvailable as exc:
        cluster.cleanup()
        unavailable(f"cannot start a private PostgreSQL cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.cleanup()


# -- Redis --------------------------------------------------------------------------------------


def _redis_ping(timeout: float = 2.0) -> str | None:
    """None when Redis on REDIS_HOST:REDIS_PORT answers PING, else what went wrong."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        return f"cannot connect: {exc}"
    if not reply.startswith(b"+PONG"):
        return f"unexpected reply to PING: {reply!r}"
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``redis://127.0.0.1:6379/<n>``, n in 1..11 drawn once per session (not flushed).

    Databases 12-15 belong to the benchmarks (failover 12, backlog 13, scheduler 14, which are
    flushed) and the demo (15): a test run beside them never shares their keys."""
    problem = _redis_ping()
    if problem is not None:
        unavailable(f"Redis at {REDIS_HOST}:{REDIS_PORT}: {problem}")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{secrets.randbelow(11) + 1}"


# -- Child processes ----------------------------------------------------------------------------


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessGroup]:
    """A ProcessGroup logging to tmp_path; everything it spawned is stopped after the test, and
    the tail of each log is printed when the test failed."""
    group = ProcessGroup(log_dir=tmp_path / "procs")
    try:
        yield group
    finally:
        group.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for name in group.names():
                tail = "\n".join(group.log(name).splitlines()[-60:])
                print(f"\n----- {name} (pid {group.pid(name)}) log tail -----\n{tail}")
