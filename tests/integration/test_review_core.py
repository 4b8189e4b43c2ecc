"""Review findings in the core, each shown as a test of what the design promises.

In-process tests: a worker's request is simulated the way
``test_semantics.test_self_retry_releases_before_the_next_attempt_is_published``
does it (``push_request`` with ``is_eager=False``), so the worker-only paths
(defer, completion failure) run without a broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.canvas import Signature
from celery.exceptions import Reject, Retry
from kombu.exceptions import OperationalError

from celery_claim import ClaimStore, ClaimTask


def _as_worker(task: Any, task_id: str, args: tuple[Any, ...]) -> None:
    """Push a request as a worker builds it: not eager, so publishing is real."""
    task.push_request(id=task_id, retries=0, is_eager=False, called_directly=False,
                      delivery_info={"routing_key": "celery", "exchange": ""}, args=args,
                      kwargs={}, headers=None, hostname="review@host")


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Signature]:
    seen: list[Signature] = []
    monkeypatch.setattr(Signature, "apply_async",
                        lambda sig, *a, **kw: seen.append(sig))
    return seen


# --- F1: a deferred duplicate whose re-publish fails ----------------------------------

def test_deferred_duplicate_is_requeued_when_the_broker_refuses_the_republish(
        make_app: Callable[..., Celery], database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Defer re-publishes, then acks with Ignore. If the broker refuses the
    re-publish, the broker error escapes ``__call__``: Celery records FAILURE
    under the task id (with the default key, the *holder's* task id) and acks
    the message. ``_retry_later`` already handles this case with
    ``Reject(requeue=True)``; the defer path should too."""
    app = make_app(database_url)

    @app.task(base=ClaimTask, bind=True, shared=False)
    def job(self: ClaimTask, n: int) -> int:
        return n

    task_id = "held-by-someone-else"
    job.claim_store.create_schema()
    holder = job.claim_store.acquire(
        job.claim_key_for(1, task_id=task_id), task_name=job.name, task_id=task_id,
        owner="holder", payload_digest=None, lease_seconds=60)
    assert holder is not None

    def broker_down(sig: Signature, *a: Any, **kw: Any) -> None:
        raise OperationalError("Error 111 connecting to redis: Connection refused")

    monkeypatch.setattr(Signature, "apply_async", broker_down)
    _as_worker(job, task_id, (1,))
    try:
        with pytest.raises(Reject) as caught:
            job.__call__(1)
        assert caught.value.requeue is True
    finally:
        job.pop_request()


# --- F2: an error of the body's own writes at COMMIT is not a store outage ------------

@pytest.fixture
def deferred_unique(database_url: str, table_name: str) -> str:
    name = f"{table_name}_fx"
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            f'CREATE TABLE "{name}" (id int, CONSTRAINT "{name}_u" UNIQUE (id) '
            "DEFERRABLE INITIALLY DEFERRED)"))
    engine.dispose()
    return name  # dropped by make_app's clean-up (<table>_fx)


