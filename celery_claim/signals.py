"""Signals sent at each claim event.

They are Celery signals (:class:`celery.utils.dispatch.Signal`): connect a
receiver with ``@claim_acquired.connect``. The sender is the task instance.
Every signal carries ``key``, ``task_id`` and ``token`` (``None`` where no
claim was acquired); the others are listed per signal.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = [
    "claim_acquired",
    "claim_completed",
    "claim_duplicate",
    "claim_lost",
    "claim_released",
    "claim_store_error",
]

#: The body is about to run under a fresh claim. Also ``attempt``, ``wait``
#: (seconds spent acquiring).
claim_acquired = Signal(name="claim_acquired")

#: A duplicate delivery did not run the body. Also ``outcome`` (the text of a
#: :class:`celery_claim.states.Outcome`: ``succeeded``, ``failed``,
#: ``running-deferred``, ``running-skipped``, ``running-raised``, ``mismatch``)
#: and ``record`` (the current :class:`~celery_claim.store.ClaimRecord`).
claim_duplicate = Signal(name="claim_duplicate")

#: The body finished and the claim was marked ``succeeded`` or ``failed``
#: (the text of a :class:`celery_claim.states.State`).
#: Also ``state`` and ``duration`` (seconds from acquire to completion).
claim_completed = Signal(name="claim_completed")

#: The holder gave the claim back before Celery acted on the body's outcome:
#: ``self.retry()`` (``reason="retry"``), a body that raised ``Retry``,
#: ``Ignore`` or ``Reject``, or one interrupted by a ``BaseException``
#: (``reason`` is the exception's class name, lower case). Never on an
#: ordinary failure: that marks the claim ``failed`` (``claim_completed``).
#: Also ``reason``.
claim_released = Signal(name="claim_released")

#: The holder's token is no longer current: another worker took over after
#: the lease lapsed. Also ``where`` (``heartbeat`` or ``complete``).
claim_lost = Signal(name="claim_lost")

#: The claim store could not be reached. Also ``operation`` and ``exc``.
claim_store_error = Signal(name="claim_store_error")
