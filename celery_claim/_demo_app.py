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
from typing import Any

import sqlalchemy as sa
from celery import Celery

from celery_claim import ClaimTask, signals
from celery_claim.claim import Claim

__all__ = ["DemoConfig", "DemoTables", "make_app"]

#: How long "charging the card" takes: the race window of the naive task.
PROVIDER_SECONDS = 0.03
#: A short lease, so duplicates deferred behind a running holder come back soon.
LEASE_SECONDS = 1.0
NAIVE, CLAIM = "naive", "claim"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Where one demo run lives. ``name`` keeps runs apart (tables, queue, keys)."""

    name: str
    database_url: str
    broker_url: str
    broker_dir: str = ""

    @classmethod
    def from_env(cls) -> DemoConfig:
        return cls(name=os.environ.get("CLAIM_DEMO_NAME", "local"),
                   database_url=os.environ.get("CLAIM_DEMO_DATABASE_URL", "sqlite://"),
                   broker_url=os.environ.get("CLAIM_DEMO_BROKER_URL", "memory://"),
                   broker_dir=os.environ.get("CLAIM_DEMO_BROKER_DIR", ""))

    def env(self) -> dict[str, str]:
        """The environment a worker needs to rebuild this config."""
        return {"CLAIM_DEMO_NAME": self.name, "CLAIM_DEMO_DATABASE_URL": self.database_url,
                "CLAIM_DEMO_BROKER_URL": self.broker_url,
                "CLAIM_DEMO_BROKER_DIR": self.broker_dir,
                "CELERY_BROKER_URL": self.broker_url}

    @property
    def queue(self) -> str:
        return f"claim-demo-{self.name}"

    @property
    def claims_table(self) -> str:
        return f"celery_claims_demo_{self.name}"

    def transport_options(self) -> dict[str, Any]:
        if self.broker_url.startswith("filesystem"):
            folder = Path(self.broker_dir)
            return {"data_folder_in": str(folder / "queue"),
                    "data_folder_out": str(folder / "queue"),
                    # Kept beside the queue: moving a message there is an atomic rename.
                    "store_processed": True, "processed_folder": str(folder / "processed"),
                    "control_folder": str(folder / "control"), "polling_interval": 0.02}
        if self.broker_url.startswith("redis"):
            return {"global_keyprefix": f"{self.queue}:"}
        return {}


class DemoTables:
    """Orders (one row per job and side), the charges made, and every delivery's outcome."""

    def __init__(self, name: str) -> None:
        self.metadata = sa.MetaData()
        prefix = f"claim_demo_{name}"
        self.orders = sa.Table(
            f"{prefix}_orders", self.metadata,
            sa.Column("side", sa.String(8), primary_key=True),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("amount_cents", sa.Integer, nullable=False),
            sa.Column("charged", sa.Boolean, nullable=False, default=False))
        self.charges = sa.Table(
            f"{prefix}_charges", self.metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("side", sa.String(8), nullable=False),
            sa.Column("order_id", sa.Integer, nullable=False),
            sa.Column("amount_cents", sa.Integer, nullable=False))
        self.runs = sa.Table(
            f"{prefix}_runs", self.metadata,
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
    app = Celery("celery_claim_demo", broker=config.broker_url, set_as_current=False)
    if config.broker_url.startswith("filesystem"):
        app.conf.broker_transport = "celery_claim._demo_transport:Transport"
    app.conf.update(
        broker_transport_options=config.transport_options(),
        broker_connection_retry_on_startup=True,
        task_default_queue=config.queue,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        claim_database_url=config.database_url,
        claim_table=config.claims_table,
    )
    tables = DemoTables(config.name)

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

    def record(sender: Any, key: str, outcome: str) -> None:
        if getattr(sender, "app", None) is app:
            with claim_charge.claim_store.engine.begin() as conn:
                tables.record(conn, CLAIM, int(key.rpartition(":")[2]), outcome)

    @signals.claim_duplicate.connect(weak=False)  # type: ignore[untyped-decorator]
    def _count_duplicate(sender: Any = None, key: str = "", outcome: str = "",
                         **_: Any) -> None:
        # A deferred duplicate comes back later and is counted then.
        if outcome != "running-deferred":
            record(sender, key, outcome)

    @signals.claim_lost.connect(weak=False)  # type: ignore[untyped-decorator]
    def _count_lost(sender: Any = None, key: str = "", **_: Any) -> None:
        # A holder stalled past its lease: another delivery took over and charged;
        # this one's completion and its atomic() writes are discarded. Sent once.
        record(sender, key, "lost")

    return app


if os.environ.get("CLAIM_DEMO_NAME"):
    app = make_app(DemoConfig.from_env())
