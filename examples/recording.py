"""What the recording tasks of the HA examples and the benchmarks share: a connection per worker
thread to the database executions are recorded in, and message headers read from a request."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

_local = threading.local()


def thread_connection(libpq_url: str) -> psycopg.Connection[Any]:
    """This thread's autocommit connection, opened on first use or after :func:`forget`."""
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(libpq_url, autocommit=True, connect_timeout=3)
        _local.conn = conn
    return conn


def forget_connection() -> None:
    """Drop this thread's connection after an error, so the next use reconnects."""
    _local.conn = None


def header(request: Any, name: str) -> Any:
    """A custom message header: Celery puts it on the request, or in ``request.headers``."""
    value = getattr(request, name, None)
    if value is None and isinstance(getattr(request, "headers", None), dict):
        value = request.headers.get(name)
    return value
