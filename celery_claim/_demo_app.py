"""The demo's Celery app: one charge task written two ways.

``demo.naive_charge`` is the usual guard, check-then-act: read the order,
charge the card if it is not charged yet, then mark it charged. Two workers
can both read "not charged" before either marks it, and both charge.

``demo.claim_charge`` is the same job as a :class:`~celery_claim.ClaimTask`
keyed by the order: the claim is taken in one statement before the body
runs, and the charge is written in ``self.claim.atomic()``.

Both record every delivery's outcome in a ``runs`` table so the demo can
count deliveries, charges and suppressed duplicates. Workers import this
module with ``celery -A celery_claim._demo_app worker``; it is configured by
the ``CLAIM_DEMO_*`` environment variables that :mod:`celery_claim.demo` sets.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from celery import Celery

from celery_claim import ClaimTask, signals
from celery_claim.claim import Claim
from celery_claim.proof.config import RunConfig, RunTables, for_app

__all__ = ["DemoConfig", "DemoTables", "make_app"]

#: How long "charging the card" takes: the race window of the naive task.
PROVIDER_SECONDS = 0.03
#: A short lease, so duplicates deferred behind a running holder come back soon.
LEASE_SECONDS = 1.0
NAIVE, CLAIM = "naive", "claim"


@dataclasses.dataclass(frozen=True)
class DemoConfig(RunConfig):
    """A demo run; ``broker_dir`` holds the embedded filesystem broker's folders."""

    kind: ClassVar[str] = "demo"

    broker_dir: str = ""

    def transport_options(self) -> dict[str, Any]:
        if self.broker_url.startswith("filesystem"):
            folder = Path(self.broker_dir)
            return {"data_folder_in": str(folder / "queue"),
                    "data_folder_out": str(folder / "queue"),
                    # Kept beside the queue: moving a message there is an atomic rename.
                    "store_processed": True, "processed_folder": str(folder / "processed"),
                    "control_folder": str(folder / "control"), "polling_interval": 0.02}
        return super().transport_options()

    def celery_settings(self) -> dict[str, Any]:
        settings = super().celery_settings()
        if self.broker_url.startswith("filesystem"):
            settings["broker_transport"] = "celery_claim._demo_transport:Transport"
        return settings


class DemoTables(RunTables):
    """Orders (one row per job and side), the charges made, and every delivery's outcome."""

    def __init__(self, config: DemoConfig) -> None:
        super().__init__(config)
        self.orders = self.table(
            "orders",
            sa.Column("side", sa.String(8), primary_key=True),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("amount_cents", sa.Integer, nullable=False),
            sa.Column("charged", sa.Boolean, nullable=False, default=False))
        self.charges = self.table(
            "charges",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("side", sa.String(8), nullable=False),
            sa.Column("order_id", sa.Integer, nullable=False),
            sa.Column("amount_cents", sa.Integer, nullable=False))
        self.runs = self.table(
            "runs",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("side", sa.String(8), nullable=False),
            sa.Column("order_id", sa.Integer, nullable=False),
            sa.Column("outcome", sa.String(32), nullable=False))

    def charge(self, conn: sa.Connection, side: str, order_id: int, amount_cents: int) -> None:
        """Write one charge and mark the order charged."""
        conn.execute(self.charges.insert().values(side=side, order_id=order_id,
                                                  amount_cents=amount_cents))
        conn.execute(self.orders.update()
                     .where(self.orders.c.side == side, self.orders.c.id == order_id)
                     .values(charged=True))
        self.record(conn, side, order_id, "charged")

    def record(self, conn: sa.Connection, side: str, order_id: int, outcome: str) -> None:
        conn.execute(self.runs.insert().values(side=side, order_id=order_id, outcome=outcome))


def make_app(config: DemoConfig) -> Celery:
    """The demo app with both tasks registered."""
    app = config.celery_app("celery_claim_demo")
    tables = DemoTables(config)

    @app.task(base=ClaimTask, bind=True, name="demo.claim_charge",  # type: ignore[untyped-decorator]
              claim_key="charge:{order_id}", claim_lease_seconds=LEASE_SECONDS)
    def claim_charge(self: Any, order_id: int, amount_cents: int) -> str:
        time.sleep(PROVIDER_SECONDS)  # charge the card, with self.claim.idempotency_key
        claim: Claim = self.claim
        with claim.atomic() as conn:
            tables.charge(conn, CLAIM, order_id, amount_cents)
        return "charged"

    @app.task(name="demo.naive_charge", acks_late=True)  # type: ignore[untyped-decorator]
    def naive_charge(order_id: int, amount_cents: int) -> str:
        engine = claim_charge.claim_store.engine
        orders = tables.orders
        with engine.connect() as conn:
            charged = conn.execute(sa.select(orders.c.charged).where(
                orders.c.side == NAIVE, orders.c.id == order_id)).scalar_one()
        if charged:
            with engine.begin() as conn:
                tables.record(conn, NAIVE, order_id, "skipped")
            return "already charged"
        time.sleep(PROVIDER_SECONDS)  # charge the card: the race window
        with engine.begin() as conn:
            tables.charge(conn, NAIVE, order_id, amount_cents)
        return "charged"

    def record(key: str, outcome: str) -> None:
        with claim_charge.claim_store.engine.begin() as conn:
            tables.record(conn, CLAIM, int(key.rpartition(":")[2]), outcome)

    def count_duplicate(key: str = "", outcome: str = "", **_: Any) -> None:
        # A deferred duplicate comes back later and is counted then.
        if outcome != "running-deferred":
            record(key, outcome)

    def count_lost(key: str = "", **_: Any) -> None:
        # A holder stalled past its lease: another delivery took over and charged;
        # this one's completion and its atomic() writes are discarded. Sent once.
        record(key, "lost")

    signals.claim_duplicate.connect(for_app(app, count_duplicate), weak=False)
    signals.claim_lost.connect(for_app(app, count_lost), weak=False)
    return app


if os.environ.get("CLAIM_DEMO_NAME"):
    app = make_app(DemoConfig.from_env())
