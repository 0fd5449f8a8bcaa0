"""Polling for a condition in tests, and the plain connections they inspect the database with."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from support import pg


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 15.0,
    what: str = "condition",
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` until it is truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout}s")
        time.sleep(interval)


def connect(url: str, name: str = "pg_beat tests", **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection to ``url`` (any form pg_beat takes), named ``name``."""
    kwargs.setdefault("connect_timeout", 3)
    return psycopg.connect(pg.libpq_url(url), autocommit=True, application_name=name, **kwargs)
