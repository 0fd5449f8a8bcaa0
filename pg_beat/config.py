"""Typed settings, read from Celery's configuration (``pg_beat_*`` keys) and the environment."""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from pg_beat import urls
from pg_beat.exceptions import ConfigurationError
from pg_beat.publish import broker
from pg_beat.schedules import MAX_CATCH_UP_LIMIT, MISFIRE_POLICIES

OnHang = Literal["exit", "release"]
PoolMode = Literal["auto", "session", "transaction"]
OverlapPolicy = Literal["allow", "skip", "buffer_one"]
OVERLAP_POLICIES: tuple[str, ...] = get_args(OverlapPolicy)
ON_HANG_CHOICES: tuple[str, ...] = get_args(OnHang)
POOL_MODES: tuple[str, ...] = get_args(PoolMode)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def default_replica_name() -> str:
    """``host:pid``, unique per process on a host and readable in ``pg_stat_activity``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _seconds(value: object) -> bool:
    """A finite number of seconds >= 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


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
    on_hang: OnHang = "exit"
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
    pool_mode: PoolMode = "auto"
    listen_url: str | None = None
    poll_interval: float = 1.0
    max_message_bytes: int = 1024 * 1024
    liveness_file: str | None = None
    broker_handover_after: float = 30.0
    # Run outcomes (pg_beat.worker) and overlap; per schedule, a NULL column means these.
    overlap_policy: OverlapPolicy = "allow"
    max_runtime: float = 3600.0
    run_once: bool = False
    track_runs: bool = False
    overdue_factor: float = 2.0
    worker_heartbeat_interval: float = 10.0
    worker_gone_after: float = 60.0
    track_queue_size: int = 10_000
    track_flush_interval: float = 0.1

    def __post_init__(self) -> None:
        urls.parse(self.database_url)
        if self.listen_url is not None:
            urls.parse(self.listen_url)
        self._check_durations()
        self._check_lease()
        for name, choices in (
            ("on_hang", ON_HANG_CHOICES),
            ("misfire_policy", MISFIRE_POLICIES),
            ("pool_mode", POOL_MODES),
            ("overlap_policy", OVERLAP_POLICIES),
        ):
            if getattr(self, name) not in choices:
                raise ConfigurationError(
                    f"pg_beat_{name} must be one of {', '.join(choices)}, "
                    f"got {getattr(self, name)!r}"
                )
        for name in ("catch_up_limit", "batch_size", "max_message_bytes", "track_queue_size"):
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

    def _check_durations(self) -> None:
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
            "max_runtime",
            "overdue_factor",
            "worker_heartbeat_interval",
            "worker_gone_after",
            "track_flush_interval",
        ):
            value = getattr(self, name)
            if not _seconds(value) or value == 0:
                raise ConfigurationError(
                    f"pg_beat_{name} must be a positive number of seconds, got {value!r}"
                )
        if not _seconds(self.broker_handover_after):
            raise ConfigurationError(
                "pg_beat_broker_handover_after must be a number of seconds >= 0 (0: never hand "
                f"over), got {self.broker_handover_after!r}"
            )

        if self.worker_gone_after < 2 * self.worker_heartbeat_interval:
            raise ConfigurationError(
                f"pg_beat_worker_gone_after ({self.worker_gone_after:g}s) must be at least 2x "
                f"pg_beat_worker_heartbeat_interval ({self.worker_heartbeat_interval:g}s), so "
                "that one late heartbeat does not make a worker's runs lost"
            )

    def _check_lease(self) -> None:
        """The TTL against the heartbeat, and the publish margin against both and the broker."""
        if self.lease_ttl < 3 * self.heartbeat_interval:
            raise ConfigurationError(
                f"pg_beat_lease_ttl ({self.lease_ttl:g}s) must be at least 3x "
                f"pg_beat_heartbeat_interval ({self.heartbeat_interval:g}s), so that one "
                "late heartbeat does not cost the lease"
            )
        margin = self.publish_margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise ConfigurationError(
                f"pg_beat_publish_margin must be a number of seconds, got {margin!r}"
            )
        if not margin >= broker.MIN_PUBLISH_MARGIN:  # NaN too
            # A publish begun just before the local deadline must end before the lease can
            # expire: a connect and a write, each bounded by half the margin, at least 0.05 s.
            raise ConfigurationError(
                f"pg_beat_publish_margin ({margin:g}s) must be at least "
                f"{broker.MIN_PUBLISH_MARGIN:g}s: the broker's connect and socket timeouts are "
                f"half of it, and never below {broker.MIN_TIMEOUT:g}s"
            )
        if not margin < self.lease_ttl - self.heartbeat_interval:
            raise ConfigurationError(
                f"pg_beat_publish_margin ({margin:g}s) must leave room in the lease: "
                "below pg_beat_lease_ttl - pg_beat_heartbeat_interval"
            )

    @classmethod
    def from_celery(cls, conf: Mapping[str, Any]) -> Settings:
        """Read the ``pg_beat_*`` keys of a Celery app's ``conf``; a setting the conf leaves
        out (or sets to None) comes from the environment variable ``PG_BEAT_<NAME>``
        (:func:`env_name`) when that is set and not empty, else it keeps its default."""
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
        from_env: list[str] = []
        for name, kind in setting_types().items():
            value = conf.get(f"pg_beat_{name}")
            if value is not None:
                values[name] = value
            elif os.environ.get(env_name(name)):
                values[name] = parse_env(name, kind, os.environ[env_name(name)])
                from_env.append(name)
        if not values.get("database_url"):
            raise ConfigurationError(
                "no database URL: set pg_beat_database_url in the Celery config "
                "or the PG_BEAT_DATABASE_URL environment variable"
            )
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigurationError(f"invalid pg_beat setting: {exc}") from exc
        except ConfigurationError as exc:
            # A value read from the environment is named as the operator wrote it.
            named = [env_name(n) for n in from_env if re.search(rf"\bpg_beat_{n}\b", str(exc))]
            if not named:
                raise
            raise ConfigurationError(f"{exc} (from the environment: {', '.join(named)})") from exc


