"""Backlog benchmark: one replica starts cold after a week of downtime and drains the backlog,
pg_beat side by side with Celery's default PersistentScheduler, RedBeat and
sqlalchemy-celery-beat.

    .venv/bin/python benchmarks/bench_backlog.py --quick          # smoke run, under 2 minutes
    .venv/bin/python benchmarks/bench_backlog.py --json out.json  # the full run

Each scheduler runs in a fresh child process (this script with ``--child``). The parent seeds
the backlog before it starts the child and removes it after. See benchmarks/README.md
("Backlog benchmark") for what is seeded and how each figure is measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from _adapters import ADAPTERS, base_app, utc
from _common import (
    REDIS_HOST,
    REDIS_PORT,
    TASK,
    ResultFile,
    beside_loop,
    create_database,
    drop_database,
    finish,
    flush_redis,
    fmt_seconds,
    log_line,
    percentile,
    pg_url,
    render_table,
    run_and_report,
    run_child,
)

HERE = Path(__file__).resolve()
GRACE = 1.0  # s: pg_beat's default misfire grace time; a tick due within it of the start is on
#              time, not backlog
POLL = 0.2  # s between the driver's looks at what was published
TARGETS = {"settle": 30.0, "ontime_p99": 1.0, "claim_tx": 0.1}
QUEUE = "celery"  # Celery's default queue, where every scheduler here publishes


# --- what is seeded ------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """Schedules left behind by ``days`` of downtime, and five that are on time.

    ``t0`` (a whole UNIX second) is the cold start: the child constructs the scheduler then.
    Every backlog schedule's next due time lies in one minute ``days`` before ``t0``'s minute:
    the crontab ones at its start, the 1 s ones on whole seconds, the 60 s ones spread evenly.
    """

    cron: int
    sec: int
    minute: int
    ontime: int
    t0: float
    end_after: float
    catch_up_limit: int = 10
    days: float = 7.0

    #: class -> (label, interval in s, misfire policy); crontab is ``* * * * *`` in UTC
    CLASSES: ClassVar[dict[str, tuple[str, float, str]]] = {
        "cron": ("crontab * * * * *, fire_once", 60.0, "fire_once"),
        "sec": ("every 1 s, fire_once, end_time", 1.0, "fire_once"),
        "min": ("every 60 s, catch_up (limit 10)", 60.0, "catch_up"),
        "ontime": ("on time, every 1 s", 1.0, "fire_once"),
    }
    BACKLOG: ClassVar[tuple[str, ...]] = ("cron", "sec", "min")

    @property
    def base(self) -> float:
        return math.floor(self.t0 / 60.0) * 60.0 - self.days * 86400.0

    @property
    def end_time(self) -> float:
        """When the 1 s backlog schedules end (pg_beat's ``end_time``)."""
        return self.t0 + self.end_after

    def count(self, cls: str) -> int:
        return {"cron": self.cron, "sec": self.sec, "min": self.minute, "ontime": self.ontime}[cls]

    @property
    def backlog_total(self) -> int:
        return sum(self.count(c) for c in self.BACKLOG)

    @staticmethod
    def name(cls: str, i: int) -> str:
        return f"{cls}-{i:06d}"

    def entries(self) -> Iterator[tuple[str, str, int]]:
        """(class, name, index) of every schedule, in seeding order."""
        for cls in self.CLASSES:
            for i in range(self.count(cls)):
                yield cls, self.name(cls, i), i

    def due(self, cls: str, i: int) -> float:
        """The seeded next due time (UNIX s)."""
        if cls == "cron":
            return self.base
        if cls == "sec":
            return self.base + i % 60
        if cls == "min":
            return self.base + i * 60.0 / self.minute
        return self.t0

    def last(self, cls: str, i: int) -> float:
        """The seeded last due (or last run) time: one period before the next due time."""
        return self.due(cls, i) - self.CLASSES[cls][1]

    def expected_late(self, cls: str) -> int:
        """Late ticks the issue expects of one schedule: 1 (fire_once), the limit (catch_up)."""
        return self.catch_up_limit if self.CLASSES[cls][2] == "catch_up" else 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify(name: str) -> str:
    return name.split("-", 1)[0]


def due_from_last(cls: str, last: float) -> float:
    """A peer's due time, from the ``last_run_at`` of the entry it sent."""
    if cls == "cron":
        return math.floor(last / 60.0) * 60.0 + 60.0  # the next minute (``* * * * *``, UTC)
    return last + Backlog.CLASSES[cls][1]


# --- seeding, per scheduler (parent side) ----------------------------------------------------

PG_BEAT_SEED = """
INSERT INTO pg_beat_schedules
    (name, task, kind, interval_seconds, args, next_run_at, last_due_at, end_time,
     misfire_policy, catch_up_limit)
SELECT 'cron-' || lpad(i::text, 6, '0'), %(task)s, 'crontab', NULL::float8, jsonb_build_array(i),
       to_timestamp(%(base)s), to_timestamp(%(base)s - 60), NULL::timestamptz, NULL::text,
       NULL::int
FROM generate_series(0, %(cron)s - 1) AS i
UNION ALL
SELECT 'sec-' || lpad(i::text, 6, '0'), %(task)s, 'interval', 1, jsonb_build_array(i),
       to_timestamp(%(base)s + i %% 60), to_timestamp(%(base)s + i %% 60 - 1),
       to_timestamp(%(end_time)s), NULL, NULL
FROM generate_series(0, %(sec)s - 1) AS i
UNION ALL
SELECT 'min-' || lpad(i::text, 6, '0'), %(task)s, 'interval', 60, jsonb_build_array(i),
       to_timestamp(%(base)s + i * 60.0 / %(minute)s),
       to_timestamp(%(base)s + i * 60.0 / %(minute)s - 60), NULL, 'catch_up', %(limit)s
FROM generate_series(0, %(minute)s - 1) AS i
UNION ALL
SELECT 'ontime-' || lpad(i::text, 6, '0'), %(task)s, 'interval', 1, jsonb_build_array(i),
       to_timestamp(%(t0)s), to_timestamp(%(t0)s - 1), NULL, NULL, NULL
FROM generate_series(0, %(ontime)s - 1) AS i
"""

SQLA_SEED = """
INSERT INTO celery_periodictask
    (name, task, args, kwargs, headers, one_off, enabled, total_run_count, discriminator,
     schedule_id, last_run_at, date_changed, description)
SELECT s.name, %(task)s, '[' || s.i || ']', '{}', '{}', false, true, 0, s.discriminator,
       s.schedule_id, to_timestamp(s.last), now(), ''
FROM unnest(%(names)s::text[], %(indexes)s::int[], %(discriminators)s::text[],
            %(schedule_ids)s::int[], %(lasts)s::float8[])
     AS s(name, i, discriminator, schedule_id, last)
"""


def peer_schedule(cls: str, app: Any = None) -> Any:
    """The Celery schedule object of a class (crontab for 'cron', an interval otherwise)."""
    from celery.schedules import crontab

    if cls == "cron":
        return crontab(app=app) if app is not None else crontab()
    return timedelta(seconds=Backlog.CLASSES[cls][1])


class Seeder:
    """Seeds one scheduler's storage with a :class:`Backlog` (parent), then removes it."""

    key: ClassVar[str]
    #: Seconds of seeding at full size (21,005 schedules), for picking the start time.
    seed_estimate: ClassVar[float]
    end_time_note: ClassVar[str]

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.db: str = spec["db"]
        self.workdir = Path(spec["workdir"])

    def prepare(self, backlog: Backlog) -> None:
        raise NotImplementedError

    def dispose(self) -> None:
        """Drop what ``prepare`` made."""


class PgBeatSeeder(Seeder):
    key = "pg_beat"
    seed_estimate = 3.0
    end_time_note = "an end_time {end_after:g} s after the start: no tick after it"

    def prepare(self, backlog: Backlog) -> None:
        from pg_beat import migrate

        create_database(self.db)
        migrate.upgrade(pg_url(self.db))
        params = {
            **backlog.as_dict(),
            "task": TASK,
            "base": backlog.base,
            "end_time": backlog.end_time,
            "limit": backlog.catch_up_limit,
        }
        with psycopg.connect(pg_url(self.db), autocommit=True) as conn:
            conn.execute(PG_BEAT_SEED, params)
            conn.execute("VACUUM ANALYZE pg_beat_schedules")

    def dispose(self) -> None:
        drop_database(self.db)


def beat_schedule(backlog: Backlog) -> dict[str, dict[str, Any]]:
    return {
        name: {"task": TASK, "schedule": peer_schedule(cls), "args": (i,)}
        for cls, name, i in backlog.entries()
    }


class PersistentSeeder(Seeder):
    key = "celery"
    seed_estimate = 8.0
    end_time_note = "no end time: after the late send, one every second"

    @property
    def filename(self) -> str:
        return str(self.workdir / f"{self.db}.shelve")

    def prepare(self, backlog: Backlog) -> None:
        # The shelve a beat that ran until a week ago left, each entry's last_run_at one period
        # before its due time (written by PersistentScheduler itself).
        from celery.beat import PersistentScheduler

        app = base_app(self.spec["redis_db"])
        app.conf.beat_schedule = beat_schedule(backlog)
        sched = PersistentScheduler(app=app, schedule_filename=self.filename, lazy=False)
        lasts = {name: backlog.last(cls, i) for cls, name, i in backlog.entries()}
        for name, entry in sched.schedule.items():
            entry.last_run_at = utc(lasts[name])
        sched.sync()
        sched.close()

    def dispose(self) -> None:
        for path in self.workdir.glob(f"{self.db}.shelve*"):
            path.unlink()


def redbeat_app(spec: dict[str, Any]) -> Any:
    app = base_app(spec["redis_db"])
    app.conf.update(
        beat_scheduler="redbeat.RedBeatScheduler", redbeat_redis_url=app.conf.broker_url
    )
    return app


class RedBeatSeeder(Seeder):
    key = "redbeat"
    seed_estimate = 12.0
    end_time_note = "no end time: after the late send, one every second"

    def prepare(self, backlog: Backlog) -> None:
        from redbeat import RedBeatSchedulerEntry
        from redbeat.schedulers import get_redis

        app = redbeat_app(self.spec)
        scores: dict[str, float] = {}
        for cls, name, i in backlog.entries():
            entry = RedBeatSchedulerEntry(
                name,
                TASK,
                peer_schedule(cls, app),
                args=[i],
                app=app,
                last_run_at=utc(backlog.last(cls, i)),
            )
            entry.save()
            # The score RedBeat itself writes after running an entry: its due time in whole
            # seconds (save() would score it from *now*, as bench_scheduler explains).
            scores[entry.key] = math.floor(backlog.due(cls, i))
        client = get_redis(app)
        keys = list(scores)
        for chunk in range(0, len(keys), 10_000):
            part = {k: scores[k] for k in keys[chunk : chunk + 10_000]}
            client.zadd(app.redbeat_conf.schedule_key, part)

    def dispose(self) -> None:
        flush_redis(self.spec["redis_db"])


class SqlAlchemySeeder(Seeder):
    key = "sqlalchemy"
    seed_estimate = 4.0
    end_time_note = "no end time (`expires` is the message's): one every second"

    def prepare(self, backlog: Backlog) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool
        from sqlalchemy_celery_beat.session import SessionManager

        create_database(self.db)
        engine = create_engine(pg_url(self.db, "postgresql+psycopg"), poolclass=NullPool)
        engine = engine.execution_options(schema_translate_map={"celery_schema": None})
        SessionManager().prepare_models(engine)  # its own create_all
        with psycopg.connect(pg_url(self.db), autocommit=True) as conn:
            ids = {}
            for seconds in (1, 60):
                ids[seconds] = conn.execute(
                    "INSERT INTO celery_intervalschedule (every, period) VALUES (%s, 'seconds') "
                    "RETURNING id",
                    (seconds,),
                ).fetchone()[0]  # type: ignore[index]
            cron_id = conn.execute(
                "INSERT INTO celery_crontabschedule (minute, hour, day_of_week, day_of_month, "
                "month_of_year, timezone) VALUES ('*', '*', '*', '*', '*', 'UTC') RETURNING id"
            ).fetchone()[0]  # type: ignore[index]
            rows = list(backlog.entries())
            conn.execute(
                SQLA_SEED,
                {
                    "task": TASK,
                    "names": [name for _, name, _ in rows],
                    "indexes": [i for _, _, i in rows],
                    "discriminators": [
                        "crontabschedule" if cls == "cron" else "intervalschedule"
                        for cls, _, _ in rows
                    ],
                    "schedule_ids": [
                        cron_id if cls == "cron" else ids[int(Backlog.CLASSES[cls][1])]
                        for cls, _, _ in rows
                    ],
                    "lasts": [backlog.last(cls, i) for cls, _, i in rows],
                },
            )
            conn.execute(
                "INSERT INTO celery_periodictaskchanged (id, last_update) VALUES (1, now())"
            )
            conn.execute("VACUUM ANALYZE celery_periodictask")

    def dispose(self) -> None:
        drop_database(self.db)


SEEDERS: dict[str, type[Seeder]] = {
    cls.key: cls for cls in (PgBeatSeeder, PersistentSeeder, RedBeatSeeder, SqlAlchemySeeder)
}


def redis_client(db: int) -> Any:
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)


