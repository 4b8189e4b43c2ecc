"""celery-claim: Celery tasks that run once under duplicate delivery.

A :class:`ClaimTask` claims its record atomically in the database, in one
statement, before the body runs. Re-delivered, re-published and retried
messages become no-ops that return the stored result.
"""

from __future__ import annotations

from celery_claim.claim import Claim
from celery_claim.errors import (
    ClaimConfigurationError,
    ClaimError,
    ClaimInProgress,
    ClaimKeyError,
    ClaimLost,
    ClaimPayloadMismatch,
    ClaimStoreError,
)
from celery_claim.settings import ClaimSettings
from celery_claim.signals import (
    claim_acquired,
    claim_completed,
    claim_duplicate,
    claim_lost,
    claim_released,
    claim_store_error,
)
from celery_claim.sql import make_table, metadata
from celery_claim.store import ClaimRecord, ClaimStore
from celery_claim.task import ClaimTask

__version__ = "0.1.0"

__all__ = [
    "Claim",
    "ClaimConfigurationError",
    "ClaimError",
    "ClaimInProgress",
    "ClaimKeyError",
    "ClaimLost",
    "ClaimPayloadMismatch",
    "ClaimRecord",
    "ClaimSettings",
    "ClaimStore",
    "ClaimStoreError",
    "ClaimTask",
    "__version__",
    "claim_acquired",
    "claim_completed",
    "claim_duplicate",
    "claim_lost",
    "claim_released",
    "claim_store_error",
    "make_table",
    "metadata",
]
