"""Real processes and real failures for testing Celery tasks under duplicate delivery.

The helpers run actual ``celery worker`` processes, a throwaway ``redis-server``
and a TCP proxy that can make PostgreSQL or Redis unreachable. They need Linux
(process groups and ``/proc``) and nothing else: no Docker.

Every name below is importable from ``celery_claim.testing``; each lives in
the module of its concern, imported only when first used (so a program that
needs worker processes does not load the TCP proxy or pytest-celery):

* worker processes (:mod:`~celery_claim.testing.workers`): :class:`WorkerProcess`,
  one ``celery worker`` in its own process group; :func:`stop_all`, to
  warm-shut-down many in parallel; :data:`FAST_WORKER_ARGS`;
  :class:`WorkerFailed`; and :func:`process_alive`
  (:mod:`~celery_claim.testing.processes`);
* network faults (:mod:`~celery_claim.testing.network`): :class:`TcpProxy`, a
  TCP proxy whose link can be cut and restored; :func:`free_port`;
  throwaway servers (:mod:`~celery_claim.testing.servers`): :class:`RedisServer`,
  a ``redis-server`` to stop, crash and restart;
* queues and waiting (:mod:`~celery_claim.testing.queues`): :func:`wait_for`,
  :class:`WaitTimeout`, :func:`publish_duplicates`, :func:`queue_length`,
  :func:`unacked_length`, and :func:`wait_until_drained` (nothing queued,
  nothing unacknowledged, no claim running: the end of a scenario);
* the pytest-celery bridge (:mod:`~celery_claim.testing.bridge`):
  :func:`local_worker_node` wraps a running :class:`WorkerProcess` in
  pytest-celery's ``CeleryTestWorker`` (through a
  :class:`LocalWorkerContainer`), so tests written against its node API
  (``logs()``, ``wait_for_log()``, ``kill()``, ``restart()``, ``ready()``) run
  without Docker. See its docstring.

Isolation between tests on one Redis database: give each test its own queue
*and* its own kombu key prefix (``broker_transport_options={"global_keyprefix":
f"{name}:"}``). kombu keeps unacknowledged messages of every queue in one
``unacked`` hash per database, and any worker with a short
``visibility_timeout`` restores every old entry it finds there, including
another test's; a key prefix gives each test its own hash, and cleaning up is
deleting ``f"{name}:*"``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_claim.testing.bridge import LocalWorkerContainer, local_worker_node
    from celery_claim.testing.network import TcpProxy, free_port
    from celery_claim.testing.processes import process_alive
    from celery_claim.testing.queues import (
        WaitTimeout,
        publish_duplicates,
        queue_length,
        unacked_length,
        wait_for,
        wait_until_drained,
    )
    from celery_claim.testing.servers import RedisServer
    from celery_claim.testing.workers import (
        FAST_WORKER_ARGS,
        WorkerFailed,
        WorkerProcess,
        stop_all,
    )

__all__ = [
    "FAST_WORKER_ARGS",
    "LocalWorkerContainer",
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

#: The module of each public name.
_HOMES = {
    "FAST_WORKER_ARGS": "workers",
    "LocalWorkerContainer": "bridge",
    "RedisServer": "servers",
    "TcpProxy": "network",
    "WaitTimeout": "queues",
    "WorkerFailed": "workers",
    "WorkerProcess": "workers",
    "free_port": "network",
    "local_worker_node": "bridge",
    "process_alive": "processes",
    "publish_duplicates": "queues",
    "queue_length": "queues",
    "stop_all": "workers",
    "unacked_length": "queues",
    "wait_for": "queues",
    "wait_until_drained": "queues",
}


def __getattr__(name: str) -> Any:
    """Import the module that holds ``name`` on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
