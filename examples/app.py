"""A minimal Celery app scheduled by pg_beat.

export PG_BEAT_DATABASE_URL=postgresql://postgres@127.0.0.1/pg_beat_example
pg-beat db upgrade
celery -A examples.app worker -l info
celery -A examples.app beat -S pg_beat:Scheduler -l info
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("examples", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    beat_scheduler="pg_beat:Scheduler",
    pg_beat_database_url=os.environ.get("PG_BEAT_DATABASE_URL"),
    beat_schedule={
        "heartbeat-every-second": {"task": "examples.app.heartbeat", "schedule": 1.0},
        "tidy-every-5-minutes": {
            "task": "examples.app.tidy",
            "schedule": __import__("celery.schedules").schedules.crontab(minute="*/5"),
        },
    },
    timezone="UTC",
)


@app.task(name="examples.app.heartbeat")
def heartbeat() -> str:
    return "beat"


@app.task(name="examples.app.tidy")
def tidy() -> str:
    return "tidied"
