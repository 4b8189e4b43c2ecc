"""The documented recipe: the example project's own tests (examples/django/shop/tests.py)."""

from __future__ import annotations

from shop.tests import ChargeTests

__all__ = ["ChargeTests"]
