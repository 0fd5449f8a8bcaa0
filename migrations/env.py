"""Alembic environment: migrates the database named by ``-x url=`` or by pg_beat's settings."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Engine, text

from pg_beat.migrate import migration_engine
from pg_beat.models import Base

config = context.config


def _setting(key: str, env: str) -> str | None:
    value = config.attributes.get(key) or context.get_x_argument(as_dictionary=True).get(key)
    return value or os.environ.get(env)


def run_migrations() -> None:
    url = _setting("url", "PG_BEAT_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit(
            "no database URL: pass -x url=postgresql://... or set PG_BEAT_DATABASE_URL"
        )
    schema = _setting("schema", "PG_BEAT_SCHEMA")
    engine = migration_engine(url)
    try:
        _migrate(engine, schema)
    finally:
        engine.dispose()


def _migrate(engine: Engine, schema: str | None) -> None:
    with engine.connect() as connection:
        if schema:
            quoted = connection.dialect.identifier_preparer.quote_schema(schema)
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
            connection.execute(text(f"SET search_path TO {quoted}"))
            connection.commit()
            # The models carry no schema; tell autogenerate/check which one we compare.
            connection.dialect.default_schema_name = schema
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table="pg_beat_alembic_version",
            version_table_schema=schema,
            compare_type=True,
            # Our version table is not a model; never report it as drift.
            include_name=lambda name, type_, _parent: (
                not (type_ == "table" and name == "pg_beat_alembic_version")
            ),
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("pg_beat migrations run online only: give a database URL")
run_migrations()