# --- the child: instruments ------------------------------------------------------------------


class LogTally(logging.Handler):
    """Counts pg_beat's log records by logger and message template; keeps a few excerpts."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.counts: Counter[str] = Counter()
        self.excerpts: dict[str, list[str]] = {}
        self.step_downs = 0
        self.hangs = 0
        self.takeovers = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            template = f"{record.levelname} {record.name}: {record.msg}"
            self.counts[template] += 1
            if record.name == "pg_beat.watchdog":
                text = str(record.msg)
                self.step_downs += "no longer the leader" in text
                self.hangs += "dispatch loop stuck" in text
                self.takeovers += "now the leader" in text
            kept = self.excerpts.setdefault(template, [])
            if len(kept) < 2:
                at = time.strftime("%H:%M:%S", time.localtime(record.created))
                ms = int(record.msecs)
                kept.append(f"{at}.{ms:03d} {record.getMessage()[:600]}")
        except Exception:  # never break the scheduler's logging
            self.handleError(record)

    def summary(self) -> dict[str, Any]:
        return {
            "step_downs": self.step_downs,
            "hangs": self.hangs,
            "takeovers": self.takeovers,
            "log_counts": dict(self.counts.most_common()),
            "log_excerpts": self.excerpts,
        }


@dataclass
class Tx:
    """One dispatcher transaction, as the probe saw it (perf_counter seconds)."""

    start: float
    duration: float = 0.0
    sql: float = 0.0  # time inside statements (cursor execute) and the COMMIT
    cpu: float = 0.0  # the loop thread's CPU time (time.thread_time) during the transaction
    statements: int = 0
    ticks: int = 0  # run rows the claim statement was given
    claim: bool = False


class TxProbe:
    """Times the dispatcher's transactions from SQLAlchemy's connection events: ``begin`` to
    the end of the COMMIT (the dialect's ``do_commit`` returning), and each statement. A claim
    transaction is one that ran the lease fence (``... FOR KEY SHARE``)."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.current: Tx | None = None
        self.cpu_started = 0.0
        self.done: list[Tx] = []
        #: statement (its first 60 characters) -> [count, total s, max s], claim transactions
        self.by_statement: dict[str, list[float]] = {}
        self.rollbacks = 0
        self.stmt_started = 0.0
        self.stmt_max = (0.0, "")
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "rollback", self._rollback)
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        dialect = engine.dialect
        do_commit = dialect.do_commit

        def timed_commit(dbapi_connection: Any) -> None:
            started = time.perf_counter()
            do_commit(dbapi_connection)
            now = time.perf_counter()
            if self.current is not None:
                self.current.sql += now - started
            self._done(now)

        dialect.do_commit = timed_commit  # this engine's dialect only

    def _begin(self, conn: Any) -> None:
        self.current = Tx(time.perf_counter())
        self.cpu_started = time.thread_time()

    def _done(self, now: float) -> None:
        tx, self.current = self.current, None
        if tx is not None:
            tx.duration = now - tx.start
            tx.cpu = time.thread_time() - self.cpu_started
            self.done.append(tx)

    def _rollback(self, conn: Any) -> None:
        self.rollbacks += 1
        self._done(time.perf_counter())

    def _before(self, conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        tx = self.current
        if tx is not None:
            tx.statements += 1
            if "FOR KEY SHARE" in statement and "pg_beat_leases" in statement:
                tx.claim = True
            if isinstance(params, dict) and "r_ids" in params:
                tx.ticks += len(params["r_ids"])
        self.stmt_started = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        took = time.perf_counter() - self.stmt_started
        text = " ".join(statement.split())
        if self.current is not None:
            self.current.sql += took
            if self.current.claim:
                entry = self.by_statement.setdefault(text[:60], [0, 0.0, 0.0])
                entry[0] += 1
                entry[1] += took
                entry[2] = max(entry[2], took)
        if took > self.stmt_max[0]:
            self.stmt_max = (took, text[:90])

    def summary(self, t0_perf: float) -> dict[str, Any]:
        claims = [tx for tx in self.done if tx.claim]
        others = [tx for tx in self.done if not tx.claim]
        durations = [tx.duration for tx in claims]
        longest = max(claims, key=lambda tx: tx.duration, default=None)
        return {
            "claim_tx_count": len(claims),
            "claim_tx_max": longest.duration if longest else None,
            "claim_tx_p50": percentile(durations, 50) if claims else None,
            "claim_tx_p99": percentile(durations, 99) if claims else None,
            "claim_tx_over_100ms": sum(d >= 0.1 for d in durations),
            "claim_tx_longest": None
            if longest is None
            else {**asdict(longest), "start": longest.start - t0_perf},
            "claim_tx_sql_share": sum(tx.sql for tx in claims) / sum(durations) if claims else None,
            "claim_tx_ticks_mean": sum(tx.ticks for tx in claims) / len(claims) if claims else None,
            "claim_tx_cpu_share": sum(tx.cpu for tx in claims) / sum(durations) if claims else None,
            "claim_statements": {
                k: {"count": int(v[0]), "total": v[1], "max": v[2]}
                for k, v in sorted(self.by_statement.items(), key=lambda kv: -kv[1][1])
            },
            "other_tx_count": len(others),
            "other_tx_max": max((tx.duration for tx in others), default=None),
            "tx_rollbacks": self.rollbacks,
            "statement_max": self.stmt_max[0] or None,
            "statement_max_sql": self.stmt_max[1],
            "claim_tx": [
                [
                    round(tx.start - t0_perf, 4),
                    round(tx.duration, 4),
                    round(tx.sql, 4),
                    round(tx.cpu, 4),
                    tx.ticks,
                ]
                for tx in claims
            ],
        }


class Tally:
    """Folds the publishes into the figures as they come (driver thread).

    Events are (name, time, published): ``time`` is the due time (pg_beat) or the sent entry's
    ``last_run_at`` (peers, ``from_last``). A late tick is one due before the start minus the
    misfire grace time.
    """

    def __init__(self, backlog: Backlog, from_last: bool, needs: dict[str, int]) -> None:
        self.backlog = backlog
        self.from_last = from_last
        self.needs = needs
        self.cut = backlog.t0 - GRACE
        self.late: Counter[str] = Counter()
        self.remaining = backlog.backlog_total
        self.settled_at: float | None = None
        self.seen = 0
        self.ontime: list[tuple[str, float, float]] = []  # (name, due, published)
        self.other_backlog = 0  # on-time ticks of backlog schedules (due after the cut)

    def feed(self, events: list[tuple[str, float | None, float]]) -> None:
        end = len(events)
        for name, when, published in events[self.seen : end]:
            cls = classify(name)
            if when is None:
                continue
            due = due_from_last(cls, when) if self.from_last else when
            if cls == "ontime":
                self.ontime.append((name, due, published))
            elif due < self.cut:
                self.late[name] += 1
                if self.late[name] == self.needs[cls]:
                    self.remaining -= 1
                    if self.remaining == 0:
                        self.settled_at = published
            else:
                self.other_backlog += 1
        self.seen = end

    def distribution(self) -> dict[str, dict[str, int]]:
        """Per class: number of late ticks -> number of schedules."""
        out: dict[str, dict[str, int]] = {}
        for cls in Backlog.BACKLOG:
            hist: Counter[int] = Counter()
            for i in range(self.backlog.count(cls)):
                hist[self.late.get(Backlog.name(cls, i), 0)] += 1
            out[cls] = {str(k): v for k, v in sorted(hist.items())}
        return out


def ontime_lateness(tally: Tally, window_end: float, stopped: float, grid: bool) -> dict[str, Any]:
    """Lateness of the on-time schedules' ticks due in [start, window_end].

    ``grid`` (pg_beat): every grid time in the window is expected; one never published counts
    as infinitely late. Peers (no fixed grid: the next due time is one interval after the
    send): each publish counts, and so does each schedule's next tick when it was due in the
    window and not published by ``stopped``.
    """
    b = tally.backlog
    lateness: list[float] = []
    by_schedule: dict[str, list[tuple[float, float]]] = {}
    for name, due, published in tally.ontime:
        by_schedule.setdefault(name, []).append((due, published))
    expected = pending = duplicates = 0
    for i in range(b.ontime):
        sent = sorted(by_schedule.get(Backlog.name("ontime", i), []))
        if grid:
            first: dict[float, float] = {}
            for due, published in sent:
                key = round(due, 3)
                duplicates += key in first
                first.setdefault(key, published)
            k = 0
            while b.t0 + k <= window_end:
                expected += 1
                published = first.get(round(b.t0 + k, 3))
                lateness.append(math.inf if published is None else published - (b.t0 + k))
                pending += published is None
                k += 1
            continue
        in_window = [(d, p) for d, p in sent if b.t0 <= d <= window_end]
        lateness += [p - d for d, p in in_window]
        # The next due time is one interval after the last send (reserve() comes just before).
        next_due = sent[-1][1] + 1.0 if sent else b.t0
        if next_due <= window_end:
            lateness.append(math.inf)
            pending += 1
    finite = [v for v in lateness if math.isfinite(v)]
    return {
        "ontime_ticks": len(lateness),
        "ontime_expected": expected if grid else None,
        "ontime_pending": pending,
        "ontime_duplicates": duplicates,
        "ontime_p50": percentile(lateness, 50) if lateness else None,
        "ontime_p99": percentile(lateness, 99) if lateness else None,
        "ontime_max": max(lateness) if lateness else None,
        "ontime_max_published": max(finite) if finite else None,
        "ontime_events": [
            [name, round(due - b.t0, 3), round(published - b.t0, 3)]
            for name, due, published in tally.ontime
        ],
        "ontime_window": window_end - b.t0,
        "ontime_observed": stopped - b.t0,
    }


# --- the child: running one scheduler ----------------------------------------------------------


class Runner:
    """One scheduler in this child: build it at ``t0``, hook its publishes, run beat's loop."""

    key: ClassVar[str]
    #: Events carry the sent entry's last_run_at (peers), not the due time (pg_beat).
    from_last: ClassVar[bool] = True

    def __init__(self, spec: dict[str, Any], backlog: Backlog) -> None:
        self.spec = spec
        self.backlog = backlog
        self.events: list[tuple[str, float | None, float]] = []  # list.append is atomic
        self.sched: Any = None
        self.app: Any = None
        self.t0_perf = 0.0  # perf_counter() at the start

    def needs(self) -> dict[str, int]:
        """Late ticks after which a schedule counts as settled: peers send one, whatever the
        issue expects (they have no catch-up)."""
        return dict.fromkeys(Backlog.BACKLOG, 1)

    def make_app(self) -> Any:
        return base_app(self.spec["redis_db"])

    def construct(self) -> None:
        raise NotImplementedError

    def hook(self) -> None:
        original = self.sched.apply_async
        events = self.events

        def apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
            last = entry.last_run_at
            result = original(entry, *args, **kwargs)
            stamp = time.time()
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=utc(0).tzinfo)
            events.append((entry.name, None if last is None else last.timestamp(), stamp))
            return result

        self.sched.apply_async = apply_async

    def loop(self) -> None:
        """celery.beat.Service.start: tick, sleep what tick asked for, sync when due."""
        sched = self.sched
        while True:
            interval = sched.tick()
            if interval and interval > 0:
                time.sleep(interval)
                if sched.should_sync():
                    sched._do_sync()

    def extra(self, tally: Tally) -> dict[str, Any]:
        """Figures only this scheduler has (after settling or at the cap)."""
        return {}

    def final(self) -> dict[str, Any]:
        return {}


