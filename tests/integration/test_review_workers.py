"""Review findings that need a real ``celery worker`` (PostgreSQL and Redis)."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from celery_claim import ClaimStore
from celery_claim.testing import WorkerProcess, wait_for

APP = '''
import os, time
from celery import Celery
from celery_claim import ClaimTask

app = Celery("review_app", broker=os.environ["REVIEW_BROKER"])
app.conf.update(claim_database_url=os.environ["REVIEW_DB"],
                claim_table=os.environ["REVIEW_TABLE"],
                task_default_queue=os.environ["REVIEW_QUEUE"],
                claim_lease_seconds=1, worker_prefetch_multiplier=1)
if os.environ.get("REVIEW_TYPO"):
    app.conf.claim_lease_secondz = 5  # a typo: must stop the worker at start-up


@app.task(base=ClaimTask, bind=True, name="review.slow", claim_key="slow:{n}",
          time_limit=3)
def slow(self, n):
    if self.claim.token == 1:
        time.sleep(60)  # the first acquisition hits the hard time limit
    return self.claim.token
'''


@pytest.fixture
def review_app(tmp_path: Path, database_url: str, redis_url: str,
               table_name: str) -> Iterator[dict[str, str]]:
    (tmp_path / "review_app.py").write_text(textwrap.dedent(APP))
    queue = f"review-{uuid.uuid4().hex[:8]}"
    env = {"REVIEW_BROKER": redis_url, "REVIEW_DB": database_url,
           "REVIEW_TABLE": table_name, "REVIEW_QUEUE": queue,
           "REVIEW_PATH": str(tmp_path)}
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

    app = Celery("review_producer", broker=env["REVIEW_BROKER"], set_as_current=False)
    app.send_task("review.slow", (n,), queue=env["REVIEW_QUEUE"])
    app.close()


@pytest.mark.slow
def test_a_bad_claim_setting_stops_the_worker_at_start_up(review_app: dict[str, str]) -> None:
    """DESIGN: unknown ``claim_*`` keys are an error at start-up. The check
    runs in a ``worker_init`` receiver, and Celery's ``Signal.send`` only
    logs a receiver's exception: the worker starts, consumes, and every
    claimed task fails with ClaimConfigurationError (its message acked, so
    the job is lost). Nothing is even logged at start: the receiver runs
    before the worker's logging is set up."""
    env = {**review_app, "REVIEW_TYPO": "1"}
    worker = WorkerProcess("review_app", env=env, pythonpath=[env["REVIEW_PATH"]],
                           queues=[env["REVIEW_QUEUE"]])
    worker.start()
    try:
        wait_for(lambda: not worker.running, 20,
                 message=lambda: "the worker kept running with an unknown claim_* "
                                 "setting:\n" + worker.log_tail())
    finally:
        worker.close()


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_a_hard_time_limit_is_taken_over_after_the_lease(review_app: dict[str, str],
                                                         pool: str) -> None:
    """DESIGN: worker killed (SIGKILL, OOM, *hard time limit*) -> the lease
    lapses and the re-delivered message takes over with token + 1. On a hard
    time limit Celery acknowledges the message (``acks_on_timeout`` defaults
    to True), so no delivery ever comes. The pool child dies by SystemExit,
    which releases the claim (reason ``systemexit``): the job is left
    ``released`` and never completes. On gevent the time limit reaches only
    ``Request.on_timeout``, which before Celery 5.7 left the message
    unacknowledged until the worker stopped."""
    if pool == "gevent":  # reports a hard time limit to Request.on_timeout only
        pytest.importorskip("gevent")
    env = review_app
    worker = WorkerProcess("review_app", env=env, pythonpath=[env["REVIEW_PATH"]],
                           queues=[env["REVIEW_QUEUE"]], pool=pool, concurrency=1)
    store = ClaimStore(env["REVIEW_DB"], table=env["REVIEW_TABLE"])
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
