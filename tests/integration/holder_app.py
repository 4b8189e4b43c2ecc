"""A process that takes a claim, writes in atomic(), says READY and hangs.

Run as a script by test_takeover.py, which kills it with SIGKILL.
"""

from __future__ import annotations

import os
import sys
import time

import sqlalchemy as sa
from celery import Celery

from celery_claim import ClaimTask

app = Celery("holder", broker="memory://", set_as_current=False)
app.conf.claim_database_url = os.environ["HOLDER_DATABASE_URL"]
app.conf.claim_table = os.environ["HOLDER_TABLE"]
app.conf.claim_lease_seconds = float(os.environ.get("HOLDER_LEASE", "2"))

effects = sa.Table(f"{os.environ['HOLDER_TABLE']}_fx", sa.MetaData(),
                   sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                   sa.Column("key", sa.String(100)), sa.Column("token", sa.Integer))


@app.task(base=ClaimTask, bind=True, claim_key="order:{order_id}", shared=False)
def hold(self: ClaimTask, order_id: int) -> int:
    with self.claim.atomic() as conn:
        conn.execute(effects.insert().values(key=self.claim.key, token=self.claim.token))
    if os.environ.get("HOLDER_HANG") == "1":
        print("READY", self.claim.token, flush=True)
        time.sleep(120)
    return self.claim.token


if __name__ == "__main__":
    effects.create(sa.create_engine(app.conf.claim_database_url), checkfirst=True)
    print(hold.apply((int(sys.argv[1]),)).get(), flush=True)
