"""One adapter per scheduler: seed it (parent process), start it, tick it, hook its publishes and
edit one of its schedules (child process).

Every scheduler publishes the unregistered task ``bench.noop`` with ``app.send_task`` through
kombu to Redis (the real producer path), and is seeded with the same :class:`Layout`.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import psycopg
from _common import (
    TASK,
    Layout,
    Recorder,
    create_database,
    drop_database,
    flush_redis,
    pg_url,
    redis_url,
)

UTC = timezone.utc
LEADER_TIMEOUT = 30.0


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def base_app(redis_db: int) -> Any:
    from celery import Celery

    app = Celery("bench", set_as_current=True)
    app.conf.update(
        broker_url=redis_url(redis_db),
        timezone="UTC",
        enable_utc=True,
        # No backend_cleanup entry: every scheduler holds exactly the seeded schedules.
        result_expires=None,
        broker_connection_retry_on_startup=True,
    )
    return app


class EditNotSupported(Exception):
    """The scheduler has no way to change a schedule while it runs."""


class Adapter:
    """The parent calls ``prepare``/``dispose``; a child calls the rest, in order."""

    key: ClassVar[str]
    label: ClassVar[str]
    edit_path: ClassVar[str]

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.db: str = spec["db"]
        self.redis_db: int = spec["redis_db"]
        self.workdir = Path(spec["workdir"])
        self.sched: Any = None

    # parent side
    def prepare(self, layout: Layout) -> None:
        raise NotImplementedError

    def dispose(self) -> None:
        """Drop what ``prepare`` made."""

    # child side
    def make_app(self, layout: Layout) -> Any:
        """The Celery app, configured, with the scheduler class imported (before the baseline)."""
        raise NotImplementedError

    def start(self, app: Any, recorder: Recorder) -> dict[str, float]:
        """Construct the scheduler (non-lazy), hook ``recorder`` into it and run its first tick;
        return a time breakdown."""
        raise NotImplementedError

    def idle_tick(self) -> None:
        self.sched.tick()

    def tick(self) -> float:
        return float(self.sched.tick())

    def hook(self, recorder: Recorder) -> None:
        """Record every publish with the due time the scheduler itself was serving."""
        original = self.sched.apply_async

        def apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
            due = None
            run_every = getattr(entry.schedule, "run_every", None)
            if entry.last_run_at is not None and run_every is not None:
                last = entry.last_run_at
                last = last if last.tzinfo else last.replace(tzinfo=UTC)
                due = (last + run_every).timestamp()
            result = original(entry, *args, **kwargs)
            recorder.record(entry.name, due, time.time())
            return result

        self.sched.apply_async = apply_async

    def edit(self, index: int, layout: Layout) -> float:
        """Make schedule ``index`` due now through the scheduler's own edit path; return the
        wall-clock time just before the write that commits the edit."""
        raise EditNotSupported

    def warm_up(self) -> None:
        """Connect the scheduler's producer with one message, as its first publish would: the
        broker connection is set up once per process and is no part of any figure."""
        self.sched.app.send_task(TASK, [-1], producer=self.sched.producer)


# --- pg_beat -------------------------------------------------------------------------------

PG_BEAT_SEED = """
INSERT INTO pg_beat_schedules (name, task, kind, interval_seconds, args, next_run_at, last_due_at)
SELECT 'bench-' || lpad(i::text, 6, '0'), %(task)s, 'interval', %(interval)s,
       jsonb_build_array(i), d.due, d.due - make_interval(secs => %(interval)s)
FROM generate_series(0, %(count)s - 1) AS i,
LATERAL (SELECT CASE WHEN i < %(burst)s THEN to_timestamp(%(burst_at)s)
              ELSE to_timestamp(%(start)s)
                   + make_interval(secs => (i - %(burst)s) * %(spread)s / %(rest)s)
         END AS due) AS d
