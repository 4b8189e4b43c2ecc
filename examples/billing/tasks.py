"""The charge task: one charge per order, however often the job is delivered."""

from __future__ import annotations

import sqlalchemy as sa

from celery_claim import ClaimTask
from examples.billing import payments
from examples.billing.app import app
from examples.billing.models import charges, orders


@app.task(base=ClaimTask, bind=True, name="billing.charge", claim_key="charge:{order_id}")
def charge(self: ClaimTask, order_id: int, amount_cents: int) -> dict[str, object]:
    # Outside the database: at most once per acquisition. A holder that crashed
    # after this call is taken over, and its successor calls again: give the
    # provider the job's key (the same for every acquisition), so that it
    # returns the first charge instead of charging twice.
    provider_id = payments.charge_card(order_id, amount_cents,
                                       idempotency_key=self.claim.key)
    # Inside the database: committed together with the claim, exactly once.
    with self.claim.atomic() as conn:
        conn.execute(charges.insert().values(
            order_id=order_id, amount_cents=amount_cents,
            idempotency_key=self.claim.key, provider_charge_id=provider_id))
        conn.execute(sa.update(orders).where(orders.c.id == order_id)
                     .values(status="charged"))
    return {"order_id": order_id, "charge": provider_id}
