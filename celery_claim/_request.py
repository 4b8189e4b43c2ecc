"""The worker-side request of :class:`~celery_claim.ClaimTask` on Celery before 5.7.

Celery 5.7 requeues a message whose body hit its hard time limit when the
task sets ``acks_on_timeout = False``, in ``Request.on_timeout``. Earlier
Celery has only ``acks_on_failure_or_timeout``, and with it ``False`` it
requeues from ``on_failure``, which the prefork pool calls after a hard time
limit and the gevent pool does not (solo, threads and eventlet enforce no
time limits). This request requeues in ``on_timeout``, as Celery 5.7 does, so
every pool that enforces time limits requeues.
"""

from __future__ import annotations

from celery.worker.request import Request

__all__ = ["TimeoutRequeueRequest"]


class TimeoutRequeueRequest(Request):  # type: ignore[misc]
    """Requeue the message on a hard time limit under ``acks_late``."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft and self.task.acks_late and not self.task.acks_on_failure_or_timeout:
            # A no-op when the message was already acknowledged or rejected.
            self.reject(requeue=True)
