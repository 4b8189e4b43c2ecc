"""Worker processes: real ``celery worker`` processes to start, kill, pause and stop.

Each :class:`WorkerProcess` runs in its own process group, so a kill reaches
its pool children too; :func:`stop_all` shuts many down in parallel. Linux
only (``/proc``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from celery.utils.nodenames import default_nodename, host_format

from celery_claim.testing import processes
from celery_claim.testing._closing import Closing
from celery_claim.testing.queues import WaitTimeout, wait_for

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["FAST_WORKER_ARGS", "WorkerFailed", "WorkerProcess", "stop_all"]

StrPath = str | os.PathLike[str]

#: Worker options that skip the start-up handshakes a test does not need
#: (mingle alone costs about a second per worker).
FAST_WORKER_ARGS: tuple[str, ...] = (
    "--without-heartbeat",
    "--without-mingle",
    "--without-gossip",
)


class WorkerFailed(RuntimeError):
    """The worker process exited when it was expected to be running."""



class WorkerProcess(Closing):
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
        cmd = [self.python, "-c", processes.BOOTSTRAP, "-A", self.app, "worker"]
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
            if processes.READY_MARKER in self._log_since_start():
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
        return sorted(pid for pid, ppid, _ in processes.live_processes() if ppid == self.pid)

    def group_pids(self) -> list[int]:
        """Live processes of the worker's process group (main process included)."""
        if self.returncode is not None:
            return []
        return sorted(pid for pid, _, group in processes.live_processes() if group == self.pid)

    def send_signal(self, sig: int, pid: int | None = None) -> None:
        """Send ``sig`` to the whole process group, or only to ``pid`` in it."""
        if not self.running:
            raise WorkerFailed(f"worker {self.hostname} is not running")
        if pid is None:
            os.killpg(self.pid, sig)
            return
        stat = processes.proc_stat(pid)
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
            wait_for(lambda: not processes.process_alive(pid),
                     message=f"pid {pid} survived SIGKILL")
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
            lambda: not any(group == popen.pid for _, _, group in processes.live_processes()),
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
