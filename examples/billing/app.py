"""The billing Celery app, configured from the environment.

The defaults match ``docker compose up`` and a local PostgreSQL and Redis.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "billing",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
    include=["examples.billing.tasks"],
)
app.conf.update(
    claim_database_url=os.environ.get(
        "CELERY_CLAIM_DATABASE_URL", "postgresql+psycopg://postgres@localhost:5432/test"),
    task_default_queue=os.environ.get("BILLING_QUEUE", "billing"),
    worker_prefetch_multiplier=1,
)
