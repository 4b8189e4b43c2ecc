"""Testing the claimed task in the project's own test suite (manage.py test shop).

EagerClaims runs Celery tasks eagerly, with their claims, inside the test's
transaction: .delay() acquires, runs the body and completes right there.
"""

from __future__ import annotations

from django.test import TestCase
from proj.celery import app
from shop.models import Charge
from shop.tasks import charge

from celery_claim.django.testing import EagerClaims


class ChargeTests(EagerClaims, TestCase):
    celery_app = app  # the project's Celery app (default: the current one)

    def test_a_duplicate_delivery_charges_once(self) -> None:
        charge.delay(7, 1250)
        charge.delay(7, 1250)  # the same order again: the claim is taken
        assert Charge.objects.filter(order_id=7).count() == 1

    def test_the_duplicate_returns_the_first_result(self) -> None:
        first = charge.delay(8, 1250).get()
        assert charge.delay(8, 1250).get() == first == {"charged": 8}

    def test_the_receipt_is_sent_after_the_claim_commits(self) -> None:
        # TestCase never commits: run the on_commit callbacks by hand.
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            charge.delay(9, 1250)
        assert len(callbacks) == 1
