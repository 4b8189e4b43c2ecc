"""The Celery part of a Django project's settings.py.

With ``app.config_from_object("django.conf:settings", namespace="CELERY")``
every Celery setting is spelled ``CELERY_<NAME>``, so claim_* settings
become ``CELERY_CLAIM_*``.
"""

from __future__ import annotations

import os

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_CLAIM_DATABASE_URL = os.environ.get(
    "DATABASE_URL", "postgresql+psycopg://postgres@localhost:5432/test")
CELERY_CLAIM_LEASE_SECONDS = 120
CELERY_TASK_CLS = "celery_claim:ClaimTask"  # every task of the project runs under a claim
