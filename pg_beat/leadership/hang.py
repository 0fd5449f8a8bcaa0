"""What a hang report says: the stack of the stuck thread, and what its database session waits
on and for whom (``store.backend_diagnostics`` rows), so the one CRITICAL line tells why."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterable
from typing import Any


def stack_of(thread_id: int | None) -> str:
    """The current stack of thread ``thread_id``, or ``(no frame)``."""
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    return "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"


def describe_backends(rows: Iterable[Any]) -> str:
    """One clause per backend: its state, wait and query, and who blocks it."""
    return "; ".join(_describe(row) for row in rows) or "(backend idle or gone)"


def _describe(row: Any) -> str:
    text = (
        f"backend {row['pid']} ({row['application_name']}) state={row['state']} "
        f"wait={row['wait_event_type']}/{row['wait_event']} query={row['query']!r}"
    )
    for blocker in row["blocked_by"] or []:
        text += (
            f"; blocked by pid {blocker['pid']} ({blocker['application_name']}, "
            f"{blocker['state']}, {blocker['age']:.1f}s): {blocker['query']!r}"
        )
    return text
