"""Network faults: a TCP proxy between the code under test and its server, to cut on purpose.

Point a worker or a client at :class:`TcpProxy` instead of PostgreSQL or
Redis, then refuse connections, black-hole them or reset them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Literal

from celery_claim.testing._closing import Closing

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["TcpProxy", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _Link:
    """One proxied connection: the client's socket and the upstream one."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.silenced = False

    def abort(self) -> None:
        """Close both sides at once (FIN then RST) and wake the threads blocked on them."""
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


_DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "rediss": 6379}


class TcpProxy(Closing):
    """A TCP proxy on ``127.0.0.1`` (a free port) to ``target_host:target_port``.

    Point the code under test at :attr:`port` (or at :meth:`url`), then break
    the network on purpose:

    * :meth:`cut` ``("refuse")``: current connections are reset and new ones
      are refused (``ECONNREFUSED``), as when the server is down;
    * :meth:`cut` ``("blackhole")``: current and new connections stay open
      but nothing goes through (a partition: clients wait for their own
      timeouts); :meth:`restore` then resets them;
    * :meth:`drop_connections`: reset current connections, keep accepting
      (a server restart or a failover as the client sees it).

    Connections are pumped by background threads. Start it with :meth:`start`
    or as a context manager; :meth:`close` stops everything.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self._port: int | None = None
        self.connections_accepted = 0
        self._mode: Literal["open", "refuse", "blackhole"] = "open"
        self._links: set[_Link] = set()
        self._cond = threading.Condition()
        self._listener: socket.socket | None = None
        self._running = False
        self._thread: threading.Thread | None = None

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        """A proxy to the host and port of ``url`` (``postgresql://``, ``redis://``, ...)."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.partition("+")[0]
        port = parts.port or _DEFAULT_PORTS.get(scheme)
        if parts.hostname is None or port is None:
            raise ValueError(f"no host and port in {url!r}")
        return cls(parts.hostname, port)

    @property
    def port(self) -> int:
        """The port to connect to instead of the target's."""
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urllib.parse.urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}{self.host}:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    @property
    def active_connections(self) -> int:
        """Connections currently open through the proxy."""
        with self._cond:
            return len(self._links)

    def start(self) -> Self:
        """Bind a free port and start forwarding."""
        with self._cond:
            if self._running:
                raise RuntimeError("the proxy is already started")
            self._listener = self._bind(0)
            self._port = self._listener.getsockname()[1]
            self._running = True
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"TcpProxy:{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def cut(self, mode: Literal["refuse", "blackhole"] = "refuse") -> None:
        """Make the target unreachable through the proxy until :meth:`restore`."""
        with self._cond:
            self._mode = mode
            links = list(self._links)
            if mode == "refuse":
                self._links.clear()
                self._cond.notify_all()
                while self._listener is not None and self._running:
                    self._cond.wait()
            else:
                self._listen()
            for link in links:
                link.silenced = True
        if mode == "refuse":
            for link in links:
                link.abort()

    def restore(self) -> None:
        """Forward again. Connections black-holed by :meth:`cut` are reset."""
        with self._cond:
            self._mode = "open"
            self._listen()
            silenced = [link for link in self._links if link.silenced]
            self._links.difference_update(silenced)
            self._cond.notify_all()
        for link in silenced:
            link.abort()

    def upstream_ports(self) -> set[int]:
        """Local ports of the proxy's connections to the target.

        The server sees them as the client's ports (PostgreSQL's
        ``pg_stat_activity.client_port``), so a test can pick out the
        sessions that came through this proxy, for example to end them with
        ``pg_terminate_backend``.
        """
        with self._cond:
            links = list(self._links)
        ports = set()
        for link in links:
            with contextlib.suppress(OSError, AttributeError):
                ports.add(link.upstream.getsockname()[1])  # type: ignore[union-attr]
        return ports

    def drop_connections(self) -> None:
        """Reset every current connection; new ones are accepted as before."""
        with self._cond:
            links = list(self._links)
            self._links.clear()
        for link in links:
            link.abort()

    def close(self) -> None:
        """Stop accepting and reset every connection."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.drop_connections()

    def _listen(self) -> None:
        """Listen again on the same port after a refusing cut (called under the lock)."""
        if self._running and self._listener is None:
            self._listener = self._bind(self.port)
            self._cond.notify_all()

    def _bind(self, port: int) -> socket.socket:
        listener = socket.create_server((self.host, port))
        listener.settimeout(0.05)
        return listener

    def _accept_loop(self) -> None:
        # The only place that closes a listener, so no thread accepts on a closed socket.
        while True:
            with self._cond:
                if self._listener is not None and (not self._running or self._mode == "refuse"):
                    self._listener.close()
                    self._listener = None
                    self._cond.notify_all()
                if not self._running:
                    return
                if self._listener is None:
                    self._cond.wait()
                    continue
                listener = self._listener
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                time.sleep(0.05)
                continue
            client.setblocking(True)
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        link = _Link(client)
        with self._cond:
            self.connections_accepted += 1
            if self._mode == "refuse" or not self._running:
                mode_allows = False
            else:
                mode_allows = True
                link.silenced = self._mode == "blackhole"
                self._links.add(link)
        if not mode_allows:
            link.abort()
        elif not link.silenced:
            threading.Thread(target=self._serve, args=(link,), daemon=True).start()

    def _serve(self, link: _Link) -> None:
        try:
            link.upstream = socket.create_connection(self.target, timeout=5.0)
            link.upstream.settimeout(None)
        except OSError:
            self._forget(link)
            return
        with self._cond:
            alive = link in self._links
        if not alive:
            link.abort()
            return
        threading.Thread(
            target=self._pump, args=(link, link.upstream, link.client), daemon=True
        ).start()
        self._pump(link, link.client, link.upstream)

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not link.silenced:
                    sink.sendall(data)
        except OSError:
            pass
        if not link.silenced:
            self._forget(link)

    def _forget(self, link: _Link) -> None:
        with self._cond:
            known = link in self._links
            self._links.discard(link)
        if known:
            link.abort()
