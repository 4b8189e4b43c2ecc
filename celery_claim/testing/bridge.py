"""The pytest-celery bridge: its worker node API on a local :class:`WorkerProcess`.

pytest-celery drives Docker containers; :func:`local_worker_node` gives its
``CeleryTestWorker`` a container-like object backed by a local process, so
tests written against the node API run without Docker. pytest-celery is
imported only when a node is built.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

from celery_claim.testing.processes import process_info

if TYPE_CHECKING:
    from celery import Celery

    from celery_claim.testing.workers import WorkerProcess

__all__ = ["LocalWorkerContainer", "local_worker_node"]


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
            rows = [process_info(pid) for pid in self.container.worker.group_pids()]
            if filters:
                rows = [r for r in rows if all(r.get(k) == v for k, v in filters.items())]
            if columns:
                rows = [{k: r.get(k) for k in columns} for r in rows]
            return rows

    return LocalTestWorker(LocalWorkerContainer(worker), app)
