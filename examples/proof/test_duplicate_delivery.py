"""Duplicate delivery against real workers, through pytest-celery's ``celery_setup``.

Run with: python -m pytest examples/proof (PostgreSQL and Redis running).
"""

from __future__ import annotations

import sqlalchemy as sa
from pytest_celery import CeleryTestSetup

from celery_claim.testing import publish_duplicates, wait_until_drained
from examples.proof import app as proof

ORDERS = range(50)


def charges_per_order() -> dict[int, int]:
    charges = proof.charges
    with proof.charge.claim_store.engine.connect() as conn:
        rows = conn.execute(sa.select(charges.c.order_id, sa.func.count())
                            .group_by(charges.c.order_id)).all()
    return {order: count for order, count in rows}


def drained() -> None:
    wait_until_drained(proof.app.conf.broker_url, proof.NAMESPACE,
                       key_prefix=f"{proof.NAMESPACE}:", store=proof.charge.claim_store)


def test_the_same_message_three_times_charges_once(celery_setup: CeleryTestSetup) -> None:
    publish_duplicates(proof.charge, [(order, 100) for order in ORDERS], copies=3)
    drained()
    assert charges_per_order() == {order: 1 for order in ORDERS}


def test_a_worker_killed_mid_run_loses_and_doubles_nothing(
        celery_setup: CeleryTestSetup) -> None:
    publish_duplicates(proof.charge, [(order, 100) for order in ORDERS], copies=2)
    first = celery_setup.worker_cluster[0]
    first.wait_for_log("succeeded", timeout=30)
    first.kill()  # SIGKILL, mid-run: its unacknowledged messages come back later
    first.restart()
    drained()
    assert charges_per_order() == {order: 1 for order in ORDERS}
