"""A redis-server of a test's or benchmark's own, on a free port, started and stopped by the PID
it was started with (never the machine's Redis), to kill, pause and restart under a cluster."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import redis

from support.pg import free_port
from support.procs import ProcessGroup

START_TIMEOUT = 15.0  # seconds for redis-server to answer PING


class RedisUnavailable(RuntimeError):
    """No redis-server on this machine, or it did not start."""


class PrivateRedis:
    """It appends every write to its AOF and fsyncs before answering, so a SIGKILL loses
    nothing that was acknowledged."""

    def __init__(self, procs: ProcessGroup, datadir: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RedisUnavailable("redis-server (Debian package redis-server)")
        self.procs = procs
        self.port = free_port()
        self.argv = [
            server,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(datadir),
        ]
        self.starts = 0

    @property
    def name(self) -> str:
        return f"redis-{self.starts}"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def answers(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> None:
        self.starts += 1
        self.procs.spawn(self.name, self.argv)
        self.wait_answers()

    def wait_answers(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            if not self.procs.is_running(self.name):
                raise RedisUnavailable(f"redis-server exited: {self.procs.log(self.name)[-500:]}")
            if time.monotonic() > deadline:
                raise RedisUnavailable(f"redis-server did not answer within {START_TIMEOUT:g}s")
            time.sleep(0.05)

    def kill(self) -> None:
        self.procs.signal(self.name, signal.SIGKILL)
        self.procs.wait(self.name, 10)

    def pause(self) -> None:
        self.procs.signal(self.name, signal.SIGSTOP)

    def resume(self) -> None:
        self.procs.signal(self.name, signal.SIGCONT)
        self.wait_answers()
