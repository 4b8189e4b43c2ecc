"""The application under test: a charge that must happen once per order.

In your project this is your Celery app module. Everything a test run must
not share with another (queue, Redis key prefix, tables) is named after
``PROOF_NAMESPACE``, which the test's ``conftest.py`` sets.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from celery import Celery

from celery_claim import ClaimTask

NAMESPACE = os.environ.get("PROOF_NAMESPACE", "proof")

app = Celery("proof", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_default_queue=NAMESPACE,
    broker_transport_options={
        "global_keyprefix": f"{NAMESPACE}:",
        # A killed worker's messages come back after 5 s, found by a sweep each second.
        "visibility_timeout": 5,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        # The sweep's lock outlives a worker killed while holding it: keep it
        # seconds, not kombu's 300 s, or one such kill holds every sweep off.
        "unacked_mutex_expire": 5,
    },
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    claim_database_url=os.environ.get("CELERY_CLAIM_DATABASE_URL",
                                      "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    claim_table=f"claims_{NAMESPACE}",
    claim_lease_seconds=2,
)

metadata = sa.MetaData()
charges = sa.Table(f"charges_{NAMESPACE}", metadata,
                   sa.Column("id", sa.Integer, primary_key=True),
                   sa.Column("order_id", sa.Integer, nullable=False),
                   sa.Column("amount_cents", sa.Integer, nullable=False))


@app.task(base=ClaimTask, bind=True, claim_key="charge:{order_id}")
def charge(self: ClaimTask, order_id: int, amount_cents: int) -> dict[str, int]:
    with self.claim.atomic() as conn:  # commits with the claim's completion
        conn.execute(charges.insert().values(order_id=order_id, amount_cents=amount_cents))
    time.sleep(0.05)  # the card provider, called with self.claim.idempotency_key
    return {"charged": amount_cents}
