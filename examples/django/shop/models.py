"""A charge per order: what must happen exactly once."""

from __future__ import annotations

from django.db import models


class Charge(models.Model):
    order_id = models.IntegerField()
    amount_cents = models.IntegerField()
    #: Who wrote the row: the worker process and its claim token (0: no claim).
    pid = models.IntegerField()
    token = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"charge of order {self.order_id}: {self.amount_cents} cents"
