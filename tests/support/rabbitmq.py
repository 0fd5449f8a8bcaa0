"""A RabbitMQ node of a test's own: its own node name, ports and data directory, started and
stopped by the PID the test started (never the machine's broker, never by name).

Needs Debian's ``rabbitmq-server`` (and an ``epmd`` it can register with, which it starts
itself when none runs). Starting takes about 10 s.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import time
from pathlib import Path

from support.pg import free_port
from support.procs import ProcessGroup

SERVER_PATHS = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server")
START_TIMEOUT = 90.0


class RabbitMQUnavailable(RuntimeError):
    """No rabbitmq-server on this machine, or it did not start."""


def server_path() -> str:
    for path in SERVER_PATHS:
        if Path(path).exists():
            return path
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise RabbitMQUnavailable("rabbitmq-server (Debian package rabbitmq-server)")
    return found


class PrivateRabbitMQ:
    """``start()``, ``stop()`` (graceful: SIGTERM, as a service manager stops it), ``url``."""

    def __init__(self, procs: ProcessGroup, workdir: Path) -> None:
        self.server = server_path()
        self.procs = procs
        self.workdir = workdir
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"pgbeat{secrets.token_hex(4)}@localhost"
        self.starts = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def name(self) -> str:
        return f"rabbitmq-{self.starts}"

    def env(self) -> dict[str, str]:
        base = self.workdir
        return {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "HOME": str(base),  # its own Erlang cookie
        }

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.procs.spawn(self.name, [self.server], env=self.env())
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            if not self.procs.is_running(self.name):
                raise RabbitMQUnavailable(f"rabbitmq-server exited: {self.procs.log(self.name)}")
            if time.monotonic() > deadline:
                raise RabbitMQUnavailable(f"RabbitMQ did not start within {START_TIMEOUT:g}s")
            time.sleep(0.2)

    def answers(self) -> bool:
        """An AMQP handshake succeeds (the port alone opens before the broker is ready)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(8)[:1] == b"\x01"  # a connection.start frame
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it as a service manager would (SIGTERM: a graceful shutdown)."""
        self.procs.stop(self.name, timeout=60)
