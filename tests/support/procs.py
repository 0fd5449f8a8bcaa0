"""Processes a test starts (celery beat replicas, workers), each stopped by the PID we got.

Each process gets its own session, so a signal meant for the test runner's group never reaches
it and a signal sent to it never reaches the runner. Only the PIDs spawned here are ever signalled
(through their ``Popen``, which cannot hit a recycled PID: it is our child until reaped).
Descendants they fork are theirs to stop.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal as signal_module
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

# Safety net for a run that ends without finalizers (Ctrl-C twice, an error in a fixture).
_groups: weakref.WeakSet[ProcessGroup] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for group in list(_groups):
        group.stop_all(timeout=5)


class ProcessGroup:
    """Named child processes with their output in log files; ``stop_all()`` ends every one."""

    def __init__(self, log_dir: str | os.PathLike[str] | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp("procs"))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, Path] = {}
        _groups.add(self)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name``, stdout and stderr appended to ``log_path``.

        ``env`` is added to a copy of this process's environment. A name may be reused once its
        previous process has exited (e.g. a replica restarted after a crash); the log file is
        appended to, so it keeps both runs.
        """
        previous = self._procs.get(name)
        if previous is not None and previous.poll() is None:
            raise ValueError(f"process {name!r} is still running (pid {previous.pid})")
        path = Path(log_path) if log_path is not None else self.log_dir / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {})}
        with path.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                env=full_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[name] = proc
        self._logs[name] = path
        return proc

    def __contains__(self, name: str) -> bool:
        return name in self._procs

    def names(self) -> list[str]:
        return list(self._procs)

    def popen(self, name: str) -> subprocess.Popen[bytes]:
        try:
            return self._procs[name]
        except KeyError:
            raise KeyError(f"no process named {name!r}; spawned: {self.names()}") from None

    def pid(self, name: str) -> int:
        return self.popen(name).pid

    def is_running(self, name: str) -> bool:
        return self.popen(name).poll() is None

    def signal(self, name: str, sig: int) -> None:
        """Send ``sig`` to the process ``name`` (a no-op once it has exited and been reaped)."""
        self.popen(name).send_signal(sig)

    def wait(self, name: str, timeout: float) -> int:
        """Wait for ``name`` to exit; its return code (negative: killed by that signal)."""
        return self.popen(name).wait(timeout)

    def stop(self, name: str, timeout: float = 10) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; the return code."""
        self._stop([self.popen(name)], timeout)
        code = self.popen(name).returncode
        assert code is not None
        return code

    def stop_all(self, timeout: float = 10) -> None:
        """Stop every process still running, all at once (one shared ``timeout``)."""
        self._stop(list(self._procs.values()), timeout)

    @staticmethod
    def _stop(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
        running = [p for p in procs if p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal_module.SIGTERM)
        # A process stopped with SIGSTOP ignores SIGTERM until continued.
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal_module.SIGCONT)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self, name: str) -> str:
        """Everything ``name`` has written so far."""
        try:
            return self._logs[name].read_text(errors="replace")
        except KeyError:
            raise KeyError(f"no process named {name!r}; spawned: {self.names()}") from None

    def log_path(self, name: str) -> Path:
        return self._logs[name]

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
