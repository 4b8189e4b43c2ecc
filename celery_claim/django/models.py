"""The claims table as a Django model, for the admin and for queries.

The table is the one ``celery-claim schema`` creates (:func:`celery_claim.sql.make_table`):
same name, columns and index; its migration runs that DDL (see
``migrations/0001_initial.py``). Rows change only through the claim
store's fenced statements, never through this model: the admin shows them
read-only and releases them through :meth:`celery_claim.ClaimStore.force_release`.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from celery_claim import sql
from celery_claim.django import conf

__all__ = ["Claim"]

STATE_CHOICES = [(state, state) for state in sql.STATES]


class Claim(models.Model):  # type: ignore[misc]
    """One claim: a key, its state, and the fencing token of its last acquisition."""

    key = models.TextField(primary_key=True)
    state = models.TextField(choices=STATE_CHOICES)
    token = models.BigIntegerField()
    task_name = models.TextField()
    task_id = models.TextField()
    attempt = models.IntegerField()
    owner = models.TextField()
    payload_digest = models.TextField(null=True)
    #: The result as the app's result serializer encoded it (celery_claim.results).
    result = models.BinaryField(null=True)
    result_content_type = models.TextField(null=True)
    result_content_encoding = models.TextField(null=True)
    error = models.TextField(null=True)
    duplicates = models.IntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True)
    expires_at = models.DateTimeField(null=True)

    class Meta:
        db_table = conf.table_name()
        # The purge's partial index (expires_at) is created by the migrations
        # with the name make_table gives it; Django's index names are limited
        # to 30 characters.
        ordering = ["key"]
        verbose_name = "claim"
        verbose_name_plural = "claims"

    def __str__(self) -> str:
        return f"{self.key} ({self.state}, token {self.token})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("claims change only through the claim store's fenced statements "
                        "(ClaimStore.force_release, manage.py celery_claim release)")

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("claims are deleted by `manage.py celery_claim purge` (finished and "
                        "past their retention time only)")
