"""Replicas running as a least-privilege role: DML on pg_beat's tables only (``pg-beat db
grant``), with and without ``pg_signal_backend`` to terminate a hung leader of another role."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url
from support.inproc import replica
from support.pg import libpq_url

from pg_beat import migrate
from pg_beat.api import ScheduleManager
from pg_beat.cli import main

pytestmark = pytest.mark.timeout(90)

RoleFactory = Callable[..., str]


@pytest.fixture
def dml_role(pg_admin_url: str, db_url: str) -> Iterator[RoleFactory]:
    """Makes LOGIN roles with no privilege but what ``pg-beat db grant`` gives; returns the
    database URL as that role. Roles are cluster-wide: dropped after the test."""
    made: list[str] = []

    def make(*grant_options: str) -> str:
        role = f"beat_dml_{secrets.token_hex(4)}"
        with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        made.append(role)
        result = CliRunner().invoke(
            main, ["--database-url", db_url, "db", "grant", role, *grant_options]
        )
        assert result.exit_code == 0, result.output
        assert f"TO {role};" in result.output
        return make_url(db_url).set(username=role).render_as_string(hide_password=False)

    yield make
    with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as admin:
        for role in made:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
    with psycopg.connect(libpq_url(db_url), autocommit=True) as owner:
        for role in made:
            owner.execute(f"DROP OWNED BY {role}")
    with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as admin:
        for role in made:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_dml_role_runs_a_replica_and_the_api(dml_role: RoleFactory, db_url: str) -> None:
    url = dml_role()
    with ScheduleManager(url) as api:
        api.create("s", "t.s", every=0.2)
    with replica(url) as rep:
        rep.run_until(lambda: len(rep.outbox.sent) >= 3, timeout=10)
    with psycopg.connect(libpq_url(url)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE nope (x int)")  # no DDL
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE pg_beat_runs")


def test_a_dml_role_reads_a_later_revisions_compatibility_record(
    dml_role: RoleFactory, db_url: str
) -> None:
    url = dml_role()
    with psycopg.connect(libpq_url(db_url), autocommit=True) as owner:
        owner.execute("UPDATE pg_beat_alembic_version SET version_num = '0004_future'")
        owner.execute(
            "INSERT INTO pg_beat_schema_compat VALUES ('0004_future', %s)",
            (migrate.head_revision(),),
        )
    with ScheduleManager(url) as api:  # the start-up check reads the record
        assert api.list() == []


def test_a_hung_leader_of_the_same_role_is_terminated_without_pg_signal_backend(
    dml_role: RoleFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = dml_role()
    with replica(url, replica_name="one") as one:
        first = one.wait_leader()
        one.watchdog.stop()  # hung: its session keeps the lock
        one.watchdog.join(timeout=5)
        with (
            caplog.at_level(logging.WARNING, logger="pg_beat.watchdog"),
            replica(url, replica_name="two", lead=False) as two,
        ):
            assert two.wait_leader(timeout=15) > first
    assert "still held the lock: terminated it" in caplog.text


def test_a_hung_leader_of_another_role_needs_pg_signal_backend(
    dml_role: RoleFactory, caplog: pytest.LogCaptureFixture
) -> None:
    leader_url, weak_url, strong_url = dml_role(), dml_role(), dml_role("--signal-backend")
    with replica(leader_url, replica_name="one") as one:
        first = one.wait_leader()
        one.watchdog.stop()
        one.watchdog.join(timeout=5)
        with (
            caplog.at_level(logging.WARNING, logger="pg_beat.watchdog"),
            replica(weak_url, replica_name="weak", lead=False) as weak,
        ):
            time.sleep(one.settings.lease_ttl + 1.5)
            assert weak.state.epoch is None  # may not terminate it: the lock stays held
        denied = [r.getMessage() for r in caplog.records if "may not terminate" in r.getMessage()]
        assert len(denied) == 1 and "pg_signal_backend" in denied[0]
        with replica(strong_url, replica_name="strong", lead=False) as strong:
            assert strong.wait_leader(timeout=15) > first
