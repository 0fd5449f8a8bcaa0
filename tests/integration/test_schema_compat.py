"""Rolling upgrades (invariant 18) against a real database: this code at its head, a database
behind it, and a database a later release migrated (stamped here at a revision this code does
not know, with or without a compatibility record). What the API, the CLI and the start-up
check decide, and what they tell the operator to run."""

from __future__ import annotations

import json

import psycopg
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from support.pg import libpq_url

from pg_beat import compat, migrate
from pg_beat.api import ScheduleManager
from pg_beat.cli import main
from pg_beat.exceptions import SchemaMismatch

pytestmark = pytest.mark.timeout(60)

HEAD = migrate.head_revision()
FUTURE = "0004_future"


def sql(url: str, statement: str, *params: object) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(statement, params or None)


def stamp_ahead(url: str, oldest_code: str | None, schema: str = "public") -> None:
    """What a later release's migration leaves: the version table at FUTURE and, unless
    ``oldest_code`` is None, FUTURE's compatibility record."""
    sql(url, f'UPDATE "{schema}".pg_beat_alembic_version SET version_num = %s', FUTURE)
    if oldest_code is not None:
        sql(
            url,
            f'INSERT INTO "{schema}".pg_beat_schema_compat (revision, oldest_code_revision) '
            "VALUES (%s, %s)",
            FUTURE,
            oldest_code,
        )


def state_of(url: str, schema: str | None = None) -> compat.SchemaState:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return migrate.schema_state(conn, schema)
    finally:
        engine.dispose()


def cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, *args])


def test_this_codes_chain_ends_at_its_head() -> None:
    chain = migrate.code_revisions()
    assert chain[0] == "0001_initial" and chain[-1] == HEAD
    assert HEAD == "0004_run_outcomes_overlap"


def test_at_head(db_url: str) -> None:
    assert state_of(db_url).verdict is compat.Verdict.AT_HEAD
    # 0003 and 0004 record themselves: code from 0002 on may run against them.
    with psycopg.connect(libpq_url(db_url)) as conn:
        rows = conn.execute(
            "SELECT revision, oldest_code_revision FROM pg_beat_schema_compat ORDER BY 1"
        ).fetchall()
    assert rows == [
        ("0003_schema_compat_broker_health", "0002_failures_owners_release"),
        (HEAD, "0002_failures_owners_release"),
    ]


def test_behind_says_upgrade_the_database(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, "0002_failures_owners_release")
    state = state_of(empty_db_url)
    assert state.verdict is compat.Verdict.BEHIND
    with ScheduleManager(empty_db_url) as api, pytest.raises(SchemaMismatch) as caught:
        api.list()
    assert str(caught.value) == (
        "database schema is at revision 0002_failures_owners_release, behind this pg_beat, "
        f"which needs {HEAD}: run 'pg-beat db upgrade'"
    )
    result = cli(empty_db_url, "schedules", "list")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"pg-beat: error: {caught.value}"


@pytest.mark.parametrize("oldest_code", [HEAD, "0002_failures_owners_release"])
def test_ahead_and_compatible_runs(db_url: str, oldest_code: str) -> None:
    stamp_ahead(db_url, oldest_code)
    state = state_of(db_url)
    assert state.verdict is compat.Verdict.AHEAD and state.runs
    assert (state.database, state.code, state.oldest_code) == (FUTURE, HEAD, oldest_code)
    with ScheduleManager(db_url) as api:
        api.create("s", "t.s", every=5)
        assert [s.name for s in api.list()] == ["s"]
    result = cli(db_url, "db", "current")
    assert result.exit_code == 0
    assert result.stdout.strip() == (
        f"{FUTURE}: ahead of this pg_beat ({HEAD}), which it declares compatible (code from "
        f"{oldest_code} on)"
    )
    assert json.loads(cli(db_url, "db", "current", "--json").stdout) == {
        "current": FUTURE,
        "head": HEAD,
        "up_to_date": False,
        "compatible": True,
    }
    # An init container of the earlier release lets its replica start.
    result = cli(db_url, "db", "check")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: at {FUTURE}, ahead of this pg_beat ({HEAD})")
    assert cli(db_url, "schedules", "list").exit_code == 0
    # An earlier release's migration job, run again (a rollback of the code): nothing to do.
    result = cli(db_url, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(
        f"is at revision {FUTURE}, ahead of this pg_beat ({HEAD}), which it declares "
        "compatible: nothing to upgrade"
    )
    assert migrate.current(db_url) == FUTURE


@pytest.mark.parametrize(
    ("oldest_code", "needs"),
    [
        ("0004_future", "which needs pg_beat code at revision 0004_future or later"),
        (None, "which this pg_beat does not know and which declares no oldest compatible"),
    ],
    ids=["needs-later-code", "no-record"],
)
def test_ahead_and_incompatible_says_upgrade_pg_beat(
    db_url: str, oldest_code: str | None, needs: str
) -> None:
    stamp_ahead(db_url, oldest_code)
    assert state_of(db_url).verdict is compat.Verdict.INCOMPATIBLE
    advice = (
        f"this pg_beat is at {HEAD}: upgrade pg_beat (or roll back with 'pg-beat db downgrade "
        f"{HEAD}' run by the pg_beat that migrated it)"
    )
    with ScheduleManager(db_url) as api, pytest.raises(SchemaMismatch) as caught:
        api.list()
    message = str(caught.value)
    assert message.startswith(f"database schema is at {FUTURE}, {needs}")
    assert message.endswith(advice)
    for args in (("schedules", "list"), ("db", "check"), ("db", "upgrade"), ("status",)):
        result = cli(db_url, *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, (args, result.output)


def test_ahead_in_a_schema_of_its_own(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, schema="beat")
    stamp_ahead(empty_db_url, HEAD, schema="beat")
    assert state_of(empty_db_url, "beat").verdict is compat.Verdict.AHEAD
    with ScheduleManager(empty_db_url, schema="beat") as api:
        assert api.list() == []
    # The record is read from that schema, not from another one the search path might find.
    migrate.upgrade(empty_db_url)
    stamp_ahead(empty_db_url, "0004_future")
    assert state_of(empty_db_url, "beat").verdict is compat.Verdict.AHEAD
    assert state_of(empty_db_url).verdict is compat.Verdict.INCOMPATIBLE


def test_the_record_is_written_and_removed_by_the_migrations(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)

    def count() -> int:
        with psycopg.connect(libpq_url(empty_db_url)) as conn:
            row = conn.execute("SELECT count(*) FROM pg_beat_schema_compat").fetchone()
        assert row is not None
        return int(row[0])

    assert count() == 2  # 0003 and 0004
    migrate.downgrade(empty_db_url, "0002_failures_owners_release")
    assert state_of(empty_db_url).verdict is compat.Verdict.BEHIND
    migrate.upgrade(empty_db_url)
    migrate.upgrade(empty_db_url)  # at head: a no-op, the records stay two
    assert count() == 2
