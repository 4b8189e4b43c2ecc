"""Start-up checks and hard time limits, with a real ``celery worker`` (PostgreSQL and Redis)."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from celery_claim import ClaimStore
from celery_claim.testing import WorkerProcess, wait_for

APP = '''
import os, time
from celery import Celery
from celery_claim import ClaimTask

app = Celery("limits_app", broker=os.environ["LIMITS_BROKER"])
app.conf.update(claim_database_url=os.environ["LIMITS_DB"],
                claim_table=os.environ["LIMITS_TABLE"],
                task_default_queue=os.environ["LIMITS_QUEUE"],
                claim_lease_seconds=1, worker_prefetch_multiplier=1)
if os.environ.get("LIMITS_TYPO"):
    app.conf.claim_lease_secondz = 5  # a typo: must stop the worker at start-up


@app.task(base=ClaimTask, bind=True, name="limits.slow", claim_key="slow:{n}",
          time_limit=3)
def slow(self, n):
    if self.claim.token == 1:
        time.sleep(60)  # the first acquisition hits the hard time limit
    return self.claim.token
'''


@pytest.fixture
def limits_app(tmp_path: Path, database_url: str, redis_url: str,
               table_name: str) -> Iterator[dict[str, str]]:
    (tmp_path / "limits_app.py").write_text(textwrap.dedent(APP))
    queue = f"limits-{uuid.uuid4().hex[:8]}"
    env = {"LIMITS_BROKER": redis_url, "LIMITS_DB": database_url,
           "LIMITS_TABLE": table_name, "LIMITS_QUEUE": queue,
           "LIMITS_PATH": str(tmp_path)}
    yield env
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"*{queue}*"):  # the queue and its bindings
        client.delete(key)
    client.close()
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table_name}"'))
    engine.dispose()


def _publish(env: dict[str, str], n: int) -> None:
    from celery import Celery

    app = Celery("limits_producer", broker=env["LIMITS_BROKER"], set_as_current=False)
    app.send_task("limits.slow", (n,), queue=env["LIMITS_QUEUE"])
    app.close()


@pytest.mark.slow
def test_a_bad_claim_setting_stops_the_worker_at_start_up(limits_app: dict[str, str]) -> None:
    """Unknown ``claim_*`` keys are an error at start-up: the worker stops.
    (A ``worker_init`` receiver's exception is only logged by Celery's
    ``Signal.send``; a worker that kept running would fail every claimed task
    with ClaimConfigurationError, its message acked, so the job lost.)"""
    env = {**limits_app, "LIMITS_TYPO": "1"}
    worker = WorkerProcess("limits_app", env=env, pythonpath=[env["LIMITS_PATH"]],
                           queues=[env["LIMITS_QUEUE"]])
    worker.start()
    try:
        wait_for(lambda: not worker.running, 20,
                 message=lambda: "the worker kept running with an unknown claim_* "
                                 "setting:\n" + worker.log_tail())
    finally:
        worker.close()


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_a_hard_time_limit_is_taken_over_after_the_lease(limits_app: dict[str, str],
                                                         pool: str) -> None:
    """A hard time limit is a worker killed: the lease lapses and the job is
    taken over with token + 1. Celery would acknowledge the message on a hard
    time limit (``acks_on_timeout`` defaults to True), so no delivery would
    come again, and the pool child dies by SystemExit; the claim must not be
    left ``released`` for ever. On gevent the time limit reaches only
    ``Request.on_timeout``, which before Celery 5.7 left the message
    unacknowledged until the worker stopped."""
    if pool == "gevent":  # reports a hard time limit to Request.on_timeout only
        pytest.importorskip("gevent")
    env = limits_app
    worker = WorkerProcess("limits_app", env=env, pythonpath=[env["LIMITS_PATH"]],
                           queues=[env["LIMITS_QUEUE"]], pool=pool, concurrency=1)
    store = ClaimStore(env["LIMITS_DB"], table=env["LIMITS_TABLE"])
    try:
        with worker:
            _publish(env, 7)

            def finished() -> bool:
                record = store.get("slow:7")
                return record is not None and record.state == "succeeded"

            wait_for(finished, 25, message=lambda: f"claim: {store.get('slow:7')}\n"
                                                   + worker.log_tail())
        record = store.get("slow:7")
        assert record is not None
        assert record.token == 2
    finally:
        store.dispose()


@pytest.fixture
def worker_process_state() -> Iterator[None]:
    # Building a WorkController sets Celery's process-wide state as a worker
    # process would have it: a prefork pool marks ``result.get()`` as blocking
    # for the whole process. Put back what the test process had, so the tests
    # that run after this one in the same process see none of it.
    from celery import _state

    blocks = _state.task_join_will_block()
    try:
        yield
    finally:
        _state._set_task_join_will_block(blocks)


@pytest.mark.usefixtures("worker_process_state")
@pytest.mark.parametrize(("pool", "coalesced"), [
    ("solo", False), ("prefork", False), ("threads", True),
])
def test_only_pools_of_many_threads_coalesce(make_app: Callable[..., Any], database_url: str,
                                             pool: str, coalesced: bool) -> None:
    # worker_init, sent by Celery's own WorkController as a worker starts: a
    # process that runs one task at a time sends each statement straight on.
    from celery_claim import ClaimTask

    app = make_app(database_url, claim_coalesce=True)

    @app.task(base=ClaimTask, shared=False, name="startup.coalesce")
    def job() -> None:
        return None

    store = job._claim_runtime().store
    assert store.coalesced is not None
    worker = app.WorkController(pool_cls=pool, concurrency=2, hostname=f"{pool}@test")
    assert worker.pool_cls is not None
    assert (store.coalesced is not None) is coalesced