class PgBeatRunner(Runner):
    key = "pg_beat"
    from_last = False

    def needs(self) -> dict[str, int]:
        return {cls: self.backlog.expected_late(cls) for cls in Backlog.BACKLOG}

    def make_app(self) -> Any:
        from pg_beat.scheduler import Scheduler  # noqa: F401  (imported before the start)

        app = base_app(self.spec["redis_db"])
        app.conf.update(
            beat_scheduler="pg_beat:Scheduler", pg_beat_database_url=pg_url(self.spec["db"])
        )
        self.logs = LogTally()
        logger = logging.getLogger("pg_beat")
        logger.setLevel(logging.INFO)  # counted here; the child's log shows WARNING and above
        logger.addHandler(self.logs)
        return app

    def construct(self) -> None:
        from pg_beat.scheduler import Scheduler

        self.sched = Scheduler(app=self.app, lazy=False)

    def hook(self) -> None:
        events = self.events
        dispatcher = self.sched.dispatcher
        self.probe = TxProbe(dispatcher.keeper.engine)

        def on_sent(claim: Any, published: float) -> None:
            events.append((claim.schedule, claim.due_at.timestamp(), published))

        dispatcher.on_sent = on_sent

    def extra(self, tally: Tally) -> dict[str, Any]:
        """What the database says once the backlog looks settled: rows still behind the start
        (enabled, next due before start - grace) and the late ticks' run rows by status."""
        cut = self.backlog.t0 - GRACE
        with psycopg.connect(pg_url(self.spec["db"]), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE enabled AND next_run_at < to_timestamp(%s)),"
                "       count(*) FILTER (WHERE NOT enabled),"
                "       count(*) FILTER (WHERE enabled AND next_run_at IS NULL)"
                " FROM pg_beat_schedules WHERE name NOT LIKE 'ontime-%%'",
                (cut,),
            ).fetchone()
            runs = conn.execute(
                "SELECT status, count(*) FROM pg_beat_runs WHERE due_at < to_timestamp(%s)"
                " GROUP BY 1 ORDER BY 1",
                (cut,),
            ).fetchall()
        assert row is not None
        return {
            "db_behind": row[0],
            "db_ended": row[1],
            "db_unplanned": row[2],
            "db_late_runs": dict(runs),
        }

    def final(self) -> dict[str, Any]:
        return {**self.logs.summary(), **self.probe.summary(self.t0_perf)}


