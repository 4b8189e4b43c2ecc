"""pytest-celery without Docker: the worker nodes are local ``celery worker`` processes.

pytest-celery's ``celery_setup`` fixture builds its setup from the fixtures
overridden here. With a Docker engine, drop the three cluster overrides and
pytest-celery starts a Redis container and your worker image instead; the
tests do not change.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

os.environ.setdefault("PROOF_NAMESPACE", f"proof{uuid.uuid4().hex[:8]}")

import pytest
import redis
from celery import Celery
from pytest_celery import CeleryWorkerCluster

from celery_claim.testing import WorkerProcess, local_worker_node, stop_all
from examples.proof import app as proof


@pytest.fixture
def celery_setup_app() -> Celery:
    return proof.app


@pytest.fixture
def celery_broker_cluster() -> None:
    return None  # the Redis the app is configured with


@pytest.fixture
def celery_backend_cluster() -> None:
    return None  # no result backend: the claims table keeps the results


@pytest.fixture
def celery_worker_cluster(celery_setup_app: Celery) -> Iterator[CeleryWorkerCluster]:
    """Two worker processes on one queue: a prefork pool and a threads pool."""
    workers = [WorkerProcess("examples.proof.app", pool=pool, concurrency=2,
                             queues=[proof.NAMESPACE]) for pool in ("prefork", "threads")]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.ready()
        yield CeleryWorkerCluster(*(local_worker_node(w, celery_setup_app) for w in workers))
    finally:
        stop_all(workers)
        for worker in workers:
            worker.close()


@pytest.fixture(autouse=True)
def tables() -> Iterator[None]:
    """The charges table for the run; the claims table is created by the workers."""
    engine = proof.charge.claim_store.engine
    proof.metadata.create_all(engine)
    yield
    proof.metadata.drop_all(engine)
    proof.charge.claim_store.drop_schema()
    client = redis.Redis.from_url(proof.app.conf.broker_url)
    keys = list(client.scan_iter(f"{proof.NAMESPACE}:*"))
    if keys:
        client.delete(*keys)
    client.close()
