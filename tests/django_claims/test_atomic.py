"""self.claim.atomic() on Django's connection, with real commits (TransactionTestCase).

ORM writes, raw cursor writes and the fenced completion commit in one
transaction; a lost claim rolls all of them back and raises ClaimLost;
transaction.on_commit callbacks run only after the claim's commit. Acquire
and completion are one statement each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.test import TransactionTestCase
from django.test.utils import CaptureQueriesContext
from proj.celery import app
from shop.models import Charge

from celery_claim import ClaimLost, ClaimTask
from celery_claim.django.connector import claim_store
from celery_claim.django.testing import eager_claims


def in_another_thread(work: Callable[[], Any]) -> Any:
    """``work()`` on another thread, so on another Django connection (closed after)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return out[0]


def visible_charges(order_id: int) -> int:
    return int(in_another_thread(lambda: Charge.objects.filter(order_id=order_id).count()))


class AtomicOnDjangosConnection(TransactionTestCase):  # type: ignore[misc]
    def setUp(self) -> None:
        context = eager_claims(app)
        context.__enter__()
        self.addCleanup(context.__exit__, None, None, None)
        self.seen: dict[str, Any] = {}

    def task(self, body: Callable[..., Any], name: str) -> Any:
        task = app.task(base=ClaimTask, bind=True, claim_key="job:{n}", name=name)(body)
        self.addCleanup(app.tasks.pop, name, None)
        return task

    def test_orm_and_cursor_writes_commit_with_the_completion(self) -> None:
        seen = self.seen

        def body(task: ClaimTask, n: int) -> str:
            with task.claim.atomic() as claim_connection:
                Charge.objects.create(order_id=n, amount_cents=1, pid=0)
                with claim_connection.cursor() as cursor:
                    cursor.execute("INSERT INTO shop_charge (order_id, amount_cents, pid, token, "
                                   "created_at) VALUES (%s, 2, 0, 0, now())", [n])
            seen["inside, after the block"] = visible_charges(n)
            seen["lease"] = claim_store().get(task.claim.key).state  # type: ignore[union-attr]
            return "done"

        job = self.task(body, "t.writes")
        assert job.delay(1).get() == "done"
        assert seen == {"inside, after the block": 0, "lease": "running"}
        assert visible_charges(1) == 2
        assert claim_store().get("job:1").state == "succeeded"  # type: ignore[union-attr]

    def test_a_lost_claim_rolls_everything_back_and_raises(self) -> None:
        ran: list[str] = []

        def take_over(key: str, token: int) -> None:
            store = claim_store()
            assert store.force_release(key, token, force=True)
            assert store.acquire(key, task_name="t", task_id="other", owner="other",
                                 payload_digest=None, lease_seconds=60) is not None

        def body(task: ClaimTask, n: int) -> None:
            with task.claim.atomic():
                Charge.objects.create(order_id=n, amount_cents=1, pid=0)
                transaction.on_commit(lambda: ran.append("published"))
            key, token = task.claim.key, task.claim.token
            in_another_thread(lambda: take_over(key, token))

        job = self.task(body, "t.lost")
        with pytest.raises(ClaimLost):
            job.delay(2).get()
        assert Charge.objects.filter(order_id=2).count() == 0
        assert ran == []
        record = claim_store().get("job:2")
        assert record is not None
        assert (record.state, record.token, record.task_id) == ("running", 2, "other")
        assert not connection.in_atomic_block

    def test_on_commit_runs_after_the_claim_commits(self) -> None:
        seen = self.seen

        def after_commit(n: int) -> None:
            seen["state"] = in_another_thread(lambda: claim_store().get(f"job:{n}").state)
            seen["charges"] = visible_charges(n)

        def body(task: ClaimTask, n: int) -> None:
            with task.claim.atomic():
                Charge.objects.create(order_id=n, amount_cents=1, pid=0)
                transaction.on_commit(lambda: after_commit(n))
            seen["before"] = dict(seen)

        job = self.task(body, "t.on_commit")
        job.delay(3).get()
        assert seen == {"before": {}, "state": "succeeded", "charges": 1}

    def test_a_body_that_raises_leaves_no_rows(self) -> None:
        def body(task: ClaimTask, n: int) -> None:
            with task.claim.atomic():
                Charge.objects.create(order_id=n, amount_cents=1, pid=0)
            raise ValueError("card declined")

        job = self.task(body, "t.raises")
        with pytest.raises(ValueError, match="card declined"):
            job.delay(4).get()
        assert Charge.objects.filter(order_id=4).count() == 0
        assert claim_store().get("job:4").state == "failed"  # type: ignore[union-attr]

    def test_acquire_and_completion_are_one_statement_each(self) -> None:
        def body(task: ClaimTask, n: int) -> None:
            with task.claim.atomic():
                Charge.objects.create(order_id=n, amount_cents=1, pid=0)

        job = self.task(body, "t.statements")
        # The process checks once that the table is current (a catalog read
        # naming the table): done here, whichever test ran first.
        job.delay(6).get()
        with CaptureQueriesContext(connection) as queries:
            job.delay(5).get()
        claims = [q["sql"] for q in queries.captured_queries if "celery_claims" in q["sql"]]
        assert len(claims) == 2, claims
        # The acquire: the insert, with the read of a lost row beside it.
        assert claims[0].startswith("WITH won AS \n(INSERT INTO celery_claims"), claims[0]
        assert claims[1].startswith("UPDATE celery_claims"), claims[1]
