"""The per-replica liveness judgement: pure, from the file's content and the time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pg_beat.liveness import LivenessFile, judge, read

NOW = 1_800_000_000.0


def state(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "replica": "r1",
        "pid": os.getpid(),
        "role": "leader",
        "loop_at": NOW - 1.0,
        "watchdog_alive": True,
        "publisher_stalled_for": None,
    }
    base.update(values)
    return base


@pytest.mark.parametrize(
    ("content", "alive", "text"),
    [
        (state(), True, "alive: replica 'r1'"),
        (None, False, "no liveness file"),
        (state(loop_at=NOW - 31), False, "has not run its loop for 31s"),
        (state(pid=2**22 + 7), False, "is not running"),
        (state(watchdog_alive=False), False, "watchdog thread"),
        (state(publisher_stalled_for=45.0), False, "publisher"),
        (state(publisher_stalled_for=3.0), True, "alive"),
    ],
)
def test_judge(content: dict[str, Any] | None, alive: bool, text: str) -> None:
    found = judge(content, NOW, max_age=30.0, hang=10.0)
    assert found.alive is alive and text in found.message, found


def test_the_file_is_written_atomically_and_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "alive.json"
    live = LivenessFile(str(path), "r1")
    live.beat(leader=True, watchdog_alive=True, stalled_for=None)
    first = read(str(path))
    assert first is not None and first["role"] == "leader" and first["pid"] == os.getpid()
    live.beat(leader=False, watchdog_alive=True, stalled_for=None)
    assert read(str(path)) == first  # within the second: not rewritten
    assert [p.name for p in path.parent.iterdir()] == ["alive.json"]  # no temp file left
    path.write_text("not json")
    assert read(str(path)) is None
