"""How pg_beat connects: one :class:`Connector` per process makes every connection it uses.

Session settings (timeouts, schema, the dispatch marker) are sent with ``SET`` after
connecting, never as the ``options`` startup parameter, which PgBouncer refuses by default and
drops when told to ignore it. Behind a transaction-pooling proxy a session is not ours between
transactions, so there the settings are ``SET LOCAL`` at the start of every transaction, and
no statement is prepared on the server.

The pool mode is ``session`` (a real session: advisory lock, LISTEN, ``SET`` once) or
``transaction``. ``auto`` looks once, at the first connection: PostgreSQL announces its
backend pid when a session starts; a pooler announces one of its own making, so when the
announced pid differs from ``pg_backend_pid()`` something pools the connection, and pg_beat
takes the mode that is safe behind any pooler (``transaction``). The decision is made once per
process and never changes, so a replica cannot flap between modes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool, QueuePool

from pg_beat import urls
from pg_beat.store import appnames

if TYPE_CHECKING:
    from pg_beat.config import Settings

logger = logging.getLogger("pg_beat.store")

NOTIFY_CHANNEL = "pg_beat_schedules"
SESSION, TRANSACTION = "session", "transaction"


def keepalive_params(lease_ttl: float) -> dict[str, int]:
    """libpq TCP settings that notice a dead link within the lease: a black-holed peer (no FIN,
    no RST) fails a waiting read after about 3/5 of the TTL instead of the kernel's 15 min."""
    probe = max(1, int(lease_ttl / 5))
    return {
        "keepalives": 1,
        "keepalives_idle": probe,
        "keepalives_interval": probe,
        "keepalives_count": 2,
        "tcp_user_timeout": max(1000, int(lease_ttl * 600)),
    }


def session_settings(settings: Settings, *, dispatch: bool = False) -> list[tuple[str, str]]:
    """(name, value) of every setting a pg_beat session runs with."""

    def ms(seconds: float) -> str:
        return str(max(1, int(seconds * 1000)))

    probe = str(max(1, int(settings.lease_ttl / 5)))
    values = [
        ("statement_timeout", ms(settings.statement_timeout)),
        ("lock_timeout", ms(settings.lock_timeout)),
        ("idle_in_transaction_session_timeout", ms(settings.idle_in_transaction_timeout)),
        # The server notices a vanished client too, and ends its session (and locks).
        ("tcp_keepalives_idle", probe),
        ("tcp_keepalives_interval", probe),
        ("tcp_keepalives_count", "2"),
    ]
    if settings.schema:
        values.append(("search_path", f'"{settings.schema}", public'))
    if dispatch:
        # Tells the triggers that this is the scheduler's own bookkeeping: no re-plan, no NOTIFY.
        values.append(("pg_beat.dispatch", "on"))
    return values


def set_statement(values: list[tuple[str, str]], *, local: bool) -> str:
    """One statement that sets every value, for the session or (``local``) this transaction.

    ``set_config`` rather than ``SET``: it takes list settings such as ``search_path`` as text.
    The values are pg_beat's own (numbers, ``on``, a schema name that config.Settings restricts
    to a plain identifier), so they are inlined: no parameters, one simple-protocol round trip.
    """
    flag = "true" if local else "false"
    calls = ", ".join(f"set_config('{name}', '{value}', {flag})" for name, value in values)
    return f"SELECT {calls}"


