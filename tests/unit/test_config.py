"""Settings: defaults, validation that names the setting, and reading Celery's conf and the env."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import fields
from typing import Any

import pytest
from celery import Celery

from pg_beat.config import Settings, default_replica_name, env_name, setting_types
from pg_beat.exceptions import ConfigurationError, PgBeatError
from pg_beat.publish import broker

URL = "postgresql://pg@db.example/app"


@pytest.fixture(autouse=True)
def _no_pg_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for item in fields(Settings):
        monkeypatch.delenv(env_name(item.name), raising=False)


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
    ({"publish_margin": -0.1}, "pg_beat_publish_margin (-0.1s) must be at least 0.1s"),
    ({"publish_margin": 4.0}, "below pg_beat_lease_ttl - pg_beat_heartbeat_interval"),
    ({"publish_margin": "1"}, "pg_beat_publish_margin must be a number of seconds, got '1'"),
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


@pytest.mark.parametrize("margin", [0, 0.0, 0.05, 0.0999, math.nan])
def test_a_publish_margin_below_what_the_broker_timeouts_need_is_refused(margin: float) -> None:
    """The broker's connect and socket timeouts are half the margin, never below 0.05 s: a
    smaller margin would let a publish begun before the local deadline outlive the lease."""
    with pytest.raises(ConfigurationError) as caught:
        Settings(database_url=URL, publish_margin=margin)
    message = str(caught.value)
    assert message.startswith(f"pg_beat_publish_margin ({margin:g}s) must be at least 0.1s")
    assert "\n" not in message


def test_the_smallest_publish_margin_fits_a_connect_and_a_write() -> None:
    margin = broker.MIN_PUBLISH_MARGIN
    assert Settings(database_url=URL, publish_margin=margin).publish_margin == margin
    timeout = broker.connection_options("redis", margin)["connect_timeout"]
    assert timeout == broker.MIN_TIMEOUT and 2 * timeout <= margin
    # Below it the timeouts stop shrinking with the margin: that is why it is the minimum.
    assert broker.connection_options("redis", margin / 2)["connect_timeout"] == timeout


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
    "broker_handover_after": 12.5,
    "overlap_policy": "buffer_one",
    "max_runtime": 120.0,
    "run_once": True,
    "track_runs": True,
    "overdue_factor": 3.0,
    "worker_heartbeat_interval": 5.0,
    "worker_gone_after": 30.0,
    "track_queue_size": 500,
    "track_flush_interval": 0.05,
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


# --- the environment -----------------------------------------------------------------------------

#: For the settings whose default is None: a value other than NOT_DEFAULT's.
OTHER: dict[str, Any] = {
    "database_url": URL,
    "schema": "conf_schema",
    "config_owner": "conf-app",
    "metrics_port": 9100,
    "listen_url": "postgresql://conf@db-direct/app",
    "liveness_file": "/tmp/conf-alive.json",
}


def as_env(value: Any) -> str:
    """How an operator writes ``value`` in an environment variable."""
    if isinstance(value, bool):
        return "yes" if value else "off"
    return str(value)


def every_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in NOT_DEFAULT.items():
        monkeypatch.setenv(env_name(name), as_env(value))


def test_the_environment_variable_of_a_setting_is_its_name_in_capitals() -> None:
    assert env_name("lease_ttl") == "PG_BEAT_LEASE_TTL"
    assert env_name("database_url") == "PG_BEAT_DATABASE_URL"


@pytest.mark.parametrize("name", [item.name for item in fields(Settings)])
def test_every_setting_comes_from_its_environment_variable(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One setting at a time, so a setting added without environment support (or without a
    NOT_DEFAULT value) fails here by name."""
    monkeypatch.setenv(env_name(name), as_env(NOT_DEFAULT[name]))
    # A lease long enough for NOT_DEFAULT's heartbeat and publish margin.
    conf = {"database_url": URL, "lease_ttl": 12.0}
    conf.pop(name, None)
    settings = Settings.from_celery({f"pg_beat_{k}": v for k, v in conf.items()})
    assert getattr(settings, name) == NOT_DEFAULT[name]
    assert type(getattr(settings, name)) is type(NOT_DEFAULT[name])