class PersistentRunner(Runner):
    key = "celery"

    def make_app(self) -> Any:
        from celery.beat import PersistentScheduler  # noqa: F401

        app = base_app(self.spec["redis_db"])
        app.conf.beat_schedule = beat_schedule(self.backlog)  # configuration, built before start
        return app

    def construct(self) -> None:
        from celery.beat import PersistentScheduler

        filename = str(Path(self.spec["workdir"]) / f"{self.spec['db']}.shelve")
        self.sched = PersistentScheduler(app=self.app, schedule_filename=filename, lazy=False)


class RedBeatRunner(Runner):
    key = "redbeat"

    def make_app(self) -> Any:
        from redbeat import RedBeatScheduler  # noqa: F401

        return redbeat_app(self.spec)

    def construct(self) -> None:
        from types import SimpleNamespace

        from redbeat import RedBeatScheduler
        from redbeat.schedulers import acquire_distributed_beat_lock

        self.sched = RedBeatScheduler(app=self.app, lazy=False)
        # What `celery beat` does on beat_init: take RedBeat's lock (tick() extends it).
        acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=self.sched))


class SqlAlchemyRunner(Runner):
    key = "sqlalchemy"

    def make_app(self) -> Any:
        from sqlalchemy_celery_beat.schedulers import DatabaseScheduler  # noqa: F401

        app = base_app(self.spec["redis_db"])
        app.conf.update(
            beat_scheduler="sqlalchemy_celery_beat.schedulers:DatabaseScheduler",
            beat_dburi=pg_url(self.spec["db"], "postgresql+psycopg"),
        )
        return app

    def construct(self) -> None:
        from sqlalchemy_celery_beat.schedulers import DatabaseScheduler

        self.sched = DatabaseScheduler(app=self.app, lazy=False)


