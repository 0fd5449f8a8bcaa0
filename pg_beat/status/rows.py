"""Rows as status reads them: the ``Row`` type, intervals as seconds, and other sessions'
query text cut short before it is shown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from pg_beat.status.text import shorten

__all__ = ["QUERY_PREFIX", "Row", "cut_queries", "seconds"]


#: Other sessions' query text is cut to this many characters unless asked for in full.
QUERY_PREFIX = 40

Row = Mapping[Any, Any]  # a SQLAlchemy RowMapping, or a plain dict in tests


def seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def cut_queries(rows: Sequence[Row] | None, show: bool) -> list[dict[str, Any]] | None:
    """Rows as dicts, other sessions' query text (and their blockers') cut to QUERY_PREFIX
    characters unless ``show``."""
    if rows is None:
        return None
    return [_cut_row(row, show) for row in rows]


def _cut_row(row: Row, show: bool) -> dict[str, Any]:
    out = {str(key): value for key, value in row.items()}
    if show:
        return out
    if out.get("query") is not None:
        out["query"] = shorten(out["query"], QUERY_PREFIX)
    blockers = out.get("blocked_by")
    if blockers and isinstance(blockers[0], Mapping):
        out["blocked_by"] = [_cut_row(b, show) for b in blockers]
    return out
