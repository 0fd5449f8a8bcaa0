"""A replica's own liveness, for a per-container probe that needs no database.

With ``pg_beat_liveness_file`` set, the beat process rewrites that file (atomically, at most
once a second) from its dispatch loop: its pid, role, when the loop last ran and whether the
watchdog thread and the publisher are alive. ``pg-beat check --self`` reads it: the replica is
alive when the file is fresh, its process runs and its threads are not stuck. A database outage
leaves every replica alive (their loops keep running), so a liveness probe built on this never
restarts the whole cluster at once; ``pg-beat check`` stays the cluster-level readiness check.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRITE_EVERY = 1.0  # seconds between two writes of the file


class LivenessFile:
    """Written by the beat process's main thread (``Scheduler.tick``)."""

    def __init__(self, path: str, replica: str) -> None:
        self.path = Path(path)
        self.replica = replica
        self._written_at = 0.0

    def beat(self, *, leader: bool, watchdog_alive: bool, stalled_for: float | None) -> None:
        """Record that the loop ran now (a no-op within a second of the last write)."""
        now = time.monotonic()
        if now - self._written_at < WRITE_EVERY:
            return
        self._written_at = now
        state = {
            "replica": self.replica,
            "pid": os.getpid(),
            "role": "leader" if leader else "standby",
            "loop_at": time.time(),
            "watchdog_alive": watchdog_alive,
            "publisher_stalled_for": stalled_for,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(state, out)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class Judgement:
    alive: bool
    message: str


def judge(state: dict[str, Any] | None, now: float, max_age: float, hang: float) -> Judgement:
    """Pure: is the replica that wrote ``state`` alive at UNIX time ``now``?"""
    if state is None:
        return Judgement(False, "dead: no liveness file (has the replica started?)")
    who = f"replica {state.get('replica')!r} (pid {state.get('pid')})"
    age = now - float(state.get("loop_at", 0.0))
    if age > max_age:
        return Judgement(False, f"dead: {who} has not run its loop for {age:.0f}s")
    if not _running(state.get("pid")):
        return Judgement(False, f"dead: {who} is not running")
    if not state.get("watchdog_alive"):
        return Judgement(False, f"dead: the watchdog thread of {who} has ended")
    stalled = state.get("publisher_stalled_for")
    if stalled is not None and stalled > max(hang, max_age):
        return Judgement(False, f"dead: the publisher of {who} is stuck for {stalled:.0f}s")
    return Judgement(True, f"alive: {who}, {state.get('role')}, loop ran {age:.1f}s ago")


def read(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as source:
            value = json.load(source)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
