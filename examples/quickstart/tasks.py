"""The smallest complete ClaimTask: a charge that runs once per order."""

from __future__ import annotations

import sqlalchemy as sa
from celery import Celery

from celery_claim import ClaimTask

app = Celery("billing", broker="redis://localhost:6379/0")
app.conf.claim_database_url = "postgresql+psycopg://postgres@localhost:5432/test"

metadata = sa.MetaData()
charges = sa.Table(
    "charges", metadata,
    sa.Column("order_id", sa.Integer, primary_key=True),
    sa.Column("amount_cents", sa.Integer, nullable=False),
)


@app.task(base=ClaimTask, bind=True, claim_key="charge:{order_id}")
def charge(self: ClaimTask, order_id: int, amount_cents: int) -> dict[str, int]:
    with self.claim.atomic() as conn:  # commits together with the claim's completion
        conn.execute(charges.insert().values(order_id=order_id, amount_cents=amount_cents))
    return {"charged": amount_cents}