class Connector:
    """Makes pg_beat's engines and raw connections for one process, in one pool mode."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        urls.parse(settings.database_url)  # a bad URL fails here, before any connection
        self._mode: str | None = None if settings.pool_mode == "auto" else settings.pool_mode
        self._lock = threading.Lock()
        #: In the application name of every session this process opens (see
        #: :mod:`pg_beat.store.appnames`): how its sessions are told from any other's.
        self.token = appnames.new_token()
        #: Bumped when the mode changes under running connections: holders of kept-open
        #: connections compare it and reconnect.
        self.generation = 0

    # --- the pool mode ---------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """``session`` or ``transaction``; with ``auto``, known after the first connection
        (which this property opens when none was made yet)."""
        if self._mode is None:
            self.connect("detect").close()
        assert self._mode is not None
        return self._mode

    @property
    def transaction_pooled(self) -> bool:
        return self.mode == TRANSACTION

    def fall_back_to_transaction_mode(self) -> bool:
        """Evidence that the URL pools transactions although ``auto`` took it for a session
        (a session lock found on another server session): switch to transaction mode for good
        (it is safe behind any pooler, so this never flaps) and return True. With an explicit
        ``pg_beat_pool_mode = 'session'``, change nothing and return False."""
        if self.settings.pool_mode != "auto":
            return False
        with self._lock:
            if self._mode != TRANSACTION:
                self._mode = TRANSACTION
                self.generation += 1
                logger.warning(
                    "pg_beat: the advisory lock landed on another server session than ours: "
                    "the database URL pools transactions; transaction-pooling mode from now on",
                    extra={"action": "pool_mode", "replica": self.settings.replica_name},
                )
        return True

    def _detect(self, conn: psycopg.Connection[Any]) -> str:
        """The pool mode, from the first connection: ``auto`` looks at it once, under a lock."""
        with self._lock:
            if self._mode is None:
                announced = conn.info.backend_pid
                actual = conn.execute("SELECT pg_backend_pid()").fetchone()
                conn.rollback()
                self._mode = (
                    SESSION if actual is not None and actual[0] == announced else TRANSACTION
                )
                if self._mode == TRANSACTION:
                    logger.warning(
                        "pg_beat: the database URL goes through a connection pooler (the "
                        "server's backend pid is not the one announced at connect): "
                        "transaction-pooling mode, leadership by the lease row alone, edits "
                        "polled every %gs; set pg_beat_pool_mode = 'session' behind a session "
                        "pool for the fastest failover",
                        self.settings.poll_interval,
                        extra={"action": "pool_mode", "replica": self.settings.replica_name},
                    )
            return self._mode

    # --- connections -----------------------------------------------------------------------

    def application_name(self, role: str) -> str:
        """``pg_beat:<token>:<replica>:<role>``, the replica name shortened to fit 63."""
        return appnames.format_name(self.token, self.settings.replica_name, role)

    def connect(
        self, role: str, *, dispatch: bool = False, autocommit: bool = False, url: str | None = None
    ) -> psycopg.Connection[Any]:
        """A psycopg connection with pg_beat's settings: ``SET`` once for a direct ``url`` or in
        session mode; in transaction mode the caller's transactions must ``SET LOCAL``."""
        settings = self.settings
        info = urls.conninfo(
            url or settings.database_url,
            application_name=self.application_name(role),
            connect_timeout=max(1, int(settings.connect_timeout)),
            **keepalive_params(settings.lease_ttl),
        )
        conn = psycopg.connect(info)
        try:
            pooled = url is None and self._detect(conn) == TRANSACTION
            if pooled:
                # The next statement may reach another server session: prepare nothing there.
                conn.prepare_threshold = None
            else:
                conn.autocommit = True
                conn.execute(
                    set_statement(session_settings(settings, dispatch=dispatch), local=False)
                )
            conn.autocommit = autocommit
        except BaseException:
            conn.close()
            raise
        return conn

    def engine(self, role: str, *, dispatch: bool = False, pool_size: int = 0) -> Engine:
        """An engine of pg_beat's own; ``pool_size=0`` means one fresh session per checkout."""
        creator: Callable[[], psycopg.Connection[Any]] = lambda: self.connect(  # noqa: E731
            role, dispatch=dispatch
        )
        pool: dict[str, Any] = (
            {"poolclass": NullPool}
            if pool_size == 0
            else {
                "poolclass": QueuePool,
                "pool_size": pool_size,
                "max_overflow": 1,
                "pool_pre_ping": True,
                "pool_timeout": self.settings.connect_timeout,
            }
        )
        engine = create_engine("postgresql+psycopg://", creator=creator, **pool)
        statement = set_statement(session_settings(self.settings, dispatch=dispatch), local=True)

        @event.listens_for(engine, "begin")
        def _set_local(conn: Any) -> None:
            if self._mode == TRANSACTION:  # known: the transaction runs on a connection
                conn.exec_driver_sql(statement)

        return engine

    def listen(self, role: str) -> psycopg.Connection[Any] | None:
        """An autocommit connection LISTENing on the schedule-change channel: on the database
        URL in session mode, on ``pg_beat_listen_url`` if given; else None (poll instead)."""
        url = self.settings.listen_url
        if url is None and self.transaction_pooled:
            return None
        conn = self.connect(role, autocommit=True, url=url)
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn


# --- small statements on any session ---------------------------------------------------------

# Deadlock, lock timeout, statement timeout, serialization failure: retried, never fatal.
TRANSIENT_SQLSTATES = frozenset({"40P01", "55P03", "57014", "40001"})


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error (SQLAlchemy's or psycopg's), if the server sent one."""
    return getattr(getattr(exc, "orig", None) or exc, "sqlstate", None)


def connection_lost(exc: DBAPIError) -> bool:
    """A failure to reach the server: no SQLSTATE, class 08, or class 57P (the server shutting
    down, the session ended by it), as opposed to an error the server answered with."""
    state = sqlstate(exc)
    return exc.connection_invalidated or state is None or state.startswith(("08", "57P"))


def first_line(exc: BaseException) -> str:
    """The first line of a driver error's message (no SQL, no traceback), for logs."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def set_application_name(conn: Connection, name: str) -> None:
    conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": name[:63]})


def backend_pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def db_now(conn: Connection) -> datetime:
    """The database clock (``clock_timestamp()``), which every lease computation uses."""
    value: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return value


def notify_schedules(conn: Connection, payload: str = "wake") -> None:
    conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": NOTIFY_CHANNEL, "p": payload})


def make_engine(
    settings: Settings, role: str, *, dispatch: bool = False, pool_size: int = 0
) -> Engine:
    """An engine from a Connector of its own (one-off callers: the CLI, tests)."""
    return Connector(settings).engine(role, dispatch=dispatch, pool_size=pool_size)
