"""A network partition on loopback, made by the kernel: iptables DROP rules on ``lo``.

A proxy that merely stops copying bytes (``TcpProxy.blackhole()``) is not a partition: its kernel
still ACKs every segment the client sends and answers every keepalive probe, so the client's
``tcp_user_timeout`` and keepalives never fire and it waits forever. With these rules the packets
vanish before any socket sees them, as on a real partition: the sender's kernel retransmits and
gives up after its user timeout (``ETIMEDOUT``), keepalive probes go unanswered, new connections
get no SYN-ACK. Sockets stay open; when the rules are removed, TCP's retransmissions deliver
what was held, late, as a healed link does.

Which timeout ends a connection depends on its state when the rules go in: with unacknowledged
data (a query just sent, or a reply whose delayed ACK the rules swallowed) the kernel
retransmits and only ``tcp_user_timeout`` (default: ~15 minutes of retries) ends it; an idle one
is ended by keepalives. A peer that must notice a partition needs both.

Only rules this module inserted are ever deleted, each by its exact spec (never a flush), on
``release()``, in ``finally`` blocks of the callers and, as a safety net, at interpreter exit.
Each rule carries a comment naming this process, so a leftover is easy to attribute.
Needs root and a working ``iptables``; otherwise :class:`KernelBlackholeUnavailable`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from functools import cache
from types import TracebackType

LOOPBACK = "127.0.0.1"
CHAIN = "INPUT"


class KernelBlackholeUnavailable(RuntimeError):
    """Raised when kernel packet dropping is impossible here (no iptables, not root, no
    permission to change the firewall, e.g. a container without ``NET_ADMIN``)."""


def find_iptables() -> str | None:
    """Path of ``iptables`` (PATH, then /usr/sbin and /sbin), or None."""
    found = shutil.which("iptables")
    if found:
        return found
    for candidate in ("/usr/sbin/iptables", "/sbin/iptables"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@cache
def problem() -> str | None:
    """Why kernel black holes cannot be made on this machine, or None when they can."""
    binary = find_iptables()
    if binary is None:
        return "iptables not found (apt-get install iptables)"
    if os.geteuid() != 0:
        return "changing iptables rules needs root"
    try:
        result = subprocess.run(
            [binary, "-w", "5", "-S", CHAIN], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"iptables -S {CHAIN} failed: {exc}"
    if result.returncode != 0:
        return f"iptables -S {CHAIN} failed ({result.returncode}): {result.stderr.strip()}"
    return None


def require() -> str:
    """The iptables path; raises :class:`KernelBlackholeUnavailable` when unusable."""
    reason = problem()
    if reason is not None:
        raise KernelBlackholeUnavailable(f"no kernel black hole: {reason}")
    binary = find_iptables()
    assert binary is not None
    return binary


def port_rules(port: int) -> list[list[str]]:
    """Match specs dropping every loopback TCP packet to or from ``port``: both directions of
    every connection to a server listening there."""
    base = ["-i", "lo", "-s", LOOPBACK, "-d", LOOPBACK, "-p", "tcp"]
    return [[*base, "--dport", str(port)], [*base, "--sport", str(port)]]


def flow_rules(port_a: int, port_b: int) -> list[list[str]]:
    """Match specs dropping both directions of the loopback TCP connection(s) between
    ``port_a`` and ``port_b`` (e.g. one client socket's local port and the server's port)."""
    base = ["-i", "lo", "-s", LOOPBACK, "-d", LOOPBACK, "-p", "tcp"]
    return [
        [*base, "--sport", str(port_a), "--dport", str(port_b)],
        [*base, "--sport", str(port_b), "--dport", str(port_a)],
    ]


# Every engaged black hole, so an interpreter exit removes rules a test left behind.
_engaged: set[KernelBlackhole] = set()


@atexit.register
def _release_leftovers() -> None:
    for hole in list(_engaged):
        with contextlib.suppress(Exception):
            hole.release()


class KernelBlackhole:
    """DROP rules for the given match specs (see :func:`port_rules`, :func:`flow_rules`),
    inserted at the top of the INPUT chain by ``engage()`` and deleted by ``release()``."""

    def __init__(self, matches: Iterable[Sequence[str]]) -> None:
        comment = f"pg_beat tests pid {os.getpid()}"
        self.rules = [[*m, "-m", "comment", "--comment", comment, "-j", "DROP"] for m in matches]
        self._inserted: list[list[str]] = []

    @classmethod
    def for_port(cls, port: int) -> KernelBlackhole:
        """Every loopback connection to or from ``port``."""
        return cls(port_rules(port))

    @property
    def engaged(self) -> bool:
        return bool(self._inserted)

    def engage(self) -> None:
        """Insert the rules (no-op when already engaged); on failure none stays inserted."""
        if self._inserted:
            return
        binary = require()
        _engaged.add(self)
        try:
            for rule in self.rules:
                _iptables(binary, "-I", rule)
                self._inserted.append(rule)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Delete exactly the rules ``engage()`` inserted, each once, by spec. Idempotent."""
        binary = find_iptables()
        errors = []
        while self._inserted:
            rule = self._inserted.pop()
            try:
                if binary is not None:
                    _iptables(binary, "-D", rule)
            except RuntimeError as exc:
                errors.append(str(exc))
        _engaged.discard(self)
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> KernelBlackhole:
        self.engage()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _iptables(binary: str, action: str, rule: Sequence[str]) -> None:
    argv = [binary, "-w", "5", action, CHAIN, *rule]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )


def rules_of_this_process() -> list[str]:
    """Lines of ``iptables -S INPUT`` carrying this process's comment (for leak checks)."""
    binary = require()
    listing = subprocess.run(
        [binary, "-w", "5", "-S", CHAIN], capture_output=True, text=True, timeout=15, check=True
    ).stdout
    return [line for line in listing.splitlines() if f"pg_beat tests pid {os.getpid()}" in line]
