"""What differs between the Celery releases celery-claim supports (5.5 to 5.7).

One place for version shims, each decided from what the installed Celery
has, not from its version number.

- **Hard time limits.** Celery 5.7 split ``acks_on_failure_or_timeout`` into
  ``acks_on_failure`` and ``acks_on_timeout``. ``ClaimTask`` sets
  ``acks_on_timeout = False`` there, so a message whose body hit its hard
  time limit is requeued (like a lost worker) instead of acknowledged. Before
  5.7 the only switch is ``acks_on_failure_or_timeout = False``: a failed
  body's message is then rejected without requeue instead of acknowledged.
- **The request class before 5.7.** Celery before 5.7 requeues on a hard
  time limit only from ``Request.on_failure``, which the gevent pool does not
  call; :class:`celery_claim._request.TimeoutRequeueRequest` requeues from
  ``on_timeout``, as 5.7 does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REQUEST_BEFORE_5_7", "acking_attributes", "requeue_on_timeout_switch"]

#: The request class ``ClaimTask`` uses on Celery before 5.7.
REQUEST_BEFORE_5_7 = "celery_claim._request:TimeoutRequeueRequest"


def requeue_on_timeout_switch(task_class: type) -> str:
    """The attribute that, set to ``False``, requeues a timed-out message."""
    if hasattr(task_class, "acks_on_timeout"):  # Celery 5.7 and later
        return "acks_on_timeout"
    return "acks_on_failure_or_timeout"


def acking_attributes(task_class: type) -> dict[str, Any]:
    """The class attributes ``ClaimTask`` sets on this Celery's ``Task`` class."""
    switch = requeue_on_timeout_switch(task_class)
    attributes: dict[str, Any] = {
        # Re-delivery is safe behind a claim, and it is what recovers a task
        # whose worker died mid-body.
        "acks_late": True,
        "reject_on_worker_lost": True,
        # A hard time limit kills the body like a lost worker: requeue.
        switch: False,
    }
    if switch == "acks_on_failure_or_timeout":
        attributes["Request"] = REQUEST_BEFORE_5_7
    return attributes
