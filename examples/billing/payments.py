"""A stand-in for a payment provider's client.

Real providers (Stripe, Adyen, ...) accept an idempotency key: a second
request with the same key returns the first charge instead of charging
again. This stand-in derives the charge id from the key the same way.
"""

from __future__ import annotations

import hashlib
import time


def charge_card(order_id: int, amount_cents: int, *, idempotency_key: str) -> str:
    """Charge the order's card; returns the provider's charge id."""
    time.sleep(0.02)  # the network round trip
    return "ch_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
