"""Real processes and real failures for testing Celery tasks under duplicate delivery.

The helpers run actual ``celery worker`` processes, a throwaway ``redis-server``
and a TCP proxy that can make PostgreSQL or Redis unreachable. They need Linux
(process groups and ``/proc``) and nothing else: no Docker.

* :class:`WorkerProcess`: one ``celery worker`` in its own process group.
* :class:`TcpProxy`: a TCP proxy whose link can be cut and restored.
* :class:`RedisServer`: a ``redis-server`` to stop, crash and restart.
* :func:`stop_all`: warm-shut-down many workers in parallel.
* :func:`wait_until_drained`: nothing queued, nothing unacknowledged, no
  claim running (the end of a scenario).
* :func:`wait_for`, :func:`publish_duplicates`, :func:`queue_length`,
  :func:`unacked_length`, :func:`process_alive`, :func:`free_port`.

Isolation between tests on one Redis database: give each test its own queue
*and* its own kombu key prefix (``broker_transport_options={"global_keyprefix":
f"{name}:"}``). kombu keeps unacknowledged messages of every queue in one
``unacked`` hash per database, and any worker with a short
``visibility_timeout`` restores every old entry it finds there, including
another test's; a key prefix gives each test its own hash, and cleaning up is
deleting ``f"{name}:*"``.

With pytest-celery: :func:`local_worker_node` wraps a running
:class:`WorkerProcess` in pytest-celery's ``CeleryTestWorker``, so tests
written against its node API (``logs()``, ``wait_for_log()``, ``kill()``,
``restart()``, ``ready()``) run without Docker. See its docstring.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from celery.utils.nodenames import default_nodename, host_format

if TYPE_CHECKING:
    from celery import Celery, Task
    from typing_extensions import Self

__all__ = [
    "FAST_WORKER_ARGS",
    "RedisServer",
    "TcpProxy",
    "WaitTimeout",
    "WorkerFailed",
    "WorkerProcess",
    "free_port",
    "local_worker_node",
    "process_alive",
    "publish_duplicates",
    "queue_length",
    "stop_all",
    "unacked_length",
    "wait_for",
    "wait_until_drained",
]

T = TypeVar("T")
StrPath = str | os.PathLike[str]

#: Worker options that skip the start-up handshakes a test does not need
#: (mingle alone costs about a second per worker).
FAST_WORKER_ARGS: tuple[str, ...] = (
    "--without-heartbeat",
    "--without-mingle",
    "--without-gossip",
)

_READY_MARKER = "celery-claim-testing: consumer ready"
# The ``celery`` command plus a worker_ready handler that writes a marker
# straight to fd 2 (Celery redirects sys.stderr to logging), so readiness does
# not depend on the worker's log level.
_BOOTSTRAP = "; ".join(
    [
        "import os, sys",
        "from celery import signals",
        "from celery.__main__ import main",
        "signals.worker_ready.connect("
        f"lambda sender=None, **kw: os.write(2, {(_READY_MARKER + chr(10)).encode()!r}), "
        "weak=False)",
        "sys.argv[0] = 'celery'",
        "main()",
    ]
)


class WaitTimeout(AssertionError, TimeoutError):
    """A condition awaited by :func:`wait_for` did not become true in time."""


class WorkerFailed(RuntimeError):
    """The worker process exited when it was expected to be running."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Raises :class:`WaitTimeout` (both an ``AssertionError`` and a
    ``TimeoutError``) after ``timeout`` seconds. ``message`` may be a callable,
    evaluated only on timeout, to report the latest state. Exceptions raised
    by ``predicate`` propagate at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeout(f"{text} (after {timeout:g}s)")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, process group) of ``pid`` from ``/proc``, None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _live_processes() -> Iterable[tuple[int, int, int]]:
    """(pid, ppid, process group) of every live process."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                yield int(entry.name), stat[1], stat[2]


class WorkerProcess:
    """One ``celery -A <app> worker`` process, in its own process group.

    The process group holds the main process and, with the prefork pool, its
    pool children, so :meth:`kill`, :meth:`pause` and :meth:`resume` reach
    all of them. Output (stdout and stderr) goes to a log file; :meth:`logs`
    returns it. ``env`` is merged onto ``os.environ``; ``pythonpath`` entries
    are put in front of ``PYTHONPATH`` so the test's app module imports.

    ``pool`` is any Celery pool (``prefork``, ``threads``, ``solo``, ...).
    ``hostname`` is expanded as ``-n`` is (``"w1@%h"``; a value without ``@``
    is a host under ``celery@``); the default is unique per worker. ``args`` are extra
    ``celery worker`` options, by default :data:`FAST_WORKER_ARGS`.

    Use it as a context manager (started and ready on entry, stopped on exit),
    or call :meth:`start` and :meth:`ready`, then :meth:`stop` or :meth:`close`.
    The worker is killed at interpreter exit if it is still running.

    Linux only: it reads ``/proc`` to find the pool children.
    """

    _numbers = itertools.count(1)

    def __init__(
        self,
        app: str,
        *,
        pool: str = "prefork",
        concurrency: int = 1,
        queues: Sequence[str] = (),
        hostname: str | None = None,
        loglevel: str = "INFO",
        prefetch_multiplier: int = 1,
        env: Mapping[str, str] | None = None,
        pythonpath: Sequence[StrPath] = (),
        args: Sequence[str] = FAST_WORKER_ARGS,
        log_path: StrPath | None = None,
        cwd: StrPath | None = None,
        python: str = sys.executable,
    ) -> None:
        self.app = app
        self.pool = pool
        self.concurrency = concurrency
        self.queues = tuple(queues)
        default = f"w{next(self._numbers)}-{uuid.uuid4().hex[:8]}@%h"
        self.hostname: str = host_format(default_nodename(hostname or default))
        self.loglevel = loglevel
        self.prefetch_multiplier = prefetch_multiplier
        self.extra_env = dict(env or {})
        self.pythonpath = tuple(os.fspath(p) for p in pythonpath)
        self.args = tuple(args)
        self.cwd = cwd
        self.python = python
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else None
        self._log_offset = 0
        self._closed_log: str | None = None
        self._popen: subprocess.Popen[bytes] | None = None

    def _log_file(self) -> Path:
        """The log file, a new temporary file unless one was given."""
        if self.log_path is None:
            name = self.hostname.partition("@")[0]
            fd, path = tempfile.mkstemp(prefix=f"celery-{name}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(path)
        return self.log_path

    @property
    def name(self) -> str:
        """The worker's node name (``-n``), as in ``app.control.ping()`` replies."""
        return self.hostname

    def command(self) -> list[str]:
        """The command line that starts the worker."""
        cmd = [self.python, "-c", _BOOTSTRAP, "-A", self.app, "worker"]
        cmd += ["--pool", self.pool, "--concurrency", str(self.concurrency)]
        cmd += ["--hostname", self.hostname, "--loglevel", self.loglevel]
        cmd += ["--prefetch-multiplier", str(self.prefetch_multiplier)]
        if self.queues:
            cmd += ["--queues", ",".join(self.queues)]
        return cmd + list(self.args)

    def environment(self) -> dict[str, str]:
        """The environment the worker runs with."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        paths = [*self.pythonpath, env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env

    def start(self) -> Self:
        """Start the worker process (without waiting: see :meth:`ready`)."""
        if self._closed_log is not None:
            raise RuntimeError(f"worker {self.hostname} is closed")
        if self._popen is not None and self._popen.returncode is None:
            raise RuntimeError(f"worker {self.hostname} is already started")
        with self._log_file().open("ab") as log:
            self._log_offset = log.tell()
            self._popen = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.cwd,
                start_new_session=True,
            )
        atexit.register(self._kill_at_exit)
        return self

    @property
    def pid(self) -> int:
        """The main process id, which is also the process group id."""
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the worker has been stopped or killed (``-9`` for SIGKILL)."""
        return None if self._popen is None else self._popen.returncode

    @property
    def running(self) -> bool:
        """True while the main process has not exited (a paused worker is running)."""
        popen = self._popen
        if popen is None or popen.returncode is not None:
            return False
        try:
            exited = os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return exited is None

    def ready(self, timeout: float = 30.0) -> bool:
        """Wait until the worker consumes from its queues; return True.

        Readiness is Celery's ``worker_ready`` signal (the moment it logs
        ``"<hostname> ready."``), whatever the log level. Raises
        :class:`WorkerFailed` with the log tail if the process exits first,
        and :class:`WaitTimeout` with the log tail after ``timeout`` seconds.
        """

        def consuming() -> bool:
            if _READY_MARKER in self._log_since_start():
                return True
            if not self.running:
                raise WorkerFailed(
                    f"worker {self.hostname} exited before it was ready; "
                    f"log tail:\n{self.log_tail()}"
                )
            return False

        wait_for(
            consuming,
            timeout,
            interval=0.02,
            message=lambda: f"worker {self.hostname} not ready; log tail:\n{self.log_tail()}",
        )
        return True

    def logs(self) -> str:
        """Everything the worker wrote, over all its starts."""
        if self._closed_log is not None:
            return self._closed_log
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of :meth:`logs`."""
        return "\n".join(self.logs().splitlines()[-lines:])

    def _log_since_start(self) -> str:
        if self.log_path is None:
            return ""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` appears in the output of the current run."""
        wait_for(
            lambda: text in self._log_since_start(),
            timeout,
            message=lambda: f"{text!r} not logged by {self.hostname}; tail:\n{self.log_tail()}",
        )

    def child_pids(self) -> list[int]:
        """Live direct children of the main process: the prefork pool processes.

        To act on the child running a given task, have the task report
        ``os.getpid()`` (to Redis, a file, a table) and pass that pid to
        :meth:`pause`, :meth:`resume` or :meth:`kill`.
        """
        if self.returncode is not None:
            return []
        return sorted(pid for pid, ppid, _ in _live_processes() if ppid == self.pid)

    def group_pids(self) -> list[int]:
        """Live processes of the worker's process group (main process included)."""
        if self.returncode is not None:
            return []
        return sorted(pid for pid, _, group in _live_processes() if group == self.pid)

    def send_signal(self, sig: int, pid: int | None = None) -> None:
        """Send ``sig`` to the whole process group, or only to ``pid`` in it."""
        if not self.running:
            raise WorkerFailed(f"worker {self.hostname} is not running")
        if pid is None:
            os.killpg(self.pid, sig)
            return
        stat = _proc_stat(pid)
        if stat is None or stat[2] != self.pid:
            raise ValueError(f"pid {pid} is not a process of worker {self.hostname}")
        os.kill(pid, sig)

    def pause(self, pid: int | None = None) -> None:
        """SIGSTOP the whole worker, or only process ``pid`` (a pool child)."""
        self.send_signal(signal.SIGSTOP, pid)

    def resume(self, pid: int | None = None) -> None:
        """SIGCONT what :meth:`pause` stopped."""
        self.send_signal(signal.SIGCONT, pid)

    def kill(self, pid: int | None = None) -> None:
        """SIGKILL the whole process group and reap it, or only process ``pid``.

        Killing the group is a machine dying: no task hook runs and
        unacknowledged messages stay in the broker until its visibility
        timeout. Killing one pool child is a task process dying: the main
        process sees ``WorkerLostError`` (and, with ``acks_late`` and
        ``task_reject_on_worker_lost``, puts the message back at once).
        Returns once the target is dead.
        """
        if pid is not None:
            self.send_signal(signal.SIGKILL, pid)
            wait_for(lambda: not process_alive(pid), message=f"pid {pid} survived SIGKILL")
            return
        if self._popen is None or self._popen.returncode is not None:
            return
        self._killpg(signal.SIGKILL)
        self._reap()

    def terminate(self) -> None:
        """Begin a warm shutdown (SIGTERM to the main process) without waiting.

        A paused worker is resumed first. Follow with :meth:`stop` to wait and
        reap; :func:`stop_all` does both for many workers at once.
        """
        if self.running:
            self._killpg(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Warm shutdown (SIGTERM), then SIGKILL of the group after ``timeout``.

        A warm shutdown lets running tasks finish and gives prefetched,
        unacknowledged messages back to the broker; Celery notices the signal
        within its one-second poll, so it takes a second or more (about 2.5 s
        with a prefork pool). Returns the exit status (``None`` if it was never
        started).
        """
        popen = self._popen
        if popen is None or popen.returncode is not None:
            return self.returncode
        self.terminate()
        with contextlib.suppress(WaitTimeout):
            wait_for(lambda: not self.running, timeout)
        self._reap()
        return self.returncode

    def restart(self, timeout: float = 10.0) -> None:
        """:meth:`stop`, :meth:`start` and wait until :meth:`ready` again."""
        self.stop(timeout)
        self.start()
        self.ready()

    def close(self) -> None:
        """Stop the worker and delete the log file it created; :meth:`logs` still works."""
        self.stop()
        if self._own_log and self.log_path is not None and self._closed_log is None:
            self._closed_log = self.logs()
            self.log_path.unlink(missing_ok=True)

    def _killpg(self, sig: int) -> None:
        # Only while the main process is unreaped: its pid (the group id)
        # cannot be reused until then.
        if self._popen is not None and self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, sig)

    def _reap(self) -> None:
        """Kill what is left of the group, reap the main process, wait for the rest."""
        popen = self._started()
        self._killpg(signal.SIGKILL)
        popen.wait()
        atexit.unregister(self._kill_at_exit)
        wait_for(
            lambda: not any(group == popen.pid for _, _, group in _live_processes()),
            message=f"processes of worker {self.hostname} survived SIGKILL",
        )

    def _kill_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"worker {self.hostname} was never started")
        return self._popen

    def __enter__(self) -> Self:
        self.start()
        try:
            self.ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<WorkerProcess {self.hostname} {self.pool}x{self.concurrency} {state}>"


def stop_all(workers: Iterable[WorkerProcess], timeout: float = 10.0) -> None:
    """Warm-shut-down several workers in parallel (see :meth:`WorkerProcess.stop`)."""
    workers = list(workers)
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.stop(timeout)


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


class TcpProxy:
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer:
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def publish_duplicates(
    task: Task,
    calls: Iterable[Sequence[Any] | Mapping[str, Any]],
    copies: int = 2,
    *,
    adjacent: bool = True,
    **options: Any,
) -> list[str]:
    """Publish every call ``copies`` times with one task id; return the ids.

    This is a producer publishing the same message twice: Celery does not
    de-duplicate it, so without a guard every copy runs. A call is a sequence
    of positional arguments or a mapping of keyword arguments. With
    ``adjacent`` (default) the copies of one call are published back to back,
    so that idle workers take them at the same moment; otherwise each round
    publishes every call once. ``options`` go to ``apply_async`` (``queue=``,
    ``countdown=``, ...). One producer connection is used for all messages.
    """
    planned = [(str(uuid.uuid4()), call) for call in calls]
    if adjacent:
        order = [item for item in planned for _ in range(copies)]
    else:
        order = [item for _ in range(copies) for item in planned]
    with task.app.producer_or_acquire() as producer:
        for task_id, call in order:
            if isinstance(call, Mapping):
                args, kwargs = (), dict(call)
            else:
                args, kwargs = tuple(call), {}
            task.apply_async(args, kwargs, task_id=task_id, producer=producer, **options)
    return [task_id for task_id, _ in planned]


def queue_length(redis_url: str, queue: str, *, key_prefix: str = "") -> int:
    """Messages waiting in a kombu Redis queue, over all its priority lists.

    Reserved (prefetched) and unacknowledged messages are not counted.
    ``key_prefix`` is the transport's ``global_keyprefix``, if any.
    """
    import redis

    name = f"{key_prefix}{queue}"
    keys = [name, *(f"{name}\x06\x16{priority}" for priority in range(1, 10))]
    client = redis.Redis.from_url(redis_url)
    try:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            return sum(int(n) for n in pipe.execute())
    finally:
        client.close()


def unacked_length(redis_url: str, *, key_prefix: str = "") -> int:
    """Messages delivered to workers and not acknowledged yet, over every queue.

    kombu's Redis transport keeps them in one ``unacked`` hash per database
    (per ``global_keyprefix``): messages running with ``acks_late``, messages
    prefetched by a worker, and ETA/countdown messages a worker holds until
    their time. Those older than ``visibility_timeout`` are put back in their
    queue and delivered again.
    """
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.hlen(f"{key_prefix}unacked"))
    finally:
        client.close()


def wait_until_drained(
    redis_url: str,
    queues: str | Sequence[str],
    *,
    key_prefix: str = "",
    store: Any = None,
    settle: float = 1.0,
    timeout: float = 120.0,
    interval: float = 0.2,
) -> None:
    """Wait until the work is done: nothing queued, nothing unacknowledged, no claim running.

    ``queues`` are the Redis queues to watch; unacknowledged messages are
    counted over all of them (see :func:`unacked_length`). With ``store`` (a
    :class:`~celery_claim.ClaimStore`), a claim still ``running`` also counts
    as work in progress: a running claim that no message will ever come back
    for is a lost job, and this wait then times out. All of it must hold for
    ``settle`` seconds in a row (a message is briefly in neither list while a
    worker moves it). Raises :class:`WaitTimeout` with the last counts.
    """
    names = [queues] if isinstance(queues, str) else list(queues)
    last: dict[str, int] = {}
    quiet_since: list[float] = []

    def drained() -> bool:
        last["queued"] = sum(queue_length(redis_url, q, key_prefix=key_prefix) for q in names)
        last["unacked"] = unacked_length(redis_url, key_prefix=key_prefix)
        last["running claims"] = (
            len(store.list_claims(state="running", limit=100)) if store is not None else 0
        )
        if any(last.values()):
            quiet_since.clear()
            return False
        if not quiet_since:
            quiet_since.append(time.monotonic())
        return time.monotonic() - quiet_since[0] >= settle

    wait_for(
        drained,
        timeout,
        interval,
        message=lambda: "work still in progress: "
        + ", ".join(f"{count} {what}" for what, count in last.items()),
    )


class LocalWorkerContainer:
    """The container-like object pytest-celery's node classes drive, for a :class:`WorkerProcess`.

    It answers what ``CeleryTestNode`` and ``CeleryTestWorker`` call on a
    Docker container (``ready``, ``logs``, ``name``, ``id``, ``status``,
    ``kill``, ``reload``, ``restart``, ``teardown``, ``worker_name``, ...).
    Build one through :func:`local_worker_node`.
    """

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.name = worker.hostname
        self.id = worker.hostname.partition("@")[2]

    @property
    def status(self) -> str:
        """``"running"``, ``"exited"`` or ``"created"``, as Docker reports it."""
        if self.worker.running:
            return "running"
        return "created" if self.worker.returncode is None else "exited"

    @property
    def celeryconfig(self) -> dict[str, Any]:
        """No configuration comes from a worker node."""
        return {}

    def ready(self) -> bool:
        """Wait until the worker consumes (see :meth:`WorkerProcess.ready`)."""
        return self.worker.ready()

    def logs(self) -> str:
        """The worker's output."""
        return self.worker.logs()

    def kill(self, signal: str | int = "SIGKILL") -> None:
        """SIGKILL kills the process group and waits; other signals go to the main process."""
        signum = signal if isinstance(signal, int) else _signal_number(signal)
        if signum == _SIGKILL:
            self.worker.kill()
        elif self.worker.running:
            os.kill(self.worker.pid, signum)

    def reload(self) -> None:
        """Nothing to refresh: the state is read from the process each time."""

    def restart(self, timeout: float = 10.0) -> None:
        """Stop (SIGKILL after ``timeout``), start, wait until ready."""
        self.worker.restart(timeout)

    def teardown(self) -> None:
        """Stop the worker and remove its log file."""
        self.worker.close()

    def worker_name(self) -> str:
        """The node name before ``@``."""
        return self.worker.hostname.partition("@")[0]

    def worker_queue(self) -> str:
        """The first queue the worker consumes (``"celery"`` if none were given)."""
        return self.worker.queues[0] if self.worker.queues else "celery"

    def log_level(self) -> str:
        """The worker's ``--loglevel``."""
        return self.worker.loglevel

    def version(self) -> str:
        """The Celery version installed for the worker's interpreter."""
        import celery

        return str(celery.__version__)


_SIGKILL = signal.SIGKILL


def _signal_number(name: str) -> int:
    return int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))


