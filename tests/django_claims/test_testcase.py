"""Claimed tasks inside django.test.TestCase (a transaction per test), eagerly."""

from __future__ import annotations

from django.db import connection, transaction
from django.test import TestCase
from proj.celery import app as project_app
from shop.models import Charge
from shop.tasks import charge

from celery_claim.django.connector import claim_store
from celery_claim.django.testing import EagerClaims


class ClaimedTasksInATestCase(EagerClaims, TestCase):  # type: ignore[misc]
    celery_app = project_app

    def test_a_duplicate_returns_the_first_result_and_charges_once(self) -> None:
        assert connection.in_atomic_block  # the test's own transaction
        with connection.cursor() as cursor:  # whatever the server's default
            cursor.execute("SET LOCAL synchronous_commit = on")
        first = charge.delay(7, 100)
        second = charge.delay(7, 100)
        assert first.get() == {"charged": 7}
        assert second.get() == {"charged": 7}
        assert Charge.objects.filter(order_id=7).count() == 1
        record = claim_store().get("charge:7")
        assert record is not None
        assert (record.state, record.duplicates) == ("succeeded", 1)
        # The duplicate's count ran inside the test's transaction: it left that
        # transaction's commit synchronous (outside one it would not wait).
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"

    def test_nested_in_the_callers_atomic_block_it_is_a_savepoint(self) -> None:
        with transaction.atomic():
            charge.delay(8, 100)
            assert Charge.objects.filter(order_id=8).count() == 1
        assert claim_store().get("charge:8").state == "succeeded"  # type: ignore[union-attr]

    def test_on_commit_callbacks_run_when_captured(self) -> None:
        from celery_claim import ClaimTask

        ran: list[int] = []

        @project_app.task(base=ClaimTask, bind=True, claim_key="notify:{n}", name="t.notify")
        def notify(self: ClaimTask, n: int) -> None:
            with self.claim.atomic():
                transaction.on_commit(lambda: ran.append(n))

        try:
            with self.captureOnCommitCallbacks(execute=True) as callbacks:
                notify.delay(1)
                notify.delay(1)  # a duplicate: its body does not run
            assert (len(callbacks), ran) == (1, [1])
        finally:
            project_app.tasks.pop("t.notify", None)
