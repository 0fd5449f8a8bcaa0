"""A TCP proxy on 127.0.0.1 whose link a test can cut or partition.

Put it between a pg_beat replica and PostgreSQL, then:

- ``cut()``: every connection is closed on both sides at once and new ones are refused, as when
  a server or a NAT drops its connections; both ends notice at once.
- ``blackhole()``: every socket stays open but no byte moves either way, and new connections are
  accepted but never reach the target. Nobody gets a FIN and every read waits, but the proxy's
  kernel still ACKs what the client sends and answers its keepalive probes, so a client's
  ``tcp_user_timeout`` and keepalives never fire: only a timeout of its own (a statement, a
  socket timeout in the application) ends the wait.
- ``blackhole(kernel=True)``: a real partition. iptables drops every packet to and from the
  proxy's port on ``lo`` (``support.blackhole``), so the client's kernel hears nothing: unACKed
  data times out (``ETIMEDOUT`` after ``tcp_user_timeout``), keepalives fail, new connections
  get no SYN-ACK. With ``upstream=True`` the proxy's connections to the target are dropped too,
  so the server notices as well, through its own ``tcp_keepalives_*`` and ``tcp_user_timeout``
  (a server with neither set keeps the session, and its locks, for hours). Needs root and
  iptables, else ``support.blackhole.KernelBlackholeUnavailable``.
- ``restore()``: the rules are removed and forwarding resumes. What was held is delivered late
  (TCP retransmits what the kernel dropped; bytes the userspace black hole left unread are read
  now); a connection accepted during a userspace black hole is connected to the target now; new
  connections get through. A connection whose end gave up meanwhile stays dead.

One daemon thread runs a selector loop over every socket; public methods hand it a command and
wait until it has been carried out, so when ``cut()`` returns nothing is connected any more.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import selectors
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from support.blackhole import KernelBlackhole, flow_rules, port_rules, require

logger = logging.getLogger(__name__)

_CHUNK = 65536
# Stop reading from a side while this much is waiting to be written to the other (backpressure).
_BUFFER_LIMIT = 1 << 20

FORWARD, CUT, BLACKHOLE = "forward", "cut", "blackhole"


class _Link:
    """One proxied connection: the accepted client socket and our socket to the target."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.client_eof = False
        self.upstream_eof = False
        self.closed = False

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]

    def close(self) -> None:
        self.closed = True
        for sock in self.sockets():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` (loopback only)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        if not ipaddress.ip_address(target_host).is_loopback:
            raise ValueError(f"TcpProxy forwards to loopback only, not {target_host!r}")
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self._mode = FORWARD
        self._listener: socket.socket | None = None
        self._links: list[_Link] = []
        self._selector = selectors.DefaultSelector()
        self._registered: dict[socket.socket, int] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._stopping = False
        self._thread: threading.Thread | None = None
        # The iptables rules of a kernel black hole; while set, userspace keeps forwarding.
        self._kernel_hole: KernelBlackhole | None = None

    # -- public API: each call is carried out by the loop thread before it returns --

    def start(self) -> TcpProxy:
        """Listen on a free port of 127.0.0.1 and start forwarding."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        self._open_listener()
        self._thread = threading.Thread(
            target=self._loop, name=f"TcpProxy:{self.port}->{self.target[1]}", daemon=True
        )
        self._thread.start()
        return self

    def cut(self) -> None:
        """Close every connection on both sides and refuse new ones until ``restore()``.

        A kernel black hole is lifted first, so both ends do see the close."""
        self._release_kernel_hole()
        self._call(self._do_cut)

    def blackhole(self, kernel: bool = False, upstream: bool = False) -> None:
        """Partition the link, keeping every socket open, until ``restore()``.

        ``kernel=False``: stop moving bytes in userspace; new connections are accepted but not
        connected (the kernel still ACKs, see the module docstring). ``kernel=True``: drop every
        packet to and from the proxy's port with iptables, and with ``upstream=True`` the
        packets of the proxy's present connections to the target as well. Raises
        ``KernelBlackholeUnavailable`` (changing nothing) when iptables cannot be used.
        """
        if upstream and not kernel:
            raise ValueError("upstream=True needs kernel=True")
        if not kernel:
            self._release_kernel_hole()
            self._call(self._do_blackhole)
            return
        if self._kernel_hole is not None:
            return
        require()
        matches = port_rules(self.port)
        if upstream:
            for local_port in self._call(self._upstream_ports):
                matches += flow_rules(local_port, self.target[1])
        hole = KernelBlackhole(matches)
        hole.engage()
        try:
            self._call(lambda: self._do_kernel_blackhole(hole))
        except BaseException:
            hole.release()
            raise

    def restore(self) -> None:
        """Lift the black hole or cut: forward again, on held connections and new ones."""
        self._release_kernel_hole()
        self._call(self._do_restore)

    @property
    def mode(self) -> str:
        """``"forward"``, ``"cut"`` or ``"blackhole"`` (either kind)."""
        return self._mode

    @property
    def kernel_blackhole(self) -> bool:
        """Whether iptables rules of ``blackhole(kernel=True)`` are in place."""
        return self._kernel_hole is not None

    @property
    def connections(self) -> int:
        """How many client connections the proxy holds open now."""
        return int(self._call(lambda: sum(1 for link in self._links if not link.closed)))

    def stop(self, timeout: float = 10.0) -> None:
        """Close every socket and join the thread. Idempotent."""
        self._release_kernel_hole()
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._close_all()
            return
        self._call(self._do_stop, timeout)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"{thread.name} did not stop within {timeout}s")

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("proxy is not running")
        reply: Future[Any] = Future()
        self._commands.put((fn, reply))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        return reply.result(timeout)

    # -- commands, run on the loop thread --

    def _do_cut(self) -> None:
        self._mode = CUT
        for link in self._links:
            self._close_link(link)
        self._links.clear()
        self._close_listener()

    def _do_blackhole(self) -> None:
        self._mode = BLACKHOLE
        self._open_listener()

    def _do_kernel_blackhole(self, hole: KernelBlackhole) -> None:
        self._kernel_hole = hole
        self._mode = BLACKHOLE
        self._open_listener()

    def _upstream_ports(self) -> list[int]:
        return [
            link.upstream.getsockname()[1]
            for link in self._links
            if link.upstream is not None and not link.closed
        ]

    def _release_kernel_hole(self) -> None:
        hole = self._kernel_hole
        if hole is None:
            return
        try:
            hole.release()
        finally:
            # The loop thread reads it; a plain attribute store is atomic in CPython.
            self._kernel_hole = None

    def _do_restore(self) -> None:
        self._mode = FORWARD
        self._open_listener()
        for link in self._links:
            if link.upstream is None and not link.closed:
                self._connect_upstream(link)

    def _do_stop(self) -> None:
        self._stopping = True

    # -- the loop --

    def _loop(self) -> None:
        try:
            while not self._stopping:
                self._update_interest()
                for key, mask in self._selector.select(timeout=1.0):
                    self._dispatch(key, mask)
                self._links = [link for link in self._links if not link.closed]
        except Exception:
            logger.exception("proxy %s: loop crashed", self.port)
            raise
        finally:
            self._close_all()

    def _dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        if key.fileobj is self._wake_r:
            self._run_commands()
        elif key.fileobj is self._listener:
            self._accept()
        else:
            link, side = key.data
            if link.closed:
                return
            try:
                if mask & selectors.EVENT_READ:
                    self._read(link, side)
                if mask & selectors.EVENT_WRITE and not link.closed:
                    self._write(link, side)
            except OSError as exc:
                logger.debug("proxy %s: link closed on error: %s", self.port, exc)
                self._close_link(link)

    def _run_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while True:
            try:
                fn, reply = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                reply.set_result(fn())
            except BaseException as exc:
                reply.set_exception(exc)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            client.setblocking(False)
            link = _Link(client)
            self._links.append(link)
            if self._forwarding:
                self._connect_upstream(link)

    def _connect_upstream(self, link: _Link) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=2.0)
        except OSError:
            self._close_link(link)  # target down: the client sees the connection closed
            return
        upstream.setblocking(False)
        link.upstream = upstream

    def _read(self, link: _Link, side: str) -> None:
        src = link.client if side == "client" else link.upstream
        assert src is not None
        data = src.recv(_CHUNK)
        buffer = link.to_upstream if side == "client" else link.to_client
        if data:
            buffer += data
            return
        if side == "client":
            link.client_eof = True
        else:
            link.upstream_eof = True
        self._propagate_eof(link)

    def _write(self, link: _Link, side: str) -> None:
        dst = link.client if side == "client" else link.upstream
        buffer = link.to_client if side == "client" else link.to_upstream
        assert dst is not None
        if buffer:
            sent = dst.send(buffer)
            del buffer[:sent]
        self._propagate_eof(link)

    def _propagate_eof(self, link: _Link) -> None:
        """Pass a half-close on once its side's bytes are delivered; close when both are done."""
        assert link.upstream is not None
        if link.client_eof and not link.to_upstream:
            with contextlib.suppress(OSError):
                link.upstream.shutdown(socket.SHUT_WR)
        if link.upstream_eof and not link.to_client:
            with contextlib.suppress(OSError):
                link.client.shutdown(socket.SHUT_WR)
        done_up = link.client_eof and not link.to_upstream
        done_down = link.upstream_eof and not link.to_client
        if done_up and done_down:
            self._close_link(link)

    @property
    def _forwarding(self) -> bool:
        """Whether bytes move in userspace: they do under a kernel black hole, which drops
        packets before they reach the proxy's sockets."""
        return self._mode == FORWARD or self._kernel_hole is not None

    @staticmethod
    def _link_interest(link: _Link) -> list[tuple[socket.socket, int, str]]:
        """What to wait for on each socket of a forwarding link: (socket, mask, side)."""
        if link.closed or link.upstream is None:
            return []
        interest = []
        for side, sock, inbox, outbox, eof in (
            ("client", link.client, link.to_upstream, link.to_client, link.client_eof),
            ("upstream", link.upstream, link.to_client, link.to_upstream, link.upstream_eof),
        ):
            mask = 0
            if not eof and len(inbox) < _BUFFER_LIMIT:
                mask |= selectors.EVENT_READ
            if outbox:
                mask |= selectors.EVENT_WRITE
            if mask:
                interest.append((sock, mask, side))
        return interest

    def _update_interest(self) -> None:
        wanted: dict[socket.socket, tuple[int, object]] = {
            self._wake_r: (selectors.EVENT_READ, None)
        }
        if self._listener is not None:
            wanted[self._listener] = (selectors.EVENT_READ, None)
        if self._forwarding:
            for link in self._links:
                for sock, mask, side in self._link_interest(link):
                    wanted[sock] = (mask, (link, side))
        for sock in list(self._registered):
            if sock not in wanted:
                self._unregister(sock)
        for sock, (mask, data) in wanted.items():
            if sock not in self._registered:
                self._selector.register(sock, mask, data)
            else:
                self._selector.modify(sock, mask, data)
            self._registered[sock] = mask

    # -- listener and teardown --

    def _open_listener(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Same port after a cut even with our closed connections in TIME_WAIT on it.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _unregister(self, sock: socket.socket) -> None:
        # Always before closing: a closed socket's fd number may be reused by the next accept.
        if self._registered.pop(sock, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)

    def _close_link(self, link: _Link) -> None:
        for sock in link.sockets():
            self._unregister(sock)
        link.close()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _close_all(self) -> None:
        for link in self._links:
            self._close_link(link)
        self._links.clear()
        self._close_listener()
        self._registered.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