def env_name(setting: str) -> str:
    """The environment variable of a setting: ``PG_BEAT_LEASE_TTL`` for ``lease_ttl``."""
    return f"PG_BEAT_{setting.upper()}"


def setting_types() -> dict[str, type]:
    """Each setting's name and the type its environment variable is parsed as (the
    annotation without ``None``: ``str``, ``float``, ``int`` or ``bool``)."""
    hints = get_type_hints(Settings)
    types: dict[str, type] = {}
    for item in fields(Settings):
        hint = hints[item.name]
        if get_origin(hint) is Literal:  # a choice of names: parsed as text, checked later
            types[item.name] = str
            continue
        kinds = [k for k in get_args(hint) if k is not type(None)] or [hint]
        if len(kinds) != 1 or kinds[0] not in (str, float, int, bool):
            raise TypeError(f"setting {item.name}: no environment parser for {hint!r}")
        types[item.name] = kinds[0]
    return types


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_env(setting: str, kind: type, text: str) -> Any:
    """The value of ``setting`` written as ``text`` in its environment variable; a
    :class:`ConfigurationError` naming the variable when it is not of the setting's type."""
    raw = text.strip()
    if kind is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        expected = f"true or false ({'/'.join(_TRUE)} or {'/'.join(_FALSE)})"
    elif kind is int:
        try:
            return int(raw)
        except ValueError:
            expected = "a whole number"
    elif kind is float:
        try:
            return float(raw)
        except ValueError:
            expected = "a number of seconds"
    else:
        return text
    raise ConfigurationError(
        f"environment variable {env_name(setting)} must be {expected}, got {text!r}"
    )
