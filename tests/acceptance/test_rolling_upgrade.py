"""Rolling upgrades (invariant 18) with a real ``celery beat -S pg_beat:Scheduler`` of this code
against a database that a later release migrated.

The later release is simulated: a copy of this code's migrations plus one expand-only revision,
``0004_test`` (a nullable column), which records the oldest code that may run against it.
Declaring this code's head, a replica of this code starts and dispatches, with one INFO line
saying so; declaring ``0004_test`` itself, the replica refuses at once (status 78) with the
advice to upgrade pg_beat or roll the database back, and once the later release rolled it back,
starts.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import psycopg
import pytest
from alembic import command
from support.pg import libpq_url
from support.procs import ProcessGroup

from pg_beat import migrate

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HEAD = migrate.head_revision()
BEAT = [
    sys.executable,
    *("-m", "celery", "-A", "e2e_app", "beat", "-l", "info", "-S", "pg_beat:Scheduler"),
]

TEST_REVISION = '''"""A later release's expand-only revision (test): a nullable column.

Revision ID: 0004_test
Revises: {head}
"""

from __future__ import annotations

from pg_beat import ddl

revision = "0004_test"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ddl.execute("ALTER TABLE pg_beat_schedules ADD COLUMN IF NOT EXISTS test_note text")
    ddl.record_compat(revision, "{oldest}")


def downgrade() -> None:
    ddl.forget_compat(revision)
    ddl.execute("ALTER TABLE pg_beat_schedules DROP COLUMN IF EXISTS test_note")
'''


def later_release(tmp_path: Path, oldest_code: str) -> Path:
    """This code's migrations plus 0004_test, declaring ``oldest_code``, in a directory of
    their own."""
    directory = tmp_path / "later-migrations"
    shutil.copytree(
        migrate.migrations_dir(), directory, ignore=shutil.ignore_patterns("__pycache__")
    )
    (directory / "versions" / "0004_test.py").write_text(
        TEST_REVISION.format(head=HEAD, oldest=oldest_code)
    )
    return directory


def alembic(url: str, directory: Path, action: str, revision: str) -> None:
    """``upgrade``/``downgrade`` the database at ``url`` with the migrations in ``directory``."""
    config = migrate.alembic_config(url)
    config.set_main_option("script_location", str(directory))
    config.set_main_option("version_locations", str(directory / "versions"))
    getattr(command, action)(config, revision)


def sql(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def spawn_beat(procs: ProcessGroup, url: str, redis_url: str, queue: str, tmp_path: Path) -> None:
    env = {
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "E2E_BROKER_URL": redis_url,
        "E2E_QUEUE": queue,
        "E2E_DATABASE_URL": libpq_url(url),
        "PG_BEAT_DATABASE_URL": url,
        "PG_BEAT_REPLICA_NAME": "rolling-1",
    }
    procs.spawn("beat", [*BEAT, "-s", str(tmp_path / "schedule")], env=env, cwd=tmp_path)


def wait_for_sent(procs: ProcessGroup, url: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ((sent,),) = sql(url, "SELECT count(*) FROM pg_beat_runs WHERE status = 'sent'")
        if int(str(sent)) >= count:
            return
        assert procs.is_running("beat"), procs.log("beat")[-3000:]
        assert time.monotonic() < deadline, procs.log("beat")[-3000:]
        time.sleep(0.2)


def add_schedule(url: str) -> None:
    sql(
        url,
        "INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds) "
        "VALUES ('tick', 'e2e.record', 'interval', 0.5)",
    )


def test_a_replica_runs_against_a_later_compatible_schema(
    db_url: str, redis_url: str, queue: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    later = later_release(tmp_path, oldest_code=HEAD)
    alembic(db_url, later, "upgrade", "head")
    assert migrate.current(db_url) == "0004_test"
    add_schedule(db_url)
    spawn_beat(procs, db_url, redis_url, queue, tmp_path)
    wait_for_sent(procs, db_url, 4)
    log = procs.log("beat")
    lines = [line for line in log.splitlines() if "pg_beat: database schema is at" in line]
    assert len(lines) == 1, log[-3000:]
    assert "INFO/" in lines[0]
    assert (
        f"database schema is at 0004_test, ahead of this pg_beat ({HEAD}), and declares code "
        f"from {HEAD} on compatible: starting"
    ) in lines[0]
    assert "schema -> at 0004_test, ahead of this pg_beat" in log  # the banner
    assert "Traceback" not in log and "cannot start" not in log, log[-3000:]
    # The later release's column is there, and this code's writes leave it alone.
    assert sql(db_url, "SELECT test_note FROM pg_beat_schedules") == [(None,)]
    assert procs.stop("beat", timeout=20) == 0


def test_a_replica_refuses_a_later_incompatible_schema_until_it_is_rolled_back(
    db_url: str, redis_url: str, queue: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    later = later_release(tmp_path, oldest_code="0004_test")
    alembic(db_url, later, "upgrade", "head")
    add_schedule(db_url)
    spawn_beat(procs, db_url, redis_url, queue, tmp_path)
    assert procs.wait("beat", timeout=30) == 78  # EX_CONFIG: a restart would not cure it
    log = procs.log("beat")
    (line,) = [line for line in log.splitlines() if "cannot start" in line]
    assert line.endswith(
        "database schema is at 0004_test, which needs pg_beat code at revision 0004_test or "
        f"later; this pg_beat is at {HEAD}: upgrade pg_beat (or roll back with 'pg-beat db "
        f"downgrade {HEAD}' run by the pg_beat that migrated it)"
    ), log[-3000:]
    assert "Traceback" not in log and "retrying" not in log, log[-3000:]
    assert sql(db_url, "SELECT count(*) FROM pg_beat_runs") == [(0,)]

    # The advice, taken: the later release rolls the database back to this code's head.
    alembic(db_url, later, "downgrade", HEAD)
    assert migrate.current(db_url) == HEAD
    # The later release's record went with its revision; this code's own (its head's and
    # those before it) stay.
    records = {
        revision for (revision,) in sql(db_url, "SELECT revision FROM pg_beat_schema_compat")
    }
    assert HEAD in records and "0004_test" not in records, records
    spawn_beat(procs, db_url, redis_url, queue, tmp_path)
    wait_for_sent(procs, db_url, 2)
    assert procs.stop("beat", timeout=20) == 0
