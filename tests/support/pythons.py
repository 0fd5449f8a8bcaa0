"""The unit tier and the install test on the other Pythons the package claims.

    python3 tests/support/pythons.py 3.10 3.12 3.13

For each X.Y: the newest pyenv interpreter X.Y.* (``$PYENV_ROOT``, else ``pyenv root``, else
``~/.pyenv``; else ``pythonX.Y`` on the PATH), a venv ``.venv-X.Y`` in the checkout with the
test extra (re-installed when pyproject.toml changes), then ``pytest`` on ``tests/unit`` and on
the test that builds the wheel and runs the README's quick start from a fresh venv of that
Python. A missing interpreter is skipped locally and a failure under ``CI=true``. The exit
status is 0 only when every run passed. ``make test-pythons`` runs it; so does ``.ci/run``.

Standard library only: it runs before any venv exists. ``create_venv`` also serves
``tests/acceptance/test_install.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = [
    "tests/unit",
    "tests/acceptance/test_install.py::test_the_built_wheel_runs_the_readme_quick_start",
    "-q",
    "-p",
    "no:cacheprovider",
]
PIP_QUIET = ["--quiet", "--disable-pip-version-check", "--no-input"]


def is_ci() -> bool:
    # As support.env.is_ci, which imports pytest: this module must run without it.
    return os.environ.get("CI", "").lower() in ("true", "1")


def _pyenv_root() -> Path:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    try:
        out = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True, timeout=30
        )
        return Path(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return Path.home() / ".pyenv"


def find_python(version: str) -> Path | None:
    """The newest interpreter of ``version`` ("3.10"), or None when none is installed."""
    # versions/3.10.13/bin/python; not 3.10-dev, 3.13.0rc1 or a pyenv virtualenv.
    release = re.compile(rf"{re.escape(version)}\.(\d+)")
    found = {
        int(match[1]): path
        for path in _pyenv_root().glob(f"versions/{version}.*/bin/python")
        if (match := release.fullmatch(path.parents[1].name))
    }
    if found:
        return found[max(found)]
    on_path = shutil.which(f"python{version}")
    return Path(on_path) if on_path else None


def create_venv(path: Path, python: str | os.PathLike[str]) -> Path:
    """A venv at ``path`` made by ``python`` (replacing a broken one); its ``bin`` directory.

    Ignored by git and ruff: a ``.gitignore`` of ``*`` inside, as Python 3.13's venv writes."""
    bin_dir = path / "bin"
    works = (bin_dir / "python").exists() and (
        subprocess.run([bin_dir / "python", "-c", ""], capture_output=True).returncode == 0
    )
    if not works:
        subprocess.run([os.fspath(python), "-m", "venv", "--clear", path], check=True)
    (path / ".gitignore").write_text("*\n")
    return bin_dir


@dataclass
class Outcome:
    version: str
    status: str  # passed, failed, missing
    detail: str = ""


def _log(message: str) -> None:
    print(f"pythons: {message}", flush=True)


def run_tests(version: str) -> Outcome:
    """Install (when pyproject.toml changed) and run TESTS on Python ``version``."""
    python = find_python(version)
    if python is None:
        return Outcome(version, "missing", f"no Python {version} (pyenv install {version})")
    venv = ROOT / f".venv-{version}"
    stamp = venv / ".stamp-test"
    bin_dir = create_venv(venv, python)
    full = subprocess.run(
        [bin_dir / "python", "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    started = time.monotonic()
    if not stamp.exists() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        _log(f"{full}: installing .[test] into {venv.name}")
        install = [bin_dir / "python", "-m", "pip", "install", *PIP_QUIET, "-e", ".[test]"]
        if subprocess.run(install, cwd=ROOT).returncode != 0:
            return Outcome(version, "failed", f"{full}: pip install failed")
        stamp.touch()
    installed = time.monotonic()
    _log(f"{full}: pytest {' '.join(TESTS)}")
    tests = subprocess.run([bin_dir / "python", "-m", "pytest", *TESTS], cwd=ROOT)
    timing = f"install {installed - started:.0f} s, tests {time.monotonic() - installed:.0f} s"
    status = "passed" if tests.returncode == 0 else "failed"
    return Outcome(version, status, f"{full} ({timing})")


def main(versions: list[str]) -> int:
    if not versions:
        print(f"usage: {sys.argv[0]} X.Y [X.Y ...]", file=sys.stderr)
        return 2
    outcomes = [run_tests(version) for version in versions]
    bad = False
    for outcome in outcomes:
        if outcome.status == "missing":
            verdict = "FAILED (CI=true)" if is_ci() else "skipped"
            bad |= is_ci()
        else:
            verdict = outcome.status
            bad |= outcome.status == "failed"
        _log(f"Python {outcome.version}: {verdict}: {outcome.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
