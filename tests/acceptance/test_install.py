"""The README's install and quick start, run as a user runs them.

``python -m build`` makes the sdist and, from it, the wheel; a fresh venv installs the wheel
with the redis extra; then, with nothing but that venv on the PATH: ``pg-beat db upgrade``, the
schedule made by ``schedule.py`` with the Python API, a ``celery worker`` and ``celery beat -S
pg_beat`` on ``tasks.py``. The tick must run on the worker.

The files and commands below are the README's quick start, verbatim (a test checks that the
README shows them). The test adds only environment: the database and broker of this run, and
a Celery config module (``CELERY_CONFIG_MODULE``) with a queue of its own, so no other run on
the shared Redis takes its messages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from support.procs import ProcessGroup
from support.pythons import create_venv

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]

TASKS_PY = """\
from celery import Celery

app = Celery("tasks", broker="redis://localhost:6379/0")


@app.task
def hello():
    return "hello from pg_beat"
"""

SCHEDULE_PY = """\
import os

from pg_beat import ScheduleManager

with ScheduleManager(os.environ["PG_BEAT_DATABASE_URL"]) as schedules:
    schedules.create("hello", "tasks.hello", every="5s")
"""

UPGRADE = ["pg-beat", "db", "upgrade"]
CREATE_SCHEDULE = ["python", "schedule.py"]
WORKER = ["celery", "-A", "tasks", "worker", "-l", "info"]
BEAT = ["celery", "-A", "tasks", "beat", "-S", "pg_beat", "-l", "info"]

# What a wheel built from the sdist must hold for `pg-beat db upgrade` and type checkers.
WHEEL_FILES = {
    "pg_beat/py.typed",
    "pg_beat/migrations/alembic.ini",
    "pg_beat/migrations/env.py",
    "pg_beat/migrations/script.py.mako",
    "pg_beat/migrations/versions/0001_initial.py",
    "pg_beat/worker/__init__.py",
}

# The worker's log line for one execution of the task, with what it returned.
TICK_RAN = re.compile(r"Task tasks\.hello\[[0-9a-f-]+\] succeeded in \S+: 'hello from pg_beat'")


def run(
    argv: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    """``argv``'s output; fails the test with that output when it exits non-zero."""
    result = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{output[-4000:]}"
    return output


def build(out: Path, tools: Path) -> Path:
    """Build the sdist, then the wheel from it, as ``python -m build`` does; the wheel."""
    bin_dir = create_venv(tools, sys.executable)
    run([str(bin_dir / "pip"), "install", "--quiet", "build"], timeout=120)
    run([str(bin_dir / "python"), "-m", "build", "--outdir", str(out), str(ROOT)], timeout=180)
    (sdist,) = out.glob("pg_beat-*.tar.gz")
    (wheel,) = out.glob("pg_beat-*-py3-none-any.whl")
    with tarfile.open(sdist) as tar:
        top = sdist.name.removesuffix(".tar.gz")
        in_sdist = {name.removeprefix(f"{top}/") for name in tar.getnames()}
    assert {"LICENSE", "README.md", "migrations/alembic.ini", "migrations/script.py.mako"} <= (
        in_sdist
    )
    with zipfile.ZipFile(wheel) as whl:
        in_wheel = set(whl.namelist())
    assert WHEEL_FILES <= in_wheel, sorted(WHEEL_FILES - in_wheel)
    # Every module of the checkout: a subpackage missing from [tool.setuptools] packages is left
    # out of the wheel, while the tests that import from the checkout still pass.
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pg_beat").rglob("*.py")}
    modules |= {
        f"pg_beat/migrations/{p.relative_to(ROOT / 'migrations').as_posix()}"
        for p in (ROOT / "migrations").rglob("*.py")
    }
    missing = sorted(modules - in_wheel)
    assert not missing, f"the wheel lacks {missing}: list their packages in pyproject.toml"
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in in_wheel)
    return wheel


def test_the_built_wheel_runs_the_readme_quick_start(
    tmp_path: Path, empty_db_url: str, redis_url: str, queue: str, procs: ProcessGroup
) -> None:
    wheel = build(tmp_path / "dist", tmp_path / "build-tools")
    venv = tmp_path / "venv"
    bin_dir = create_venv(venv, sys.executable)
    run([str(bin_dir / "pip"), "install", "--quiet", f"{wheel}[redis]"], timeout=180)

    project = tmp_path / "project"
    project.mkdir()
    (project / "tasks.py").write_text(TASKS_PY)
    (project / "schedule.py").write_text(SCHEDULE_PY)
    isolation = tmp_path / "isolation"
    isolation.mkdir()
    (isolation / "quickstart_isolation.py").write_text(
        f"task_default_queue = {queue!r}\nbroker_connection_retry_on_startup = True\n"
    )
    env = {
        # The venv as `activate` sets it up; nothing of this checkout on the path.
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
        "VIRTUAL_ENV": str(venv),
        "PYTHONPATH": str(isolation),
        "PG_BEAT_DATABASE_URL": empty_db_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_CONFIG_MODULE": "quickstart_isolation",
    }
    full_env = {**os.environ, **env}

    version = wheel.name.split("-")[1]
    assert run(["pg-beat", "--version"], 30, env=full_env, cwd=project).strip() == (
        f"pg-beat, version {version}"
    )
    where = run(
        ["python", "-c", "import pg_beat; print(pg_beat.__file__)"], 30, env=full_env, cwd=project
    )
    assert Path(where.strip()).is_relative_to(venv), f"pg_beat imported from {where}"
    run(UPGRADE, 60, env=full_env, cwd=project)
    run(CREATE_SCHEDULE, 60, env=full_env, cwd=project)

    procs.spawn("worker", WORKER, env=env, cwd=project)
    procs.spawn("beat", BEAT, env=env, cwd=project)
    deadline = time.monotonic() + 45  # the first tick is due 5 s after schedule.py ran
    while not TICK_RAN.search(procs.log("worker")):
        for name in ("worker", "beat"):
            assert procs.is_running(name), f"{name} exited:\n{procs.log(name)[-4000:]}"
        assert time.monotonic() < deadline, "no tick of 'hello' ran on the worker within 45 s"
        time.sleep(0.2)
    assert procs.stop("beat") == 0, procs.log("beat")[-4000:]
    assert "Traceback" not in procs.log("beat") + procs.log("worker")


def test_readme_shows_the_tested_quick_start() -> None:
    readme = (ROOT / "README.md").read_text()
    for text in (TASKS_PY, SCHEDULE_PY):
        assert f"```python\n{text}```" in readme, f"the README lacks, verbatim:\n{text}"
    for argv in (UPGRADE, CREATE_SCHEDULE, WORKER, BEAT):
        assert re.search(rf"^{re.escape(' '.join(argv))}\b", readme, re.MULTILINE), argv