RUNNERS: dict[str, type[Runner]] = {
    cls.key: cls for cls in (PgBeatRunner, PersistentRunner, RedBeatRunner, SqlAlchemyRunner)
}


def child(spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)  # pg_beat's INFO records are counted, not printed
    out = ResultFile(spec["out"])
    out.put(pid=os.getpid())
    try:
        backlog = Backlog(**spec["backlog"])
        runner = RUNNERS[spec["scheduler"]](spec, backlog)
        runner.app = runner.make_app()
        # The cold start is t0: everything before it (imports, configuration) is no part of it.
        wait = backlog.t0 - time.time()
        if wait > 0:
            time.sleep(wait)
        runner.t0_perf = time.perf_counter() - (time.time() - backlog.t0)
        out.put(start_late=max(0.0, time.time() - backlog.t0))
        runner.construct()
        runner.hook()
        out.put(construct=time.time() - backlog.t0)
        beside_loop(runner.loop, lambda: out.put(**watch(runner, spec)), out)
    except BaseException:
        traceback.print_exc()
        out.put(error=traceback.format_exc().strip().splitlines()[-1])
        finish(1)
    finish()


def watch(runner: Runner, spec: dict[str, Any]) -> dict[str, Any]:
    """Wait for the backlog to settle (or the cap), observe a little longer, then compute."""
    backlog = runner.backlog
    tally = Tally(backlog, runner.from_last, runner.needs())
    cap_at = backlog.t0 + spec["settle_cap"]
    while tally.settled_at is None and time.time() < cap_at:
        time.sleep(POLL)
        tally.feed(runner.events)
    result: dict[str, Any] = {"settled": tally.settled_at is not None}
    if tally.settled_at is not None:
        result.update(runner.extra(tally))
    time.sleep(spec["observe"])  # a late tick sent twice would show now
    stopped = time.time()
    tally.feed(runner.events)
    events = runner.events[: tally.seen]
    window_end = tally.settled_at if tally.settled_at is not None else cap_at
    in_window = [e for e in events if e[2] <= window_end]
    deviating = {
        cls: sum(n for late, n in hist.items() if int(late) != backlog.expected_late(cls))
        for cls, hist in tally.distribution().items()
    }
    late_total = sum(tally.late.values())
    window = Tally(backlog, runner.from_last, runner.needs())
    window.feed(in_window)
    result.update(
        settle_seconds=None if tally.settled_at is None else tally.settled_at - backlog.t0,
        settle_cap=spec["settle_cap"],
        settled_schedules=backlog.backlog_total - tally.remaining,
        backlog_schedules=backlog.backlog_total,
        messages_in_window=len(in_window),
        late_in_window=sum(window.late.values()),
        late_total=late_total,
        other_backlog_total=tally.other_backlog,
        messages_total=len(events),
        first_publish=(min(p for _, _, p in events) - backlog.t0) if events else None,
        late_distribution=tally.distribution(),
        deviating=deviating,
        deviating_total=sum(deviating.values()),
        broker_queue_length=queue_length(spec),
        timeline=timeline(events, backlog, runner.from_last),
        **ontime_lateness(tally, window_end, stopped, grid=not runner.from_last),
        **runner.final(),
    )
    return result


