"""Typed settings, read from Celery's configuration (``pg_beat_*`` keys) and the environment."""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pg_beat import urls
from pg_beat.exceptions import ConfigurationError
from pg_beat.schedules import MAX_CATCH_UP_LIMIT, MISFIRE_POLICIES

ON_HANG_CHOICES = ("exit", "release")
POOL_MODES = ("auto", "session", "transaction")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def default_replica_name() -> str:
    """``host:pid``, unique per process on a host and readable in ``pg_stat_activity``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _check_catch_up_limit(value: int) -> None:
    if value > MAX_CATCH_UP_LIMIT:
        raise ConfigurationError(
            f"pg_beat_catch_up_limit must be at most {MAX_CATCH_UP_LIMIT} (the ticks of one "
            f"catch_up are claimed in one transaction), got {value!r}"
        )


@dataclass(frozen=True)
class Settings:
    """Every ``pg_beat_*`` setting; durations are seconds (floats). See the README's table."""

    database_url: str
    schema: str | None = None
    group: str = "default"
    replica_name: str = field(default_factory=default_replica_name)
    lease_ttl: float = 5.0
    heartbeat_interval: float = 1.0
    hang_timeout: float = 5.0
    on_hang: str = "exit"
    publish_margin: float = 1.0
    terminate_hung_leader: bool = True
    misfire_policy: str = "fire_once"
    misfire_grace_time: float = 10.0
    catch_up_limit: int = 100
    batch_size: int = 500
    statement_timeout: float = 5.0
    lock_timeout: float = 2.0
    idle_in_transaction_timeout: float = 10.0
    connect_timeout: float = 5.0
    run_retention: float = 7 * 24 * 3600.0
    replica_stale_after: float = 60.0
    sync_config: bool = True
    config_owner: str | None = None
    config_prune: bool = False
    metrics_port: int | None = None
    metrics_address: str = "0.0.0.0"
    pool_mode: str = "auto"
    listen_url: str | None = None
    poll_interval: float = 1.0
    max_message_bytes: int = 1024 * 1024
    liveness_file: str | None = None

    def __post_init__(self) -> None:
        urls.parse(self.database_url)
        if self.listen_url is not None:
            urls.parse(self.listen_url)
        for name in (
            "lease_ttl",
            "heartbeat_interval",
            "hang_timeout",
            "misfire_grace_time",
            "statement_timeout",
            "lock_timeout",
            "idle_in_transaction_timeout",
            "connect_timeout",
            "run_retention",
            "replica_stale_after",
            "poll_interval",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigurationError(
                    f"pg_beat_{name} must be a positive number of seconds, got {value!r}"
                )
        if self.lease_ttl < 3 * self.heartbeat_interval:
            raise ConfigurationError(
                f"pg_beat_lease_ttl ({self.lease_ttl:g}s) must be at least 3x "
                f"pg_beat_heartbeat_interval ({self.heartbeat_interval:g}s), so that one "
                "late heartbeat does not cost the lease"
            )
        if not 0 <= self.publish_margin < self.lease_ttl - self.heartbeat_interval:
            raise ConfigurationError(
                f"pg_beat_publish_margin ({self.publish_margin:g}s) must be >= 0 and leave room "
                f"in the lease: below pg_beat_lease_ttl - pg_beat_heartbeat_interval"
            )
        for name, choices in (
            ("on_hang", ON_HANG_CHOICES),
            ("misfire_policy", MISFIRE_POLICIES),
            ("pool_mode", POOL_MODES),
        ):
            if getattr(self, name) not in choices:
                raise ConfigurationError(
                    f"pg_beat_{name} must be one of {', '.join(choices)}, "
                    f"got {getattr(self, name)!r}"
                )
        for name in ("catch_up_limit", "batch_size", "max_message_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"pg_beat_{name} must be a whole number >= 1, got {value!r}"
                )
        _check_catch_up_limit(self.catch_up_limit)
        if self.schema is not None and not _IDENTIFIER.fullmatch(self.schema):
            raise ConfigurationError(
                f"pg_beat_schema must be a plain identifier (letters, digits, _), "
                f"got {self.schema!r}"
            )
        if not self.group or not self.replica_name:
            raise ConfigurationError("pg_beat_group and pg_beat_replica_name must not be empty")

    @classmethod
    def from_celery(cls, conf: Mapping[str, Any]) -> Settings:
        """Read the ``pg_beat_*`` keys of a Celery app's ``conf`` (env vars fill the gaps)."""
        known = {f"pg_beat_{item.name}" for item in fields(cls)}
        unknown = sorted(k for k in conf if str(k).startswith("pg_beat_") and k not in known)
        if unknown:
            hints = [difflib.get_close_matches(k, known, n=1) for k in unknown]
            raise ConfigurationError(
                "unknown pg_beat setting(s): "
                + ", ".join(
                    f"{k}" + (f" (did you mean {h[0]}?)" if h else "")
                    for k, h in zip(unknown, hints, strict=True)
                )
            )
        values: dict[str, Any] = {}
        for item in fields(cls):
            key = f"pg_beat_{item.name}"
            value = conf.get(key)
            if value is not None:
                values[item.name] = value
        values.setdefault("database_url", os.environ.get("PG_BEAT_DATABASE_URL"))
        if not values["database_url"]:
            raise ConfigurationError(
                "no database URL: set pg_beat_database_url in the Celery config "
                "or the PG_BEAT_DATABASE_URL environment variable"
            )
        for env_name, key in (
            ("PG_BEAT_REPLICA_NAME", "replica_name"),
            ("PG_BEAT_SCHEMA", "schema"),
            ("PG_BEAT_GROUP", "group"),
            ("PG_BEAT_POOL_MODE", "pool_mode"),
            ("PG_BEAT_LISTEN_URL", "listen_url"),
            ("PG_BEAT_LIVENESS_FILE", "liveness_file"),
        ):
            if key not in values and os.environ.get(env_name):
                values[key] = os.environ[env_name]
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigurationError(f"invalid pg_beat setting: {exc}") from exc