"""


def seed_params(layout: Layout) -> dict[str, Any]:
    return {
        **layout.as_dict(),
        "task": TASK,
        "rest": float(max(layout.count - layout.burst, 1)),
    }


class PgBeat(Adapter):
    key = "pg_beat"
    label = "pg_beat"
    edit_path = "plain SQL: UPDATE pg_beat_schedules SET next_run_at = now()"

    def prepare(self, layout: Layout) -> None:
        from pg_beat import migrate

        create_database(self.db)
        migrate.upgrade(pg_url(self.db))
        with psycopg.connect(pg_url(self.db), autocommit=True) as conn:
            conn.execute(PG_BEAT_SEED, seed_params(layout))
            conn.execute("VACUUM ANALYZE pg_beat_schedules")

    def dispose(self) -> None:
        drop_database(self.db)

    def make_app(self, layout: Layout) -> Any:
        from pg_beat.scheduler import Scheduler  # noqa: F401  (imported before the baseline)

        app = base_app(self.redis_db)
        app.conf.update(beat_scheduler="pg_beat:Scheduler", pg_beat_database_url=pg_url(self.db))
        return app

    def start(self, app: Any, recorder: Recorder) -> dict[str, float]:
        from pg_beat.scheduler import Scheduler

        t0 = time.perf_counter()
        self.sched = Scheduler(app=app, lazy=False)
        self.hook(recorder)
        t1 = time.perf_counter()
        while self.sched.state.epoch is None:
            if time.perf_counter() - t1 > LEADER_TIMEOUT:
                raise RuntimeError(f"pg_beat did not become leader in {LEADER_TIMEOUT:g} s")
            time.sleep(0.0005)
        t2 = time.perf_counter()
        # The first tick's real work; tick() would go on to sleep on LISTEN until the next due.
        self.sched.dispatcher.step()
        t3 = time.perf_counter()
        return {"construct": t1 - t0, "leader": t2 - t1, "first_step": t3 - t2}

    def idle_tick(self) -> None:
        before = self.sched.dispatcher.sent_total
        self.sched.dispatcher.step()
        if self.sched.dispatcher.sent_total != before:
            raise RuntimeError("pg_beat sent something during the idle-tick measurement")

    def hook(self, recorder: Recorder) -> None:
        def on_sent(claim: Any, published: float) -> None:
            recorder.record(claim.schedule, claim.due_at.timestamp(), published)

        self.sched.dispatcher.on_sent = on_sent

    def edit(self, index: int, layout: Layout) -> float:
        conn = getattr(self, "_editor", None)
        if conn is None:
            conn = self._editor = psycopg.connect(pg_url(self.db), autocommit=True)
        stamp = time.time()
        conn.execute(
            "UPDATE pg_beat_schedules SET next_run_at = now() WHERE name = %s",
            (layout.name(index),),
        )
        return stamp


# --- Celery's default PersistentScheduler --------------------------------------------------


def beat_schedule(layout: Layout) -> dict[str, dict[str, Any]]:
    every = timedelta(seconds=layout.interval)
    return {
        layout.name(i): {"task": TASK, "schedule": every, "args": (i,)} for i in range(layout.count)
    }


class Persistent(Adapter):
    key = "celery"
    label = "celery-default"
    edit_path = "none: beat_schedule is read at start (restart required)"

    @property
    def filename(self) -> str:
        return str(self.workdir / f"{self.db}.shelve")

    def prepare(self, layout: Layout) -> None:
        # A shelve as a previous run of beat left it, with last_run_at giving each entry the
        # layout's first due time (a fresh shelve would make every entry due start + interval).
        from celery.beat import PersistentScheduler

        app = base_app(self.redis_db)
        app.conf.beat_schedule = beat_schedule(layout)
        sched = PersistentScheduler(app=app, schedule_filename=self.filename, lazy=False)
        for name, entry in sched.schedule.items():
            index = int(name.removeprefix("bench-"))
            entry.last_run_at = utc(layout.first_due(index) - layout.interval)
        sched.sync()
        sched.close()

    def dispose(self) -> None:
        for path in self.workdir.glob(f"{self.db}.shelve*"):
            path.unlink()

    def make_app(self, layout: Layout) -> Any:
        from celery.beat import PersistentScheduler  # noqa: F401

        app = base_app(self.redis_db)
        app.conf.beat_schedule = beat_schedule(layout)  # configuration: part of the baseline
        return app

    def start(self, app: Any, recorder: Recorder) -> dict[str, float]:
        from celery.beat import PersistentScheduler

        t0 = time.perf_counter()
        self.sched = PersistentScheduler(app=app, schedule_filename=self.filename, lazy=False)
        self.hook(recorder)
        t1 = time.perf_counter()
        self.sched.tick()
        return {"construct": t1 - t0, "first_tick": time.perf_counter() - t1}


# --- RedBeat -------------------------------------------------------------------------------


class RedBeat(Adapter):
    key = "redbeat"
    label = "redbeat"
    edit_path = "RedBeatSchedulerEntry(...).save() + entry.reschedule()"

    def _app(self) -> Any:
        app = base_app(self.redis_db)
        app.conf.update(
            beat_scheduler="redbeat.RedBeatScheduler", redbeat_redis_url=app.conf.broker_url
        )
        return app

    def prepare(self, layout: Layout) -> None:
        from redbeat import RedBeatSchedulerEntry
        from redbeat.schedulers import get_redis

        flush_redis(self.redis_db)
        app = self._app()
        every = timedelta(seconds=layout.interval)
        scores: dict[str, float] = {}
        for i in range(layout.count):
            last = utc(layout.first_due(i) - layout.interval)
            entry = RedBeatSchedulerEntry(
                layout.name(i), TASK, every, args=[i], app=app, last_run_at=last
            )
            entry.save()
            scores[entry.key] = math.floor(layout.first_due(i))
        # save() scores an entry last_run_at + (time left from *now*), right only when
        # last_run_at is about now. Write the score RedBeat itself writes after running an
        # entry, as a beat that has been running would have left it: the due time in whole
        # seconds (its to_timestamp() truncates, and tick() compares with a truncated now).
        client = get_redis(app)
        keys = list(scores)
        for chunk in range(0, len(keys), 10_000):
            part = {k: scores[k] for k in keys[chunk : chunk + 10_000]}
            client.zadd(app.redbeat_conf.schedule_key, part)

    def dispose(self) -> None:
        flush_redis(self.redis_db)

    def make_app(self, layout: Layout) -> Any:
        from redbeat import RedBeatScheduler  # noqa: F401

        return self._app()

    def start(self, app: Any, recorder: Recorder) -> dict[str, float]:
        from redbeat import RedBeatScheduler
        from redbeat.schedulers import acquire_distributed_beat_lock

        t0 = time.perf_counter()
        self.sched = RedBeatScheduler(app=app, lazy=False)
        self.hook(recorder)
        # What `celery beat` does on beat_init: take RedBeat's lock (tick() extends it).
        acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=self.sched))
        t1 = time.perf_counter()
        self.sched.tick()
        return {"construct": t1 - t0, "first_tick": time.perf_counter() - t1}

    def edit(self, index: int, layout: Layout) -> float:
        from redbeat import RedBeatSchedulerEntry

        every = timedelta(seconds=layout.interval)
        entry = RedBeatSchedulerEntry(
            layout.name(index), TASK, every, args=[index], app=self.sched.app
        )
        stamp = time.time()
        entry.save()
        # save() keeps the stored last_run_at (HSETNX); reschedule() makes the entry due now.
        entry.reschedule(last_run_at=datetime.now(UTC) - every)
        return stamp


# --- sqlalchemy-celery-beat ----------------------------------------------------------------

SQLA_SEED = """
INSERT INTO celery_periodictask
    (name, task, args, kwargs, headers, one_off, enabled, total_run_count, discriminator,
     schedule_id, last_run_at, date_changed, description)