def timeline(
    events: list[tuple[str, float | None, float]], backlog: Backlog, from_last: bool
) -> list[list[int]]:
    """Per second after the start: [second, late ticks, other messages] published in it."""
    bins: dict[int, list[int]] = {}
    for name, when, published in events:
        cls = classify(name)
        due = when if when is None or not from_last else due_from_last(cls, when)
        late = cls != "ontime" and due is not None and due < backlog.t0 - GRACE
        counts = bins.setdefault(math.floor(published - backlog.t0), [0, 0])
        counts[0 if late else 1] += 1
    return [[second, *counts] for second, counts in sorted(bins.items())]


def queue_length(spec: dict[str, Any]) -> int | None:
    client = redis_client(spec["redis_db"])
    try:
        return int(client.llen(QUEUE))
    except Exception:
        return None
    finally:
        client.close()


# --- the parent ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/10 of the sizes, short caps")
    parser.add_argument(
        "--schedulers",
        default=",".join(ADAPTERS),
        help=f"comma-separated subset of {','.join(ADAPTERS)}",
    )
    parser.add_argument("--json", help="write every result to this JSON file")
    parser.add_argument(
        "--redis-db",
        type=int,
        default=13,
        help="Redis database for the broker and RedBeat (flushed)",
    )
    parser.add_argument("--scale", type=float, help="fraction of the issue's sizes (1 = 21,005)")
    parser.add_argument("--end-after", type=float, default=2.0, help="1 s schedules' end_time")
    parser.add_argument("--settle-cap", type=float, help="seconds from the start to wait")
    parser.add_argument("--observe", type=float, help="seconds to watch after settling")
    parser.add_argument("--child-timeout", type=float, help="kill a child after this many s")
    parser.add_argument(
        "--start-second",
        type=int,
        help="start at this second of a minute (0-59), -1: whenever seeding is done. Default 1 "
        "(-1 with --quick): the crontab schedules' next minute is then 59 s after the start",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the children's logs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    full = {
        "scale": 1.0,
        "settle_cap": 120.0,
        "observe": 3.0,
        "child_timeout": 600.0,
        "start_second": 1,
    }
    quick = {
        "scale": 0.1,
        "settle_cap": 15.0,
        "observe": 1.0,
        "child_timeout": 90.0,
        "start_second": -1,
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.schedulers = [s for s in args.schedulers.split(",") if s]
    unknown = set(args.schedulers) - set(ADAPTERS)
    if unknown:
        parser.error(f"unknown scheduler(s): {', '.join(sorted(unknown))}")
    return args


class Parent:
    """Seeds, runs one child at a time, cleans up, and collects results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="pg_beat_bench_backlog_"))
        self.seq = 0
        self.results: dict[str, Any] = {}

    def sizes(self) -> tuple[int, int, int]:
        s = self.args.scale
        return max(1, round(10_000 * s)), max(1, round(10_000 * s)), max(1, round(1_000 * s))

    def pick_start(self, key: str) -> float:
        """A whole second far enough ahead to seed and start the child; with --start-second,
        the first such second at that second of a minute."""
        lead = 3.0 + SEEDERS[key].seed_estimate * self.args.scale * 1.5
        earliest = math.ceil(time.time() + lead)
        second = self.args.start_second
        if second < 0:
            return float(earliest)
        return float(earliest + (second - earliest) % 60)

    def spec(self, key: str, backlog: Backlog) -> dict[str, Any]:
        self.seq += 1
        a = self.args
        return {
            "scheduler": key,
            "backlog": backlog.as_dict(),
            "db": f"pg_beat_bench_{os.getpid()}_{self.seq}_backlog_{key}",
            "redis_db": a.redis_db,
            "workdir": str(self.workdir),
            "out": str(self.workdir / f"result-{self.seq}.json"),
            "settle_cap": a.settle_cap,
            "observe": a.observe,
        }

    def measure(self, key: str) -> dict[str, Any]:
        cron, sec, minute = self.sizes()
        t0 = self.pick_start(key)
        backlog = Backlog(cron, sec, minute, 5, t0, self.args.end_after)
        spec = self.spec(key, backlog)
        seeder = SEEDERS[key](spec)
        log_line(
            f"{key}: seeding {backlog.backlog_total + backlog.ontime} schedules, start at "
            f"{time.strftime('%H:%M:%S', time.localtime(t0))} ..."
        )
        result: dict[str, Any] = {}
        try:
            flush_redis(self.args.redis_db)  # an empty broker queue (RedBeat seeds into it)
            started = time.perf_counter()
            seeder.prepare(backlog)
            seed_seconds = time.perf_counter() - started
            result = self.run_child(spec)
            result["seed_seconds"] = seed_seconds
        finally:
            seeder.dispose()
            flush_redis(self.args.redis_db)
        result["backlog"] = backlog.as_dict()
        result["end_time_note"] = seeder.end_time_note.format(end_after=backlog.end_after)
        return result

    def run_child(self, spec: dict[str, Any]) -> dict[str, Any]:
        log_path = self.workdir / f"child-{self.seq}-{spec['scheduler']}.log"
        result = run_child(HERE, spec, log_path, self.args.child_timeout)
        result["log"] = str(log_path)
        return result

    def run(self) -> None:
        for key in self.args.schedulers:
            result = self.measure(key)
            result["label"] = ADAPTERS[key].label
            self.results[key] = result
            log_line(f"    {summarise(result)}")

    def close(self) -> None:
        if self.args.keep_logs:
            log_line(f"children's logs kept in {self.workdir}")
            return
        shutil.rmtree(self.workdir, ignore_errors=True)


def summarise(result: dict[str, Any]) -> str:
    keys = (
        "settled",
        "settle_seconds",
        "settled_schedules",
        "messages_in_window",
        "late_total",
        "deviating_total",
        "ontime_p99",
        "claim_tx_max",
        "step_downs",
        "hangs",
        "timed_out",
        "error",
    )
    shown = {
        k: (round(result[k], 4) if isinstance(result[k], float) else result[k])
        for k in keys
        if k in result
    }
    return json.dumps(shown, default=str)


# --- the report ----------------------------------------------------------------------------------

Result = dict[str, Any]
Cell = Callable[[Result], str]


def _missing(r: Result) -> str:
    if "timed_out" in r:
        return f"killed >{r['timed_out']:g} s"
    if "error" in r:
        return "error"
    return "-"


def _num(name: str) -> Cell:
    return lambda r: _missing(r) if r.get(name) is None else f"{r[name]:,}"


def _secs(name: str) -> Cell:
    return lambda r: _missing(r) if r.get(name) is None else fmt_seconds(r[name])


def _settled(r: Result) -> str:
    if r.get("settle_seconds") is not None:
        return fmt_seconds(r["settle_seconds"])
    if "settled" not in r:
        return _missing(r)
    done, total = r["settled_schedules"], r["backlog_schedules"]
    return f">{r['settle_cap']:g} s ({done:,}/{total:,} settled)"


def _rate(r: Result) -> str:
    settle, first = r.get("settle_seconds"), r.get("first_publish")
    if settle is None or first is None or settle <= first:
        return "-"
    return f"{r['messages_in_window'] / (settle - first):,.0f}/s"


def _late(name: str) -> Cell:
    def cell(r: Result) -> str:
        value = r.get(name)
        if value is None:
            return _missing(r)
        if math.isinf(value):
            return f">{r['ontime_observed']:.0f} s (not sent)"
        return fmt_seconds(value)

    return cell


def _ontime_ticks(r: Result) -> str:
    if "ontime_ticks" not in r:
        return _missing(r)
    return f"{r['ontime_ticks']} ({r['ontime_pending']})"


def _deviating(r: Result) -> str:
    if "deviating_total" not in r:
        return _missing(r)
    return f"{r['deviating_total']:,} of {r['backlog_schedules']:,}"


def _distribution(cls: str) -> Cell:
    def cell(r: Result) -> str:
        hist = r.get("late_distribution", {}).get(cls)
        if hist is None:
            return _missing(r)
        parts = sorted(((int(k), v) for k, v in hist.items()), key=lambda kv: -kv[1])
        return ", ".join(f"{v:,} x {k}" for k, v in parts)

    return cell


def _leadership(r: Result) -> str:
    if "step_downs" not in r:
        return _missing(r)
    return f"{r['step_downs']} / {r['hangs']}"


def _claims(r: Result) -> str:
    if r.get("claim_tx_count") is None:
        return _missing(r)
    return f"{r['claim_tx_count']:,} ({r['claim_tx_ticks_mean']:.0f} ticks each on average)"


def _longest_claim(r: Result) -> str:
    tx = r.get("claim_tx_longest")
    if tx is None:
        return _missing(r)
    return (
        f"{fmt_seconds(tx['duration'])} (SQL {fmt_seconds(tx['sql'])}, loop CPU "
        f"{fmt_seconds(tx['cpu'])}; {tx['ticks']} ticks, at {tx['start']:.1f} s)"
    )


def _claim_spread(r: Result) -> str:
    if r.get("claim_tx_p50") is None:
        return _missing(r)
    return (
        f"{fmt_seconds(r['claim_tx_p50'])} / {fmt_seconds(r['claim_tx_p99'])}; "
        f"{r['claim_tx_over_100ms']} >= 100 ms"
    )


def _claim_split(r: Result) -> str:
    if r.get("claim_tx_sql_share") is None:
        return _missing(r)
    sql, cpu = r["claim_tx_sql_share"], r["claim_tx_cpu_share"]
    return f"{100 * sql:.0f} % / {100 * cpu:.0f} % (rest: waiting for the GIL or the CPU)"


def _others(r: Result) -> str:
    if r.get("other_tx_count") is None:
        return _missing(r)
    return f"{r['other_tx_count']:,}, longest {fmt_seconds(r['other_tx_max'])}"


def targets(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, pg_beat's figure, PASS/FAIL/n/a) for each target of the issue."""
    pg = report["results"].get("pg_beat")
    if pg is None:
        return []
    out: list[tuple[str, str, str]] = []

    def add(label: str, value: float | None, ok: bool, shown: str) -> None:
        verdict = "n/a" if value is None else ("PASS" if ok else "FAIL")
        out.append((label, shown if value is not None else _missing(pg), verdict))

    settle = pg.get("settle_seconds")
    if settle is None and "settled" in pg:
        settle = math.inf
    add("backlog settled < 30 s", settle, (settle or 0) < TARGETS["settle"], _settled(pg))
    for name, label in (("step_downs", "leadership step-downs"), ("hangs", "hang reports")):
        v = pg.get(name)
        add(f"0 {label}", v, v == 0, str(v))
    v = pg.get("deviating_total")
    add("0 schedules off their late-tick count", v, v == 0, _deviating(pg))
    v = pg.get("ontime_p99")
    add(
        "on-time p99 lateness during the drain < 1 s",
        v,
        (v or 0) < TARGETS["ontime_p99"],
        _late("ontime_p99")(pg),
    )
    v = pg.get("claim_tx_max")
    add("longest claim transaction < 100 ms", v, (v or 0) < TARGETS["claim_tx"], fmt_seconds(v))
    return out


def _na_for_peers(cell: Cell) -> Callable[[str, Result], str]:
    return lambda key, r: cell(r) if key == "pg_beat" else "n/a"


def _all(cell: Cell) -> Callable[[str, Result], str]:
    return lambda key, r: cell(r)


def _pg_notes(pg: Result) -> list[str]:
    notes = []
    if pg.get("statement_max_sql"):
        notes.append(f"pg_beat's longest statement: {pg['statement_max_sql']}...")
    statements = list(pg.get("claim_statements", {}).items())[:4]
    if statements:
        notes.append("pg_beat's claim transactions, statements by total time:")
        notes += [
            f"  {v['count']:>5} x, total {fmt_seconds(v['total'])}, max {fmt_seconds(v['max'])}: "
            f"{k}..."
            for k, v in statements
        ]
    if "db_behind" in pg:
        notes.append(
            f"pg_beat's database when settled: {pg['db_behind']} backlog rows still due before "
            f"the start - 1 s, {pg['db_ended']} ended (end_time); late ticks' runs by status "
            f"{pg.get('db_late_runs')}"
        )
    shown = [(t, n) for t, n in pg.get("log_counts", {}).items() if t.startswith(("WARN", "ERR"))]
    shown += [(t, n) for t, n in pg.get("log_counts", {}).items() if t.startswith("CRIT")]
    if shown:
        notes.append("pg_beat's log records at WARNING and above, by message:")
        notes += [f"  {n:,} x {t.splitlines()[0][:150]}" for t, n in shown]
    return notes


def _start_note(second: int) -> str:
    if second < 0:
        return "Started whenever seeding was done."
    nxt = (60 - second) % 60 or 60
    return (
        f"Started at second {second} of a minute: the crontab schedules' next minute comes "
        f"{nxt} s after the start."
    )


def render_report(report: dict[str, Any]) -> str:
    results = report["results"]
    keys = list(results)
    header = ["", *(results[k]["label"] for k in keys)]
    observe = report["options"]["observe"]

    def table(
        title: str, rows: list[tuple[str, Callable[[str, Result], str]]], notes: list[str]
    ) -> str:
        body = [[label, *(cell(k, results[k]) for k in keys)] for label, cell in rows]
        return render_table(title, header, body, notes)

    parts: list[str] = []
    seeded = next((r["backlog"] for r in results.values() if "backlog" in r), None)
    if seeded is not None:
        b = Backlog(**seeded)
        parts.append(
            f"Backlog after {b.days:g} days down, one replica, cold start: {b.cron:,} crontab "
            f"'* * * * *' (fire_once), {b.sec:,} every 1 s (fire_once), {b.minute:,} every "
            f"60 s (catch_up, limit {b.catch_up_limit}); plus {b.ontime} on time every 1 s. "
            + _start_note(report["options"]["start_second"])
        )
        late = [
            f"{r['label']} {r['start_late']:.1f} s"
            for r in results.values()
            if r.get("start_late", 0) > 0.1
        ]
        if late:
            parts[-1] += f"\nWARNING: started late (seeding took longer than planned): {late}"
    parts.append(
        table(
            "1. Settling: from constructing the scheduler until every backlog schedule has sent "
            "its late tick(s)",
            [
                ("settled after", _all(_settled)),
                ("scheduler constructed", _all(_secs("construct"))),
                ("first message", _all(_secs("first_publish"))),
                ("messages until settled", _all(_num("messages_in_window"))),
                ("  of them late ticks", _all(_num("late_in_window"))),
                ("drain rate", _all(_rate)),
                ("late ticks, whole run", _all(_num("late_total"))),
                ("backlog schedules' on-time ticks", _all(_num("other_backlog_total"))),
                ("messages, whole run", _all(_num("messages_total"))),
                ("broker queue length at the end", _all(_num("broker_queue_length"))),
            ],
            [
                "late tick: a message due before the start - 1 s (pg_beat's misfire grace). "
                "Settled: pg_beat 1 late tick per fire_once and 10 per catch_up schedule; the "
                "peers 1 each (all they send).",
                f"whole run: until {observe:g} s after settling (or after the cap). drain rate: "
                "messages until settled / (settled - first message).",
                *(f"{r['label']}, 1 s schedules: {r['end_time_note']}" for r in results.values()),
                "target: pg_beat < 30 s.",
            ],
        )
    )
    parts.append(
        table(
            "2. Leadership: pg_beat.watchdog's 'no longer the leader' / 'dispatch loop stuck'",
            [("step-downs / hang reports", _na_for_peers(_leadership))],
            ["target: pg_beat 0 / 0."],
        )
    )
    rows3: list[tuple[str, Callable[[str, Result], str]]] = [
        ("schedules off the count", _all(_deviating))
    ]
    if seeded is not None:
        for cls in Backlog.BACKLOG:
            label = f"{Backlog.CLASSES[cls][0]} (expect {Backlog(**seeded).expected_late(cls)})"
            rows3.append((label, _all(_distribution(cls))))
    parts.append(
        table(
            "3. Late ticks per schedule: schedules x late ticks each",
            rows3,
            [
                "expected (the issue): exactly 1 per fire_once and 10 per catch_up schedule. The "
                "peers have no catch-up: they send a late entry once. 'x 0': not sent by the cap.",
                "target: pg_beat 0 off the count.",
            ],
        )
    )
    parts.append(
        table(
            "4. On-time schedules (5 every 1 s) during the drain: publish time - due time",
            [
                ("p50", _all(_late("ontime_p50"))),
                ("p99", _all(_late("ontime_p99"))),
                ("max", _all(_late("ontime_max"))),
                ("ticks (not sent)", _all(_ontime_ticks)),
            ],
            [
                "the ticks due from the start until settled (or the cap): pg_beat's every 1 s "
                "grid time; the peers' sends and, when due by then, each one's next tick.",
                "not sent: not published by the end of the run (fire_once drops the ticks a "
                "schedule missed, and sends one of them late).",
                "target: pg_beat p99 < 1 s.",
            ],
        )
    )
    parts.append(
        table(
            "5. Dispatcher transactions: SQLAlchemy 'begin' event -> its COMMIT returned",
            [
                ("claim transactions", _na_for_peers(_claims)),
                ("  longest", _na_for_peers(_longest_claim)),
                ("  p50 / p99", _na_for_peers(_claim_spread)),
                ("  time in SQL / loop CPU", _na_for_peers(_claim_split)),
                ("other transactions", _na_for_peers(_others)),
                ("longest statement", _na_for_peers(_secs("statement_max"))),
            ],
            [
                "claim transaction: one that ran the lease fence (SELECT ... FOR KEY SHARE); "
                "others: idle reads, records of what was sent. Peers: no claim transactions.",
                "target: pg_beat longest claim transaction < 100 ms.",
            ],
        )
    )
    if "pg_beat" in results:
        notes = _pg_notes(results["pg_beat"])
        if notes:
            parts.append("\n".join(notes))
    rows = [list(t) for t in targets(report)]
    if rows:
        parts.append(render_table("Targets (pg_beat)", ["target", "pg_beat", ""], rows))
    machine = report["machine"]
    load = machine.get("loadavg_before"), machine.get("loadavg_after")
    parts.append(
        f"(pg_beat {machine.get('pg_beat', '?')}; run took "
        f"{report.get('duration_seconds', 0) / 60:.1f} min; {machine['cpus']} CPUs; 1-min load "
        "average " + " -> ".join(f"{x[0]:.2f}" for x in load if x) + ")"
    )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not -1 <= args.start_second <= 59:
        raise SystemExit("--start-second: 0 to 59, or -1")
    if args.child:
        child(json.loads(args.child))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parent = Parent(args)

    def run() -> dict[str, Any]:
        try:
            parent.run()
        finally:
            parent.close()
        return parent.results

    run_and_report(args, run, render_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
