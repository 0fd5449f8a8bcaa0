"""PostgreSQL servers and throwaway databases for the test suite.

``admin_url()`` finds a server the suite may create databases on; ``PrivateCluster`` is a
disposable cluster of our own that a test can stop, restart or crash without touching anybody
else's server. A ``PrivateCluster`` may also be a streaming standby of another one, made with
``pg_basebackup -R`` (see ``support.replication`` for a primary/standby pair).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from support.lifecycle import Started

ENV_URL = "PG_BEAT_TEST_DATABASE_URL"
LOCAL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

# initdb and postgres refuse to run as root; as root, the private cluster runs as this OS user.
CLUSTER_OS_USER = "postgres"


class NoPostgresAvailable(RuntimeError):
    """Raised by ``admin_url()`` when no PostgreSQL server can be found or started."""


# -- URLs and databases -------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """``url`` without SQLAlchemy's ``+driver`` suffix, as psycopg and libpq want it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def database_url(admin_url: str, dbname: str) -> str:
    """A ``postgresql+psycopg://`` URL for database ``dbname`` on the server of ``admin_url``."""
    parsed = make_url(admin_url).set(drivername="postgresql+psycopg", database=dbname)
    return parsed.render_as_string(hide_password=False)


def create_database(admin_url: str, name: str, template: str | None = None) -> None:
    """``CREATE DATABASE name [TEMPLATE template]`` on the server of ``admin_url``."""
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(query)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, terminating every session still connected to it."""
    query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(query)


def terminate_connections(admin_url: str, name: str) -> None:
    """End every other session connected to database ``name`` (a template must have none)."""
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


def is_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a connection to ``url`` succeeds within ``timeout`` seconds."""
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=max(1, round(timeout))):
            return True
    except psycopg.Error:
        return False


