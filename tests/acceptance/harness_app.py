"""A plain Celery app (no claims) for testing the process harness itself.

Each test names a namespace. The worker reads it from ``HARNESS_NAMESPACE``;
the test process builds its own app with :func:`create_app`. The namespace is
the queue name and the kombu key prefix, so tests never share a queue or the
``unacked`` hash, and every key a test makes starts with ``f"{namespace}:"``.

Effects are counted in Redis at ``EFFECTS_URL`` (the shared test Redis even
when the broker is a throwaway server):

* ``{namespace}:effects``: hash of token -> times a task body ran for it;
* ``{namespace}:hosts``: hash of worker hostname -> tasks it ran;
* ``{namespace}:started`` / ``{namespace}:done``: hash of token -> pid.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

REDIS_URL = os.environ.get("CELERY_CLAIM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
BROKER_URL = os.environ.get("HARNESS_BROKER_URL", REDIS_URL)
EFFECTS_URL = os.environ.get("HARNESS_EFFECTS_URL", REDIS_URL)
NAMESPACE = os.environ.get("HARNESS_NAMESPACE", "harness")

_clients: dict[int, redis.Redis] = {}


def effects() -> redis.Redis:
    """A Redis client for the effect counters, one per process."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(EFFECTS_URL)
    return _clients[pid]


def create_app(namespace: str, broker_url: str = BROKER_URL) -> Celery:
    """The harness app, isolated under ``namespace``."""
    app = Celery("harness_app", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=namespace,
        broker_transport_options={"global_keyprefix": f"{namespace}:"},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_lost_wait=1.0,
        worker_hijack_root_logger=True,
    )

    @app.task(name="harness.record", bind=True, shared=False)
    def record(self: Any, token: str) -> None:
        pipe = effects().pipeline()
        pipe.hincrby(f"{namespace}:effects", token, 1)
        pipe.hincrby(f"{namespace}:hosts", self.request.hostname, 1)
        pipe.execute()

    @app.task(name="harness.slow", shared=False)
    def slow(token: str, seconds: float) -> None:
        effects().hset(f"{namespace}:started", token, os.getpid())
        time.sleep(seconds)
        effects().hset(f"{namespace}:done", token, os.getpid())

    return app


app = create_app(NAMESPACE)
