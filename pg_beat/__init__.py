"""pg_beat: a highly available Celery beat scheduler backed by PostgreSQL.

Set ``beat_scheduler = "pg_beat:Scheduler"`` and ``pg_beat_database_url``; manage schedules
with :class:`ScheduleManager`, the ``pg-beat`` CLI, or plain SQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pg_beat.api import ScheduleInfo, ScheduleManager
    from pg_beat.scheduler import Scheduler
    from pg_beat.worker import install as track_runs

__all__ = ["ScheduleInfo", "ScheduleManager", "Scheduler", "__version__", "track_runs"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing pg_beat (e.g. for the CLI) does not import Celery's beat machinery.
    if name == "Scheduler":
        from pg_beat.scheduler import Scheduler

        return Scheduler
    if name in ("ScheduleManager", "ScheduleInfo"):
        from pg_beat import api

        return getattr(api, name)
    if name == "track_runs":
        from pg_beat.worker import install

        return install
    raise AttributeError(f"module 'pg_beat' has no attribute {name!r}")