# -- Process helpers ----------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid`` from /proc, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie does not: the postmaster pg_ctl leaves behind is
    re-parented to PID 1, which in a container may never reap it."""
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _processes_in(directory: Path) -> list[int]:
    """Live PIDs whose working directory is ``directory``: a postmaster and every child it
    forked (they run in the data directory), even those re-parented after its death."""
    found = []
    for entry in glob.glob("/proc/[0-9]*"):
        try:
            if os.readlink(f"{entry}/cwd") != str(directory):
                continue
        except OSError:
            continue
        pid = int(entry.rsplit("/", 1)[1])
        if pid_alive(pid):
            found.append(pid)
    return found


def children(pid: int) -> list[int]:
    """Live PIDs whose parent is ``pid`` (e.g. a postmaster's backends and auxiliary processes)."""
    found = []
    for entry in glob.glob("/proc/[0-9]*"):
        child = int(entry.rsplit("/", 1)[1])
        stat = _proc_stat(child)
        if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
            found.append(child)
    return found


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


# -- Private cluster ----------------------------------------------------------------------------

# Every cluster with a directory on disk, so an interpreter exit cleans up what a test left.
_live_clusters: set[PrivateCluster] = set()


@atexit.register
def _cleanup_live_clusters() -> None:
    for cluster in list(_live_clusters):
        cluster.cleanup()


class PrivateCluster(Started):
    """A throwaway PostgreSQL cluster in a temporary directory, on 127.0.0.1 at a free port.

    Tests may stop, restart or crash (``kill()``) it freely. As root it runs as the
    ``postgres`` OS user (initdb and postgres refuse root); otherwise as the current user.
    Only the postmaster whose PID it recorded is ever signalled.

    ``settings`` are appended to postgresql.conf after the defaults below (so they win),
    ``hba`` lines to pg_hba.conf. With ``standby_of`` the cluster is not made by initdb but
    copied from that running cluster with ``pg_basebackup -R`` (creating the physical
    replication slot ``slot`` on it when given): it starts as a streaming standby of it.
    """

    # What a disposable test server can do without: durability against an OS crash.
    DEFAULT_SETTINGS: Mapping[str, str] = {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "shared_buffers": "16MB",
        "max_connections": "60",
        "max_wal_size": "256MB",
        "logging_collector": "off",
        "log_line_prefix": "'%m [%p] %q%a '",
    }

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        hba: Sequence[str] = (),
        *,
        standby_of: PrivateCluster | None = None,
        slot: str | None = None,
    ) -> None:
        if slot is not None and standby_of is None:
            raise ValueError("a replication slot needs standby_of")
        self.settings = dict(settings or {})
        self.hba = list(hba)
        self.standby_of = standby_of
        self.slot = slot
        self.base: Path | None = None
        self.port: int | None = None
        self.pid: int | None = None
        self._bindir = _pg_bindir()
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._run_as = pwd.getpwnam(CLUSTER_OS_USER)
            except KeyError:
                self._run_as = None

    # Paths inside the temp dir: the socket dir stays short (unix socket paths max ~107 bytes).
    @property
    def datadir(self) -> Path:
        return self._base() / "data"

    @property
    def sockdir(self) -> Path:
        return self._base() / "sock"

    @property
    def logfile(self) -> Path:
        return self._base() / "postgres.log"

    def _base(self) -> Path:
        if self.base is None:
            raise RuntimeError("private cluster not started")
        return self.base

    def url(self, dbname: str = "postgres") -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:PORT/dbname``."""
        if self.port is None:
            raise RuntimeError("private cluster not started")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def log(self) -> str:
        """The server log so far (empty before the first start)."""
        try:
            return self.logfile.read_text(errors="replace")
        except (FileNotFoundError, RuntimeError):
            return ""

    # -- lifecycle --

    def start(self) -> PrivateCluster:
        """Create the cluster on first call (initdb), then start it and wait until it is ready."""
        if self._bindir is None:
            raise NoPostgresAvailable("initdb not found on PATH nor in /usr/lib/postgresql/*/bin")
        if os.geteuid() == 0 and self._run_as is None:
            raise NoPostgresAvailable(
                f"running as root and there is no {CLUSTER_OS_USER!r} OS user to run initdb as"
            )
        if self.base is None:
            _live_clusters.add(self)
            self._init()
        if self.is_running():
            return self
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start"
        )
        pidfile = (self.datadir / "postmaster.pid").read_text().splitlines()
        self.pid = int(pidfile[0])
        return self

    def _init(self) -> None:
        # As root, /tmp rather than $TMPDIR: the postgres user must be able to reach the dir.
        parent = "/tmp" if self._run_as is not None else None
        base = Path(tempfile.mkdtemp(prefix="pg_beat_pg_", dir=parent))
        self.base = base
        self.sockdir.mkdir()
        if self._run_as is not None:
            for path in (base, self.sockdir):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        if self.standby_of is not None:
            self._basebackup(self.standby_of)
        else:
            self._initdb()
        self.port = free_port()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockdir}'",
            **self.DEFAULT_SETTINGS,
            **self.settings,
        }
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# pg_beat test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        if self.hba:
            with (self.datadir / "pg_hba.conf").open("a") as hba:
                hba.write("\n# pg_beat test cluster\n")
                hba.writelines(f"{line}\n" for line in self.hba)

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )

    def _basebackup(self, primary: PrivateCluster) -> None:
        """Copy ``primary`` (running) into our data directory as its streaming standby.

        The copy brings the primary's postgresql.conf and pg_hba.conf along; ``_init`` then
        appends our own port and settings, which win. ``-R`` writes ``primary_conninfo`` (and
        ``primary_slot_name``) into postgresql.auto.conf and creates standby.signal.
        """
        if primary.port is None or not primary.is_running():
            raise RuntimeError("pg_basebackup needs the primary running")
        args = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"]
        args += ["-D", str(self.datadir), "-R", "-X", "stream", "-c", "fast", "--no-sync"]
        if self.slot is not None:
            args += ["-C", "-S", self.slot]
        self._run("pg_basebackup", *args)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` and wait; a no-op when not running."""
        if self.base is None or not self.is_running():
            return
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop")
        self.pid = None

    def promote(self, timeout: float = 30.0) -> None:
        """``pg_ctl promote -w``: end recovery, so a standby accepts writes."""
        self._run("pg_ctl", "-D", str(self.datadir), "-w", "-t", str(round(timeout)), "promote")

    def restart(self, mode: str = "fast") -> None:
        """Stop (``mode``) and start again on the same port."""
        self.stop(mode)
        self.start()

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the postmaster (a crash); its children exit on noticing, and we wait for them.

        The stale lock files are then removed: the dead postmaster stays a zombie where PID 1
        does not reap, and postgres would take the zombie's PID for a running server.
        """
        pid = self.pid
        if pid is None or not pid_alive(pid):
            return
        os.kill(pid, signal.SIGKILL)
        if not _wait_until(lambda: not pid_alive(pid), timeout):
            raise RuntimeError(f"postmaster {pid} still alive {timeout}s after SIGKILL")
        datadir = self.datadir.resolve()
        if not _wait_until(lambda: not _processes_in(datadir), timeout):
            left = _processes_in(datadir)
            raise RuntimeError(f"postgres processes {left} outlived the killed postmaster {pid}")
        self.pid = None
        (self.datadir / "postmaster.pid").unlink(missing_ok=True)
        (self.sockdir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def is_running(self) -> bool:
        """Whether the postmaster we started is alive."""
        return self.pid is not None and pid_alive(self.pid)

    def cleanup(self) -> None:
        """Stop the server (whatever it takes) and remove its directory. Idempotent."""
        with contextlib.suppress(Exception):
            self.stop("fast")
        if self.is_running():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        if self.is_running():
            with contextlib.suppress(Exception):
                self.kill()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
            self.pid = None
        _live_clusters.discard(self)

    # -- running the server's tools --

    def _run(self, tool: str, *args: str) -> None:
        assert self._bindir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        run_as = self._run_as
        if run_as is not None:
            env["HOME"] = run_as.pw_dir
            env["USER"] = env["LOGNAME"] = run_as.pw_name
        result = subprocess.run(
            [str(self._bindir / tool), *args],
            cwd=self._base(),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            user=run_as.pw_uid if run_as else None,
            group=run_as.pw_gid if run_as else None,
            extra_groups=[] if run_as else None,
        )
        if result.returncode != 0:
            tail = "\n".join(self.log().splitlines()[-20:])
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- server log tail ---\n{tail}"
            )


# -- Finding a server ---------------------------------------------------------------------------

_admin_url: str | None = None
_session_cluster: PrivateCluster | None = None
_session_container: object | None = None


def _docker_engine_reachable() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def admin_url() -> str:
    """A URL on a server where the suite may ``CREATE DATABASE``, found once per process.

    In order: ``$PG_BEAT_TEST_DATABASE_URL``; the local server on 127.0.0.1:5432; a private
    cluster started for this process; a testcontainers PostgreSQL when a Docker engine answers.
    Raises :class:`NoPostgresAvailable` saying what was tried.
    """
    global _admin_url, _session_cluster, _session_container
    if _admin_url is not None:
        return _admin_url
    from_env = os.environ.get(ENV_URL)
    if from_env:
        _admin_url = from_env
        return _admin_url
    if is_reachable(LOCAL_URL, timeout=3):
        _admin_url = LOCAL_URL
        return _admin_url

    tried = [f"${ENV_URL} unset", f"nothing answers at {LOCAL_URL}"]
    cluster = PrivateCluster()
    try:
        cluster.start()
    except Exception as exc:
        cluster.cleanup()
        tried.append(f"private cluster failed: {exc}")
    else:
        _session_cluster = cluster
        _admin_url = cluster.url()
        return _admin_url

    if _docker_engine_reachable():
        try:
            from testcontainers.postgres import (  # type: ignore[import-not-found]
                PostgresContainer,
            )
        except ImportError:
            tried.append("a Docker engine answers but testcontainers is not installed")
        else:
            container = PostgresContainer("postgres:15-alpine", driver="psycopg")
            container.start()
            _session_container = container
            _admin_url = str(container.get_connection_url())
            return _admin_url
    else:
        tried.append("no Docker engine")
    raise NoPostgresAvailable(
        "no PostgreSQL for the tests: " + "; ".join(tried) + f". Set {ENV_URL} to a URL of a "
        "server where the tests may CREATE DATABASE, or start PostgreSQL on 127.0.0.1:5432."
    )


@atexit.register
def release_admin_server() -> None:
    """Stop whatever ``admin_url()`` started (private cluster or container). Idempotent."""
    global _admin_url, _session_cluster, _session_container
    if _session_cluster is not None:
        _session_cluster.cleanup()
        _session_cluster = None
        _admin_url = None
    if _session_container is not None:
        with contextlib.suppress(Exception):
            _session_container.stop()  # type: ignore[attr-defined]
        _session_container = None
        _admin_url = None
