"""Claim states, duplicate outcomes and failure policies, as enums.

No imports beyond the standard library: the command line and the metrics use
these without loading Celery or SQLAlchemy. Each member is a ``str``, equal
to the text stored in the table, sent with the signals and shown by the CLI.
"""

from __future__ import annotations

import enum

__all__ = ["FINISHED", "OnFailure", "Outcome", "State"]


class _Text(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)


class State(_Text):
    """A claim row's ``state``. Only ``running`` has a lease."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RELEASED = "released"


#: The states a claim ends a run in (kept until ``expires_at``).
FINISHED = frozenset((State.SUCCEEDED, State.FAILED, State.RELEASED))


class Outcome(_Text):
    """What a duplicate delivery did instead of running the body."""

    #: The claim succeeded: the stored result was returned.
    SUCCEEDED = "succeeded"
    #: The claim failed terminally (``claim_on_failure="keep"``): dropped.
    FAILED = "failed"
    #: The holder runs: re-published to look again after its lease.
    RUNNING_DEFERRED = "running-deferred"
    #: The holder runs: acknowledged and dropped (``claim_on_running="skip"``).
    RUNNING_SKIPPED = "running-skipped"
    #: The holder runs: failed with ``ClaimInProgress`` (``"raise"``, eager mode).
    RUNNING_RAISED = "running-raised"
    #: Same key, other arguments: failed with ``ClaimPayloadMismatch``.
    MISMATCH = "mismatch"


class OnFailure(_Text):
    """``claim_on_failure``: what a body's failure leaves for later deliveries."""

    #: The claim is marked ``failed``; a later delivery may take it and run again.
    RETRY = "retry"
    #: The claim is marked ``failed`` for good; later deliveries are dropped.
    KEEP = "keep"
