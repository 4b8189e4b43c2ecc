"""The Django app: ``INSTALLED_APPS += ["celery_claim.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class CeleryClaimConfig(AppConfig):  # type: ignore[misc]
    name = "celery_claim.django"
    label = "celery_claim"
    verbose_name = "Celery claims"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # claim_django_database stores are made here, on Django's connections:
        # the task class asks for them without importing Django itself.
        from celery_claim.django.connector import claim_store
        from celery_claim.task import use_django_stores

        use_django_stores(claim_store)
