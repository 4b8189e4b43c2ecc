"""The exceptions celery-claim raises.

Every exception derives from :class:`ClaimError`. The class docstring is the
default message, so ``str()`` is never empty; callers add the specifics.
Driver errors are translated in one place, the connector's
:meth:`~celery_claim.connectors.base.Connector.translate`: into
:class:`ClaimStoreUnavailable` (try again later) or :class:`ClaimStoreRefused`
(the database refused the statement), with the original kept as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "ClaimConfigurationError",
    "ClaimError",
    "ClaimInProgress",
    "ClaimKeyError",
    "ClaimLost",
    "ClaimPayloadMismatch",
    "ClaimResultUnavailable",
    "ClaimStoreError",
    "ClaimStoreRefused",
    "ClaimStoreUnavailable",
]


class ClaimError(Exception):
    """A celery-claim error."""

    def __init__(self, message: str | None = None, **context: object) -> None:
        doc = (type(self).__doc__ or "").strip().splitlines()
        self.message = message or (doc[0] if doc else type(self).__name__)
        self.context = context
        super().__init__(self.message)

    def __str__(self) -> str:
        if not self.context:
            return self.message
        details = ", ".join(f"{k}={v!r}" for k, v in self.context.items())
        return f"{self.message} ({details})"


class ClaimConfigurationError(ClaimError, ValueError):
    """The celery-claim configuration is invalid."""


class ClaimKeyError(ClaimError, ValueError):
    """The claim key could not be built from the task's arguments."""


class ClaimStoreError(ClaimError):
    """The claim store could not be reached or refused the statement."""

    @property
    def transient(self) -> bool:
        """True when trying again later may succeed (the database or the
        network was unavailable); False when the database refused the
        statement or transaction itself (:class:`ClaimStoreRefused`)."""
        return not isinstance(self, ClaimStoreRefused)


class ClaimStoreUnavailable(ClaimStoreError):
    """The claim store could not be reached; trying again later may succeed."""


class ClaimStoreRefused(ClaimStoreError):
    """The claim database refused the statement or its transaction.

    A constraint, a value out of range, an aborted transaction: trying the
    same thing again fails the same way.
    """


class ClaimLost(ClaimError):
    """The claim was taken over by another worker after its lease lapsed.

    Raised when the holder tries to complete, release or write through
    ``self.claim.atomic()`` with a fencing token that is no longer current.
    Writes made in ``atomic()`` are rolled back.
    """


class ClaimPayloadMismatch(ClaimError):
    """The same claim key arrived with different task arguments.

    This is a bug in the caller: two different jobs were given one key.
    The body does not run; make the key cover every argument that changes
    the job, or turn the check off with ``claim_check_payload=False``.
    """


class ClaimInProgress(ClaimError):
    """Another worker holds a live claim on this key."""


class ClaimResultUnavailable(ClaimError):
    """The claim succeeded, but its result cannot be returned to this duplicate.

    The first delivery ran and succeeded; its result was not stored (the
    result serializer could not encode it, or ``claim_store_result=False``)
    or cannot be decoded here (its content type is no longer accepted). The
    duplicate fails with this error instead of leaving its caller waiting;
    the first delivery's own result is under ``holder_task_id``.
    """
