"""Where the tests run: the one place that decides what a missing tool or service means.

Locally a test that needs something this machine lacks (PgBouncer, iptables, a replication
pair) is skipped; under ``CI=true`` it fails, since CI is supposed to provide everything and a
silently skipped suite proves nothing (dramatiq's ``check_redis()`` pattern). The helpers in
``support`` raise their own exception type (``pg.NoPostgresAvailable``,
``pgbouncer.PgBouncerUnavailable``, ``blackhole.KernelBlackholeUnavailable``); fixtures catch it
and call :func:`unavailable`.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def is_ci() -> bool:
    """Whether ``CI`` is set to ``true`` or ``1`` (case-insensitive)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def unavailable(message: str) -> NoReturn:
    """Skip the current test because of ``message``, or fail it under ``CI=true``."""
    if is_ci():
        pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(message)


def require_module(name: str) -> ModuleType:
    """``import name``, or :func:`unavailable` when it is not installed (never a silent skip
    under CI, unlike ``pytest.importorskip``)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"module {name!r} is not installed: {exc}")
