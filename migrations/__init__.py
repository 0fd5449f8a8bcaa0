"""Alembic environment and revisions of pg_beat (installed as ``pg_beat.migrations``)."""