def test_a_commit_time_constraint_violation_fails_the_task_instead_of_looping(
        make_app: Callable[..., Celery], database_url: str, deferred_unique: str,
        published: list[Signature]) -> None:
    """The body's atomic() writes violate a deferred constraint, so COMMIT
    fails. That is the body's failure, the same on every attempt. Today it is
    reported as ``claim_store_error`` (operation ``complete``), the claim is
    released and the task re-published to run again 1 s later: forever."""
    app = make_app(database_url)

    @app.task(base=ClaimTask, bind=True, claim_key="dup:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> int:
        with self.claim.atomic() as conn:
            conn.execute(sa.text(f'INSERT INTO "{deferred_unique}" VALUES (1), (1)'))
        return n

    _as_worker(job, "t-1", (1,))
    try:
        with pytest.raises(Exception) as caught:  # noqa: PT011 - any but Retry
            job.__call__(1)
    finally:
        job.pop_request()
    assert not isinstance(caught.value, Retry), "a data error is retried as an outage"
    assert published == []
    record = job.claim_store.get("dup:1")
    assert record is not None
    assert record.state == "failed"


# --- F3: fencing tokens restart at 1 after a purge ------------------------------------

@pytest.mark.xfail(strict=True, reason="known limitation (docs/guarantees.md): a purged key "
                   "starts again at token 1")
def test_a_paused_holder_cannot_complete_a_later_acquisition_after_a_purge(
        pg_store: ClaimStore) -> None:
    """A holds token 1 and pauses past its lease; B takes over (token 2) and
    finishes with a short TTL; purge deletes the row; C acquires the key anew
    and gets token 1 again. A resumes: its fenced completion matches C's row."""
    a = pg_store.acquire("k", task_name="t", task_id="a", owner="A", payload_digest=None,
                         lease_seconds=1)
    assert a is not None
    assert a.token == 1
    time.sleep(1.1)  # A is paused past its lease
    b = pg_store.acquire("k", task_name="t", task_id="b", owner="B", payload_digest=None,
                         lease_seconds=60)
    assert b is not None
    assert b.token == 2
    assert pg_store.complete("k", b.token, ttl_seconds=0)
    time.sleep(0.01)
    assert pg_store.purge() == 1
    c = pg_store.acquire("k", task_name="t", task_id="c", owner="C", payload_digest=None,
                         lease_seconds=60)
    assert c is not None
    # A resumes and completes with its old token.
    assert not pg_store.complete("k", a.token, ttl_seconds=60), \
        f"A's stale token {a.token} completed C's claim (token {c.token})"


# --- F4: self.retry(args=...) of the same task is refused as a payload mismatch --------

def test_retry_with_new_arguments_is_not_a_payload_mismatch(
        make_app: Callable[..., Celery], any_url: str) -> None:
    """Celery documents ``self.retry(args=..., kwargs=...)`` to change the next
    attempt's arguments (a cursor, a smaller batch). The released row keeps
    the first attempt's digest, so the next attempt of the *same task id* is
    refused with ClaimPayloadMismatch."""
    app = make_app(any_url)
    seen: list[int] = []

    @app.task(base=ClaimTask, bind=True, claim_key="page:{job}", max_retries=3,
              shared=False)
    def page(self: ClaimTask, job: str, cursor: int = 0) -> int:
        seen.append(cursor)
        if cursor < 2:
            raise self.retry(args=(job, cursor + 1), countdown=0)
        return cursor

    result = page.apply(("j",))
    assert seen == [0, 1, 2], result.result
    assert result.get() == 2


# --- F5 (fixed in task.py): self.retry() with claim_enabled=False ----------------------

def test_retry_works_with_claims_disabled_and_no_store() -> None:
    """``claim_enabled=False`` (tests, emergencies) needs no store; retry()
    tried to release the non-existent claim and failed the task with
    ClaimConfigurationError. Fixed: retry() only releases a held claim."""
    app = Celery("review-disabled", set_as_current=False)
    app.conf.claim_enabled = False
    runs: list[int] = []

    @app.task(base=ClaimTask, bind=True, max_retries=2, shared=False)
    def job(self: ClaimTask) -> str:
        runs.append(1)
        if len(runs) < 2:
            raise self.retry(countdown=0)
        return "ok"

    assert job.apply().get() == "ok"
    assert runs == [1, 1]


# --- F6: the store failing inside the body (atomic()) fails the job for good -----------

def test_a_store_outage_inside_the_body_is_retried_not_failed(
        make_app: Callable[..., Celery], database_url: str, published: list[Signature],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The store is reachable at acquire, then goes away before the body
    enters ``self.claim.atomic()``. The ClaimStoreError escapes the body, the
    claim is marked ``failed`` and Celery acks the message: the job is lost.
    Fail closed, as at acquire and completion: release (fenced) and re-publish."""
    app = make_app(database_url)

    @app.task(base=ClaimTask, bind=True, claim_key="blip:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> int:
        with self.claim.atomic() as conn:
            conn.execute(sa.text("SELECT 1"))
        return n

    store = job.claim_store

    def unreachable(**context: object) -> sa.Connection:
        from celery_claim.errors import ClaimStoreError

        raise ClaimStoreError("claim store connect failed: connection refused")

    monkeypatch.setattr(store, "begin", unreachable)
    _as_worker(job, "t-blip", (1,))
    try:
        with pytest.raises(Retry):
            job.__call__(1)
    finally:
        job.pop_request()
    assert len(published) == 1
    record = store.get("blip:1")
    assert record is not None
    assert record.state == "released"
