"""Purge finished claims every hour with Celery beat."""

from __future__ import annotations

from celery import Celery

app = Celery("proj", broker="redis://localhost:6379/0", include=["celery_claim.tasks"])
app.conf.claim_database_url = "postgresql+psycopg://postgres@localhost:5432/test"
app.conf.claim_ttl_seconds = 3 * 24 * 3600  # keep finished claims for three days

app.conf.beat_schedule = {
    "purge-finished-claims": {
        "task": "celery_claim.purge",
        "schedule": 3600.0,
        # At most 100 batches of 1,000 rows per run; the next run carries on.
        "kwargs": {"batch_size": 1000, "max_batches": 100, "pause": 0.1},
    },
}
