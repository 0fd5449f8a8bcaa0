"""Settings: defaults, validation that names the setting, and reading Celery's conf and the env."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import fields
from typing import Any

import pytest
from celery import Celery

from pg_beat.config import Settings, default_replica_name
from pg_beat.exceptions import ConfigurationError, PgBeatError

URL = "postgresql://pg@db.example/app"


@pytest.fixture(autouse=True)
def _no_pg_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PG_BEAT_DATABASE_URL",
        "PG_BEAT_SCHEMA",
        "PG_BEAT_GROUP",
        "PG_BEAT_REPLICA_NAME",
        "PG_BEAT_POOL_MODE",
        "PG_BEAT_LISTEN_URL",
        "PG_BEAT_LIVENESS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = Settings(database_url=URL)
    assert settings.schema is None and settings.group == "default"
    assert settings.replica_name == f"{socket.gethostname()}:{os.getpid()}"
    assert (settings.lease_ttl, settings.heartbeat_interval) == (5.0, 1.0)
    assert settings.lease_ttl >= 3 * settings.heartbeat_interval
    assert settings.misfire_policy == "fire_once"
    # An ordinary failover behind a transaction pool (a TTL, then a standby's check) is no
    # misfire (invariant 19).
    assert settings.misfire_grace_time >= settings.lease_ttl + 2 * settings.heartbeat_interval
    assert settings.on_hang == "exit"
    assert settings.sync_config is True and settings.metrics_port is None


def test_default_replica_name() -> None:
    assert default_replica_name() == f"{socket.gethostname()}:{os.getpid()}"


def test_settings_are_frozen() -> None:
    settings = Settings(database_url=URL)
    with pytest.raises(AttributeError):
        settings.lease_ttl = 1.0  # type: ignore[misc]


def test_ttl_exactly_three_heartbeats_is_enough() -> None:
    Settings(database_url=URL, lease_ttl=3.0, heartbeat_interval=1.0, publish_margin=0.5)


SECONDS = [
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
]


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, "5", None], ids=repr)
def test_durations_must_be_positive_seconds(name: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(database_url=URL, **{name: value})
    assert f"pg_beat_{name} must be a positive number of seconds" in str(caught.value)


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"lease_ttl": 2.9, "heartbeat_interval": 1.0}, "pg_beat_lease_ttl (2.9s) must be at least 3x"),
    ({"lease_ttl": 5.0, "heartbeat_interval": 2.0}, "pg_beat_heartbeat_interval (2s)"),
    ({"publish_margin": -0.1}, "pg_beat_publish_margin (-0.1s) must be >= 0"),
    ({"publish_margin": 4.0}, "below pg_beat_lease_ttl - pg_beat_heartbeat_interval"),
    ({"on_hang": "restart"}, "pg_beat_on_hang must be one of exit, release, got 'restart'"),
    ({"misfire_policy": "all"}, "pg_beat_misfire_policy must be one of fire_once, skip, catch_up"),
    ({"catch_up_limit": 0}, "pg_beat_catch_up_limit must be a whole number >= 1, got 0"),
    ({"catch_up_limit": 2.5}, "pg_beat_catch_up_limit"),
    ({"catch_up_limit": 1001}, "pg_beat_catch_up_limit must be at most 1000"),
    ({"catch_up_limit": 10**6}, "got 1000000"),
    ({"batch_size": -1}, "pg_beat_batch_size must be a whole number >= 1"),
    ({"group": ""}, "pg_beat_group"),
    ({"replica_name": ""}, "pg_beat_replica_name"),
    ({"database_url": "mysql://u@h/db"}, "unsupported database URL scheme 'mysql'"),
    ({"database_url": "not a url"}, "invalid database URL"),
    ({"schema": "with-dash"}, "pg_beat_schema must be a plain identifier"),
    ({"schema": "beat;drop"}, "pg_beat_schema"),
    ({"schema": "1st"}, "pg_beat_schema"),
]


@pytest.mark.parametrize(("values", "text"), INVALID, ids=[t for _, t in INVALID])
def test_invalid_settings_name_the_setting(values: dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**{"database_url": URL, **values})
    assert text in str(caught.value)
    assert isinstance(caught.value, PgBeatError)


@pytest.mark.parametrize("schema", ["beat", "Mixed", "_private", "s1"])
def test_schema_names_accepted(schema: str) -> None:
    assert Settings(database_url=URL, schema=schema).schema == schema


def test_release_on_hang_is_accepted() -> None:
    assert Settings(database_url=URL, on_hang="release").on_hang == "release"


# --- from_celery ---------------------------------------------------------------------------------


def test_from_celery_reads_every_prefixed_key() -> None:
    conf = {
        "pg_beat_database_url": URL,
        "pg_beat_schema": "beat",
        "pg_beat_group": "billing",
        "pg_beat_replica_name": "beat-1",
        "pg_beat_lease_ttl": 9.0,
        "pg_beat_heartbeat_interval": 3,
        "pg_beat_misfire_policy": "skip",
        "pg_beat_batch_size": 50,
        "pg_beat_sync_config": False,
        "pg_beat_metrics_port": 9808,
        "broker_url": "redis://",  # not ours: ignored
    }
    settings = Settings.from_celery(conf)
    assert (settings.schema, settings.group, settings.replica_name) == ("beat", "billing", "beat-1")
    assert (settings.lease_ttl, settings.heartbeat_interval) == (9.0, 3)
    assert (settings.misfire_policy, settings.batch_size) == ("skip", 50)
    assert settings.sync_config is False and settings.metrics_port == 9808


#: A value other than the default for every setting: each must arrive from its pg_beat_ key.
NOT_DEFAULT: dict[str, Any] = {
    "database_url": "postgresql://other@db/app",
    "schema": "beat",
    "group": "billing",
    "replica_name": "beat-9",
    "lease_ttl": 12.0,
    "heartbeat_interval": 2.0,
    "hang_timeout": 7.0,
    "on_hang": "release",
    "publish_margin": 2.5,
    "terminate_hung_leader": False,
    "misfire_policy": "catch_up",
    "misfire_grace_time": 3.0,
    "catch_up_limit": 7,
    "batch_size": 11,
    "statement_timeout": 6.0,
    "lock_timeout": 1.5,
    "idle_in_transaction_timeout": 9.0,
    "connect_timeout": 4.0,
    "run_retention": 3600.0,
    "replica_stale_after": 30.0,
    "sync_config": False,
    "config_owner": "billing-app",
    "config_prune": True,
    "metrics_port": 9808,
    "metrics_address": "127.0.0.1",
    "pool_mode": "transaction",
    "listen_url": "postgresql://other@db-direct/app",
    "poll_interval": 0.5,
    "max_message_bytes": 4096,
    "liveness_file": "/run/pg-beat/alive.json",
}


def test_every_setting_is_read_from_its_pg_beat_key() -> None:
    defaults = Settings(database_url=URL)
    assert set(NOT_DEFAULT) == {item.name for item in fields(Settings)}  # one per setting
    assert all(getattr(defaults, k) != v for k, v in NOT_DEFAULT.items())
    settings = Settings.from_celery({f"pg_beat_{k}": v for k, v in NOT_DEFAULT.items()})
    assert {k: getattr(settings, k) for k in NOT_DEFAULT} == NOT_DEFAULT


def test_from_a_real_celery_conf() -> None:
    app = Celery("config-test", set_as_current=False)
    app.conf.update(pg_beat_database_url=URL, pg_beat_lease_ttl=6.0, pg_beat_group="g")
    try:
        settings = Settings.from_celery(app.conf)
    finally:
        app.close()
    assert (settings.database_url, settings.lease_ttl, settings.group) == (URL, 6.0, "g")


def test_none_means_default() -> None:
    settings = Settings.from_celery({"pg_beat_database_url": URL, "pg_beat_lease_ttl": None})
    assert settings.lease_ttl == 5.0


def test_missing_url_names_both_places() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_celery({})
    assert "pg_beat_database_url" in str(caught.value)
    assert "PG_BEAT_DATABASE_URL" in str(caught.value)


def test_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_BEAT_DATABASE_URL", "postgres://env@h/db")
    assert Settings.from_celery({}).database_url == "postgres://env@h/db"
    # The Celery setting wins over the environment.
    assert Settings.from_celery({"pg_beat_database_url": URL}).database_url == URL


def test_environment_fills_replica_schema_and_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_BEAT_REPLICA_NAME", "beat-from-env")
    monkeypatch.setenv("PG_BEAT_SCHEMA", "env_schema")
    monkeypatch.setenv("PG_BEAT_GROUP", "env-group")
    settings = Settings.from_celery({"pg_beat_database_url": URL})
    assert (settings.replica_name, settings.schema, settings.group) == (
        "beat-from-env",
        "env_schema",
        "env-group",
    )
    settings = Settings.from_celery(
        {"pg_beat_database_url": URL, "pg_beat_replica_name": "conf", "pg_beat_group": "cg"}
    )
    assert (settings.replica_name, settings.schema, settings.group) == ("conf", "env_schema", "cg")


def test_invalid_value_from_celery_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="pg_beat_heartbeat_interval"):
        Settings.from_celery({"pg_beat_database_url": URL, "pg_beat_heartbeat_interval": -1})


def test_the_readme_documents_every_setting_and_no_other() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = set(re.findall(r"^\| `pg_beat_(\w+)` \|", readme, re.MULTILINE))
    assert documented == {item.name for item in fields(Settings)}