def local_worker_node(worker: WorkerProcess, app: Celery | None = None) -> Any:
    """A pytest-celery ``CeleryTestWorker`` node backed by a local :class:`WorkerProcess`.

    Needs pytest-celery (not Docker). The node's ``ready()``, ``logs()``,
    ``name()``, ``hostname()``, ``wait_for_log()``, ``assert_log_exists()``,
    ``assert_log_does_not_exist()``, ``kill()``, ``restart()`` and
    ``teardown()`` act on the local process; ``worker_name``,
    ``worker_queue``, ``log_level`` and ``version`` describe it.
    ``get_running_processes_info()`` lists the worker's process group.

    To use pytest-celery's ``celery_setup`` fixture without Docker, override
    the fixtures that would start containers, in ``conftest.py``::

        @pytest.fixture
        def celery_worker_cluster(celery_setup_app):
            with WorkerProcess("myproject.celery", queues=["tests"]) as worker:
                node = local_worker_node(worker, celery_setup_app)
                yield CeleryWorkerCluster(node)

        @pytest.fixture
        def celery_broker_cluster():
            return None

        @pytest.fixture
        def celery_backend_cluster():
            return None

        @pytest.fixture
        def celery_setup_app():
            return myproject.celery.app

    Left as they are, ``celery_setup``, ``celery_worker``, ``celery_broker``
    and their friends start Docker containers (built-in worker image, Redis,
    RabbitMQ) and error without a Docker engine; with Docker, they run the
    same scenarios against containers, and the worker's
    ``get_running_processes_info`` then reads the container's processes.
    """
    from pytest_celery import CeleryTestWorker

    class LocalTestWorker(CeleryTestWorker):  # type: ignore[misc]
        container: LocalWorkerContainer

        def hostname(self) -> str:
            return self.container.worker.hostname

        def get_running_processes_info(
            self,
            columns: list[str] | None = None,
            filters: dict[str, str] | None = None,
        ) -> list[dict[str, Any]]:
            rows = [_process_info(pid) for pid in self.container.worker.group_pids()]
            if filters:
                rows = [r for r in rows if all(r.get(k) == v for k, v in filters.items())]
            if columns:
                rows = [{k: r.get(k) for k in columns} for r in rows]
            return rows

    return LocalTestWorker(LocalWorkerContainer(worker), app)


def _process_info(pid: int) -> dict[str, Any]:
    """pid, name and cmdline of a process, in pytest-celery's column names."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return {"pid": pid}
    return {"pid": pid, "name": name, "cmdline": [c.decode() for c in cmdline if c]}