SELECT 'bench-' || lpad(i::text, 6, '0'), %(task)s, '[' || i || ']', '{}', '{}', false, true, 0,
       'intervalschedule', %(schedule_id)s,
       d.due - make_interval(secs => %(interval)s), now(), ''
FROM generate_series(0, %(count)s - 1) AS i,
LATERAL (SELECT CASE WHEN i < %(burst)s THEN to_timestamp(%(burst_at)s)
              ELSE to_timestamp(%(start)s)
                   + make_interval(secs => (i - %(burst)s) * %(spread)s / %(rest)s)
         END AS due) AS d
"""


class SqlAlchemyBeat(Adapter):
    key = "sqlalchemy"
    label = "sqlalchemy-celery-beat"
    edit_path = "ORM: session.commit() of PeriodicTask.last_run_at"

    @property
    def url(self) -> str:
        return pg_url(self.db, "postgresql+psycopg")

    def _engine(self) -> Any:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        # As the library builds its own: its models live in 'celery_schema', mapped to public.
        engine = create_engine(self.url, poolclass=NullPool)
        return engine.execution_options(schema_translate_map={"celery_schema": None})

    def prepare(self, layout: Layout) -> None:
        from sqlalchemy_celery_beat.session import SessionManager

        create_database(self.db)
        SessionManager().prepare_models(self._engine())  # its own create_all
        with psycopg.connect(pg_url(self.db), autocommit=True) as conn:
            schedule_id = conn.execute(
                "INSERT INTO celery_intervalschedule (every, period) VALUES (%s, 'seconds') "
                "RETURNING id",
                (int(layout.interval),),
            ).fetchone()[0]  # type: ignore[index]
            conn.execute(SQLA_SEED, {**seed_params(layout), "schedule_id": schedule_id})
            conn.execute(
                "INSERT INTO celery_periodictaskchanged (id, last_update) VALUES (1, now())"
            )
            conn.execute("VACUUM ANALYZE celery_periodictask")

    def dispose(self) -> None:
        drop_database(self.db)

    def make_app(self, layout: Layout) -> Any:
        from sqlalchemy_celery_beat.schedulers import DatabaseScheduler  # noqa: F401

        app = base_app(self.redis_db)
        app.conf.update(
            beat_scheduler="sqlalchemy_celery_beat.schedulers:DatabaseScheduler",
            beat_dburi=self.url,
        )
        return app

    def start(self, app: Any, recorder: Recorder) -> dict[str, float]:
        from sqlalchemy_celery_beat.schedulers import DatabaseScheduler

        t0 = time.perf_counter()
        self.sched = DatabaseScheduler(app=app, lazy=False)
        self.hook(recorder)
        t1 = time.perf_counter()
        self.sched.tick()
        return {"construct": t1 - t0, "first_tick": time.perf_counter() - t1}

    def edit(self, index: int, layout: Layout) -> float:
        from sqlalchemy import select
        from sqlalchemy.orm import Session
        from sqlalchemy_celery_beat.models import PeriodicTask

        engine = getattr(self, "_editor", None)
        if engine is None:
            engine = self._editor = self._engine()
        with Session(engine, expire_on_commit=False) as session:
            task = session.scalar(select(PeriodicTask).filter_by(name=layout.name(index)))
            assert task is not None
            task.last_run_at = datetime.now(UTC) - timedelta(seconds=layout.interval)
            stamp = time.time()
            session.commit()  # its after_update listener bumps celery_periodictaskchanged
        return stamp


ADAPTERS: dict[str, type[Adapter]] = {
    cls.key: cls for cls in (PgBeat, Persistent, RedBeat, SqlAlchemyBeat)
}
