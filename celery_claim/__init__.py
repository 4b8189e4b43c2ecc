"""celery-claim: Celery tasks that run once under duplicate delivery.

A :class:`ClaimTask` claims its record atomically in the database, in one
statement, before the body runs. Re-delivered, re-published and retried
messages become no-ops that return the stored result.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_claim.claim import Claim
    from celery_claim.errors import (
        ClaimConfigurationError,
        ClaimError,
        ClaimInProgress,
        ClaimKeyError,
        ClaimLost,
        ClaimPayloadMismatch,
        ClaimResultUnavailable,
        ClaimStoreError,
        ClaimStoreRefused,
        ClaimStoreUnavailable,
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

# Imported on first use: `celery` loads this package for its `claim` command,
# and a plain Celery app should not pay for SQLAlchemy at start-up.
_EXPORTS = {
    "Claim": "celery_claim.claim",
    "ClaimRecord": "celery_claim.store",
    "ClaimSettings": "celery_claim.settings",
    "ClaimStore": "celery_claim.store",
    "ClaimTask": "celery_claim.task",
    "make_table": "celery_claim.sql",
    "metadata": "celery_claim.sql",
    **{name: "celery_claim.errors" for name in (
        "ClaimConfigurationError", "ClaimError", "ClaimInProgress", "ClaimKeyError",
        "ClaimLost", "ClaimPayloadMismatch", "ClaimResultUnavailable", "ClaimStoreError",
        "ClaimStoreRefused", "ClaimStoreUnavailable")},
    **{name: "celery_claim.signals" for name in (
        "claim_acquired", "claim_completed", "claim_duplicate", "claim_lost",
        "claim_released", "claim_store_error")},
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'celery_claim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
    "ClaimResultUnavailable",
    "ClaimSettings",
    "ClaimStore",
    "ClaimStoreError",
    "ClaimStoreRefused",
    "ClaimStoreUnavailable",
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
