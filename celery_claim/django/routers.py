"""A database router for projects with several databases: the claims on the claim's alias.

``DATABASE_ROUTERS = ["celery_claim.django.routers.ClaimRouter", ...]`` sends
the claims model's queries to ``CELERY_CLAIM_DJANGO_DATABASE`` and lets the
``celery_claim`` app migrate there only. It says nothing about other apps.
"""

from __future__ import annotations

from typing import Any

from celery_claim.django import conf

__all__ = ["ClaimRouter"]

APP_LABEL = "celery_claim"


class ClaimRouter:
    """The ``celery_claim`` app lives on the claim's database alias."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return conf.database_alias() if model._meta.app_label == APP_LABEL else None

    db_for_write = db_for_read

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if app_label == APP_LABEL:
            return db == conf.database_alias()
        return None