def test_the_environment_fills_every_setting_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    every_env_value(monkeypatch)
    settings = Settings.from_celery({})
    assert {k: getattr(settings, k) for k in NOT_DEFAULT} == NOT_DEFAULT


def test_the_celery_config_wins_over_the_environment_for_every_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every_env_value(monkeypatch)
    defaults = Settings(database_url=URL)
    conf = {
        name: OTHER[name] if getattr(defaults, name) is None else getattr(defaults, name)
        for name in NOT_DEFAULT
    }
    conf["database_url"] = URL
    assert all(conf[k] != v for k, v in NOT_DEFAULT.items())
    settings = Settings.from_celery({f"pg_beat_{k}": v for k, v in conf.items()})
    assert {k: getattr(settings, k) for k in conf} == conf


def test_a_setting_set_to_none_in_the_celery_config_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PG_BEAT_LEASE_TTL", "9")
    conf = {"pg_beat_database_url": URL, "pg_beat_lease_ttl": None}
    assert Settings.from_celery(conf).lease_ttl == 9.0


def test_an_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_BEAT_LEASE_TTL", "")
    monkeypatch.setenv("PG_BEAT_SCHEMA", "")
    settings = Settings.from_celery({"pg_beat_database_url": URL})
    assert (settings.lease_ttl, settings.schema) == (5.0, None)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("true", True), ("TRUE", True), ("1", True), ("yes", True), (" on ", True)],
        *[("false", False), ("0", False), ("No", False), ("off", False)],
    ],
)
def test_booleans_from_the_environment(
    text: str, value: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_BEAT_CONFIG_PRUNE", text)
    assert Settings.from_celery({"pg_beat_database_url": URL}).config_prune is value


BAD_TEXT = {bool: ("maybe", "must be true or false"), int: ("9808.5", "must be a whole number")}
BAD_TEXT[float] = ("5s", "must be a number of seconds")
TYPED = [(n, k) for n, k in setting_types().items() if k is not str]


@pytest.mark.parametrize(("name", "kind"), TYPED, ids=[n for n, _ in TYPED])
def test_a_value_of_the_wrong_type_names_the_variable(
    name: str, kind: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, expected = BAD_TEXT[kind]
    monkeypatch.setenv(env_name(name), text)
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_celery({"pg_beat_database_url": URL})
    assert str(caught.value) == f"environment variable {env_name(name)} {expected}" + (
        f" (1/true/yes/on or 0/false/no/off), got {text!r}" if kind is bool else f", got {text!r}"
    )


def test_settings_are_parsed_as_their_declared_types() -> None:
    types = setting_types()
    assert set(types) == {item.name for item in fields(Settings)}
    assert types["lease_ttl"] is float and types["batch_size"] is int
    assert types["metrics_port"] is int and types["config_prune"] is bool
    assert types["schema"] is str and types["on_hang"] is str


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("PG_BEAT_LEASE_TTL", "-1", "pg_beat_lease_ttl must be a positive number of seconds"),
        ("PG_BEAT_ON_HANG", "restart", "pg_beat_on_hang must be one of exit, release"),
        ("PG_BEAT_BATCH_SIZE", "0", "pg_beat_batch_size must be a whole number >= 1, got 0"),
        ("PG_BEAT_PUBLISH_MARGIN", "0", "pg_beat_publish_margin (0s) must be at least 0.1s"),
    ],
)
def test_an_invalid_value_from_the_environment_names_the_variable(
    variable: str, text: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, text)
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_celery({"pg_beat_database_url": URL})
    assert message in str(caught.value)
    assert str(caught.value).endswith(f"(from the environment: {variable})")


def test_an_invalid_value_from_the_celery_config_does_not_blame_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PG_BEAT_GROUP", "env-group")
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_celery({"pg_beat_database_url": URL, "pg_beat_lease_ttl": -1})
    assert "environment" not in str(caught.value)
