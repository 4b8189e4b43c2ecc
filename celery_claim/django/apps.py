"""The Django app: ``INSTALLED_APPS += ["celery_claim.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class CeleryClaimConfig(AppConfig):  # type: ignore[misc]
    name = "celery_claim.django"
    label = "celery_claim"
    verbose_name = "Celery claims"
    default_auto_field = "django.db.models.BigAutoField"
