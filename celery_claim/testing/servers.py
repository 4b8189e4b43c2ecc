"""Throwaway servers: a ``redis-server`` of a test's own, to stop, crash and restart.

Each keeps its files in a temporary directory, removed by ``close()``. More
servers a scenario needs to break (a PgBouncer, a second PostgreSQL) belong
here, with the same shape: ``start``, ``stop``, ``kill``, ``restart``,
``close`` and a context manager.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from celery_claim.testing._closing import Closing
from celery_claim.testing.network import free_port
from celery_claim.testing.queues import wait_for

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["RedisServer"]


class RedisServer(Closing):
    """A throwaway ``redis-server`` on ``127.0.0.1`` for "Redis restarted" scenarios.

    By default it keeps no data: a :meth:`restart` (or :meth:`kill` and
    :meth:`start`) comes back empty, as a cache-only Redis does, losing every
    queued and unacknowledged message. With ``persistent=True`` it writes an
    append-only file fsynced on every write, so a restart, even after
    :meth:`kill`, keeps everything. The port stays the same across restarts.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        persistent: bool = False,
        executable: str = "redis-server",
        args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.executable = executable
        self.args = tuple(args)
        self.directory = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        self._popen: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """``redis://127.0.0.1:<port>/<db>``."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        """True while the server process has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def command(self) -> list[str]:
        """The ``redis-server`` command line."""
        aof = "yes" if self.persistent else "no"
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", aof,
            "--appendfsync", "always",
            "--logfile", str(self.directory / "redis.log"),
            *self.args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server and wait until it answers PING."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self._popen = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        atexit.register(self._kill_at_exit)

        def answers() -> bool:
            if not self.running:
                raise RuntimeError(f"redis-server exited; log:\n{self.logs()[-2000:]}")
            return self.ping()

        wait_for(answers, timeout, message=f"redis-server on port {self.port} not answering")
        return self

    def ping(self) -> bool:
        """True if the server answers PING (not while it is still loading data)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def logs(self) -> str:
        """The server's log file."""
        try:
            return (self.directory / "redis.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM), SIGKILL after ``timeout``."""
        popen = self._popen
        if popen is None or popen.returncode is not None:
            return
        popen.terminate()
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
        atexit.unregister(self._kill_at_exit)

    def kill(self) -> None:
        """Crash the server (SIGKILL): clients see their connections reset."""
        popen = self._popen
        if popen is None or popen.returncode is not None:
            return
        popen.kill()
        popen.wait()
        atexit.unregister(self._kill_at_exit)

    def restart(self, timeout: float = 10.0) -> None:
        """:meth:`stop` then :meth:`start` on the same port."""
        self.stop(timeout)
        self.start(timeout)

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _kill_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()
