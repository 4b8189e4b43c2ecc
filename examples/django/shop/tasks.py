"""The claimed task, and the same body on a plain ``celery.Task`` (the control).

``charge`` writes its ``Charge`` row through the ORM inside
``self.claim.atomic()``: the row commits together with the claim's fenced
completion, when the body has returned. A duplicate delivery (the same order
published twice, a re-delivered message) finds the claim taken and does not
charge again; a holder killed mid-body leaves no row, and the next delivery
takes over.

The receipt is published with ``transaction.on_commit``: Django sends it
after the claim's transaction commits, so exactly once per charge, and never
for a holder that was killed or lost its claim.

``charge_plain`` is the same body on ``celery.Task`` with ``transaction.atomic()``:
its row commits when the block exits, so a duplicate charges again and a
holder killed after the block has charged for good before it is run again.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import shared_task
from django.db import transaction
from shop.models import Charge

from celery_claim import ClaimTask


@shared_task(base=ClaimTask, bind=True, claim_key="charge:{order_id}")
def charge(self: ClaimTask, order_id: int, amount_cents: int, hold: bool = False) -> dict[str, int]:
    with self.claim.atomic():  # transaction.atomic(using="default"), held until completion
        Charge.objects.create(order_id=order_id, amount_cents=amount_cents, pid=os.getpid(),
                              token=self.claim.token)
        transaction.on_commit(lambda: email_receipt.delay(order_id))  # after the claim commits
    call_the_bank(order_id, hold)
    return {"charged": order_id}


@shared_task(base=ClaimTask, bind=True, claim_key="receipt:{order_id}")
def email_receipt(self: ClaimTask, order_id: int) -> None:
    """Follow-up work, published once per completed charge."""


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def charge_plain(self: Any, order_id: int, amount_cents: int,
                 hold: bool = False) -> dict[str, int]:
    with transaction.atomic():  # commits here, whatever happens next
        Charge.objects.create(order_id=order_id, amount_cents=amount_cents, pid=os.getpid())
    call_the_bank(order_id, hold)
    return {"charged": order_id}


def call_the_bank(order_id: int, hold: bool) -> None:
    """The rest of the body: a call to a slow service.

    ``hold`` (used by the test suite) makes the first delivery of an order
    wait here until the test kills its process; later deliveries go on.
    """
    time.sleep(0.05)
    url = os.environ.get("EXAMPLE_HOLD_REDIS")
    if not (hold and url):
        return
    import redis

    client = redis.Redis.from_url(url)
    prefix = os.environ.get("EXAMPLE_KEY_PREFIX", "")
    if client.hsetnx(f"{prefix}held", str(order_id), os.getpid()):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the test SIGKILLs this process meanwhile
            time.sleep(0.1)
