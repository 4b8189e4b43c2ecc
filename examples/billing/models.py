"""The billing tables: orders to charge, and the charges made."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("amount_cents", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="new"),
)

charges = sa.Table(
    "charges", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("order_id", sa.ForeignKey("orders.id"), nullable=False),
    sa.Column("amount_cents", sa.Integer, nullable=False),
    # What the payment provider was given: the claim's key, one per order.
    sa.Column("idempotency_key", sa.String(600), nullable=False),
    sa.Column("provider_charge_id", sa.String(64), nullable=False),
)
