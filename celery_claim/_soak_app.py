"""The soak's worker module: the proof app (:mod:`celery_claim.proof.app`) on a soak config.

Workers import it with ``celery -A celery_claim._soak_app worker``; the
``CLAIM_SOAK_*`` environment variables that :mod:`celery_claim.soak` sets
configure it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

from celery_claim.proof.app import make_app
from celery_claim.proof.config import RunConfig

__all__ = ["SoakConfig"]


@dataclasses.dataclass(frozen=True)
class SoakConfig(RunConfig):
    """A soak run: PostgreSQL and Redis, with the soak's knobs."""

    kind: ClassVar[str] = "soak"


if "CLAIM_SOAK_NAME" in os.environ:
    app = make_app(SoakConfig.from_env())
