"""Plain-text building blocks shared by status's messages, its report and the other CLI
commands: ages and relative times, UTC timestamps, shortened text, aligned columns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

__all__ = ["ago", "relative", "render_table", "shorten", "utc"]


def duration(value: float | None) -> str:
    """``'9.9s'``, ``'12s'``, ``'3m05s'``, ``'2h01m'``, ``'1d1h'`` for seconds (the sign is
    dropped); ``'?'`` when unknown."""
    if value is None:
        return "?"
    value = abs(value)
    if value < 10:
        return f"{value:.1f}s"
    whole = int(value)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


def ago(value: float | None) -> str:
    """``'12s ago'`` for an age in seconds; ``'-'`` when unknown."""
    return "-" if value is None else f"{duration(value)} ago"


def relative(value: float | None) -> str:
    """``'in 12s'`` / ``'12s ago'`` for seconds until a time (negative: past)."""
    if value is None:
        return "-"
    return f"in {duration(value)}" if value >= 0 else f"{duration(value)} ago"


def utc(value: datetime | None) -> str:
    """``2026-12-01 09:00:00Z`` (milliseconds when there are any)."""
    if value is None:
        return "-"
    value = value.astimezone(timezone.utc)
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"


def shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "") -> str:
    """Aligned plain-text columns; numbers right-aligned, None shown as '-'."""
    raw = [list(row) for row in rows]
    cells = [["-" if v is None else " ".join(str(v).split()) for v in row] for row in raw]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [
        any(isinstance(row[i], (int, float)) for row in raw)
        and all(isinstance(row[i], (int, float)) or row[i] is None for row in raw)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str], is_header: bool) -> str:
        parts = [
            v.rjust(w) if numeric[i] and not is_header else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(headers, True), *(line(row, False) for row in cells)])
