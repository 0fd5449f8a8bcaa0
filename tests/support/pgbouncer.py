"""A throwaway PgBouncer in front of a PostgreSQL server on loopback.

Users put PgBouncer between their apps and PostgreSQL, mostly with its default settings. The
tests run pg_beat through one to prove what the README promises: it works behind *session*
pooling, and in its transaction-pooling mode behind *transaction* pooling. So the config
written here keeps the defaults for everything that changes what a client sees; in particular
``ignore_startup_parameters`` stays empty, so a client sending ``options`` (or
``extra_float_digits``, ``search_path``, ``statement_timeout``...) in its startup packet is
refused with ``FATAL: unsupported startup parameter``. Only the plumbing is set: where to listen,
trust authentication against a user list, the pool mode, a small ``default_pool_size`` (3: so
transaction pooling visibly hands one client different server connections) and room for enough
clients (``max_client_conn = 200``).

PgBouncer refuses to run as root; as root it runs as the ``postgres`` OS user (as
``pg.PrivateCluster`` does). It runs in the foreground as our child and is only ever signalled
through its ``Popen``, which cannot hit a recycled PID.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from support.lifecycle import Started
from support.pg import CLUSTER_OS_USER, free_port

SESSION, TRANSACTION = "session", "transaction"

# What PgBouncer deployments commonly add to the defaults (``default_settings=False``): JDBC and
# psycopg2 send extra_float_digits, and libpq's ``options`` is how clients set GUCs at login.
COMMON_OVERRIDES = {"ignore_startup_parameters": "extra_float_digits, options"}


class PgBouncerUnavailable(RuntimeError):
    """Raised by ``PgBouncer.start()`` when there is no pgbouncer binary or no user to run it as."""


def find_binary() -> str | None:
    """Path of the ``pgbouncer`` executable (PATH, then Debian's /usr/sbin), or None."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


# Every started PgBouncer, so an interpreter exit stops what a test left running.
_live: set[PgBouncer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for bouncer in list(_live):
        bouncer.cleanup()


class PgBouncer(Started):
    """PgBouncer on ``127.0.0.1:<free port>`` forwarding every database to the target server.

    ``pool_mode`` is ``"session"`` or ``"transaction"``. With ``default_settings=True`` every other
    setting that a client can notice is PgBouncer's default; with ``False`` the common
    production overrides in :data:`COMMON_OVERRIDES` are added. ``settings`` overrides anything
    in the ``[pgbouncer]`` section. ``users`` are the roles allowed to log in (trust auth still
    needs each name in the auth file); the first is the admin console user.

    ``stop()`` then ``start()`` restarts it on the same port (clients see their connections
    closed, as with a real PgBouncer restart).
    """

    def __init__(
        self,
        target_host: str = "127.0.0.1",
        target_port: int = 5432,
        *,
        pool_mode: str = SESSION,
        default_settings: bool = True,
        default_pool_size: int = 3,
        max_client_conn: int = 200,
        users: Sequence[str] = ("postgres",),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if not ipaddress.ip_address(target_host).is_loopback:
            raise ValueError(f"PgBouncer forwards to loopback only, not {target_host!r}")
        if pool_mode not in (SESSION, TRANSACTION):
            raise ValueError(f"pool_mode must be {SESSION!r} or {TRANSACTION!r}, not {pool_mode!r}")
        if not users:
            raise ValueError("PgBouncer needs at least one user")
        self.target = (target_host, target_port)
        self.pool_mode = pool_mode
        self.users = tuple(users)
        self.settings: dict[str, str] = {
            "pool_mode": pool_mode,
            "default_pool_size": str(default_pool_size),
            "max_client_conn": str(max_client_conn),
        }
        if not default_settings:
            self.settings.update(COMMON_OVERRIDES)
        self.settings.update(settings or {})
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses --

    @property
    def pid(self) -> int | None:
        """PID of the running pgbouncer, None when stopped."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """``postgresql+psycopg://user@127.0.0.1:PORT/dbname`` (through PgBouncer)."""
        if self.port is None:
            raise RuntimeError("PgBouncer not started")
        return f"postgresql+psycopg://{user}@{self.host}:{self.port}/{dbname}"

    def libpq_url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """The same as :meth:`url` in libpq's form (``postgresql://``), for psycopg."""
        return self.url(dbname, user).replace("postgresql+psycopg://", "postgresql://", 1)

    @property
    def config_path(self) -> Path:
        return self._base() / "pgbouncer.ini"

    @property
    def logfile(self) -> Path:
        return self._base() / "pgbouncer.log"

    def log(self) -> str:
        """Everything PgBouncer logged so far (empty before the first start)."""
        try:
            return self.logfile.read_text(errors="replace")
        except (FileNotFoundError, RuntimeError):
            return ""

    def _base(self) -> Path:
        if self.base is None:
            raise RuntimeError("PgBouncer not started")
        return self.base

    # -- lifecycle --

    def start(self, timeout: float = 10.0) -> PgBouncer:
        """Write the config (first call), start pgbouncer and wait until it accepts connections."""
        if self.is_running():
            return self
        binary = find_binary()
        if binary is None:
            raise PgBouncerUnavailable(
                "pgbouncer not found on PATH nor at /usr/sbin/pgbouncer (apt-get install pgbouncer)"
            )
        run_as = _os_user()
        if self.base is None:
            _live.add(self)
            self._prepare(run_as)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        with self.logfile.open("ab") as log:
            self._proc = subprocess.Popen(
                [binary, str(self.config_path)],
                cwd=self._base(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=run_as.pw_uid if run_as else None,
                group=run_as.pw_gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
        self._wait_accepting(timeout)
        return self

    def _prepare(self, run_as: pwd.struct_passwd | None) -> None:
        # As root, /tmp rather than $TMPDIR: the postgres user must be able to reach the dir.
        base = Path(tempfile.mkdtemp(prefix="pg_beat_pgb_", dir="/tmp" if run_as else None))
        self.base = base
        self.port = free_port()
        host, port = self.target
        config = {
            "listen_addr": self.host,
            "listen_port": str(self.port),
            # Our own directory, not the default /tmp: nothing shared with other instances.
            "unix_socket_dir": str(base),
            "auth_type": "trust",
            "auth_file": str(base / "userlist.txt"),
            "admin_users": self.users[0],
            **self.settings,
        }
        lines = ["[databases]", f"* = host={host} port={port}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in config.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        (base / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in self.users))
        self.logfile.touch()
        if run_as is not None:
            for path in (base, self.config_path, base / "userlist.txt", self.logfile):
                os.chown(path, run_as.pw_uid, run_as.pw_gid)

    def _wait_accepting(self, timeout: float) -> None:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"pgbouncer exited with {code} at start:\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"pgbouncer not accepting on port {self.port} after {timeout}s:\n"
                        f"{self.log()}"
                    ) from None
                time.sleep(0.05)

    def is_running(self) -> bool:
        """Whether the pgbouncer we started is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (PgBouncer 1.18: immediate shutdown, every client connection closed), SIGKILL
        after ``timeout`` seconds; returns the exit status (None when it was not running)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._proc = None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL pgbouncer (a crash) and reap it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._proc = None

    def cleanup(self) -> None:
        """Stop pgbouncer and remove its directory. Idempotent."""
        with contextlib.suppress(Exception):
            self.stop()
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self.kill()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        _live.discard(self)

    # -- admin console --

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run ``command`` (``SHOW POOLS``, ``PAUSE``, ``KILL db``...) on the admin console and
        return its rows as dicts (``[]`` for commands that return none).

        The console speaks the simple query protocol only; psycopg uses it for a query without
        parameters.
        """
        with psycopg.connect(
            self.libpq_url("pgbouncer", self.users[0]),
            autocommit=True,
            connect_timeout=3,
            row_factory=dict_row,
        ) as conn:
            cursor = conn.execute(command.encode())
            return cursor.fetchall() if cursor.description is not None else []


def _os_user() -> pwd.struct_passwd | None:
    """The OS user to run pgbouncer as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(CLUSTER_OS_USER)
    except KeyError:
        raise PgBouncerUnavailable(
            f"running as root and there is no {CLUSTER_OS_USER!r} OS user to run pgbouncer as"
        ) from None
