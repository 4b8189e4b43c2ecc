"""The ways a claimed run gives its work back, so that nothing is lost.

- **Fail closed** at acquire: the store is unreachable (or its table needs an
  upgrade), so the body never runs; the message is re-published with a capped
  exponential back-off.
- **Completion failed**: the result could not be recorded, or the body's
  ``atomic()`` connection died under it; the claim is released (fenced) and
  the message re-published to run again.
- **Release**: the holder gives the claim back (``self.retry()``, ``Ignore``,
  ``Reject``, an interrupted body) before Celery acts on it.

A re-publish that the broker refuses becomes ``Reject(requeue=True)``: the
message is never dropped.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from celery.exceptions import Reject, Retry

from celery_claim import errors, reporting
from celery_claim.claim import Claim
from celery_claim.lease import heartbeat

__all__ = ["STORE_RETRY_CAP", "Recovery", "TaskClaim", "atomic_connection_lost", "fenced",
           "release", "unclaimed"]

logger = logging.getLogger("celery_claim")

#: Fail-closed back-off when the store is unreachable at acquire: capped exponential.
STORE_RETRY_CAP = 60.0
STORE_ATTEMPTS_HEADER = "claim_store_attempts"
DEFERRALS_HEADER = "claim_deferrals"


class Recovery:
    """The re-publishing half of a claimed run (see :class:`~celery_claim.lifecycle.ClaimedRun`)."""

    task: Any
    request: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    ttl_seconds: float

    def fail_closed(self, key: str, exc: errors.ClaimError) -> BaseException:
        """The store is unreachable at acquire: never run the body, never drop the message."""
        if self.request.is_eager:
            return exc
        attempts = int(header(self.request, STORE_ATTEMPTS_HEADER) or 0)
        countdown = min(STORE_RETRY_CAP, 2.0 ** attempts) * random.uniform(0.5, 1.0)
        logger.warning("claim store unreachable at acquire for key=%s task_id=%s; the body did "
                       "not run; retrying in %.1fs: %s", key, self.request.id, countdown, exc)
        return self.retry_later(countdown, {STORE_ATTEMPTS_HEADER: attempts + 1}, exc)

    def completion_failed(self, handle: Claim, exc: errors.ClaimStoreError) -> BaseException:
        """Completion could not be recorded: the work is retried, fenced by the lease."""
        if self.request.is_eager:
            return exc
        released = False
        try:
            released = handle.store.release(handle.key, handle.token, error=describe(exc),
                                            ttl_seconds=self.ttl_seconds)
        except errors.ClaimStoreError:
            pass
        countdown = 1.0 if released else handle.lease_seconds + 1.0
        logger.error("claim %s: completion failed (%s); the task will run again in %.1fs",
                     handle.key, exc, countdown)
        return self.retry_later(countdown, {}, exc)

    def retry_later(self, countdown: float, headers: dict[str, Any],
                    exc: BaseException) -> BaseException:
        try:
            self.republish(countdown, headers)
        except Exception as publish_exc:
            logger.error("could not re-publish task %s (%s); requeueing the message",
                         self.request.id, publish_exc)
            rejected: BaseException = Reject(exc, requeue=True)
            return rejected
        retry: BaseException = Retry(exc=exc, when=countdown)
        return retry

    def republish(self, countdown: float, headers: dict[str, Any]) -> None:
        request = self.request
        merged = dict(request.headers or {})
        merged.update(headers)
        signature = self.task.signature_from_request(
            request, self.args, self.kwargs, countdown=countdown, headers=merged)
        signature.apply_async()


def release(task: Any, handle: Claim, *, reason: str, error: str | None,
            ttl_seconds: float) -> None:
    """Give the claim back (fenced), before Celery acts on the body's outcome."""
    heartbeat.drop(handle)
    handle.rollback()
    handle.released = True
    if fenced(handle, "release", "give the claim back", lambda: handle.store.release(
            handle.key, handle.token, error=error, ttl_seconds=ttl_seconds)):
        reporting.released(task, handle, reason)


def fenced(handle: Claim, where: str, what: str, write: Callable[[], bool]) -> bool:
    """Run one fenced write of the holder's; ``False`` if it did not land: the
    store failed (the lease will lapse) or the token moved on (the claim is lost)."""
    try:
        done = write()
    except errors.ClaimStoreError as exc:
        logger.warning("claim %s: could not %s (%s); the lease will lapse instead",
                       handle.key, what, exc)
        return False
    if not done:
        handle.mark_lost(where)
    return done


class TaskClaim(Claim):
    """The handle of a claimed body: notes whether its ``atomic()`` connection
    was dead when the body's exception left the block (before the rollback)."""

    atomic_broken = False

    @contextlib.contextmanager
    def atomic(self) -> Iterator[sa.Connection]:
        with super().atomic() as connection:
            try:
                yield connection
            except BaseException:
                if _broken(connection):
                    self.atomic_broken = True
                raise


def atomic_connection_lost(handle: Claim, exc: BaseException) -> errors.ClaimStoreError | None:
    """A store failure when the body's ``atomic()`` connection died under it;
    ``None`` otherwise (the body's own failure)."""
    connection = handle.connection
    broken = getattr(handle, "atomic_broken", False) or (
        connection is not None and _broken(connection))
    if not broken:
        return None
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    lost = errors.ClaimStoreUnavailable(
        "the atomic() connection to the claim store was lost under the body: "
        + (reason[0] if reason else type(exc).__name__), key=handle.key)
    lost.__cause__ = exc
    return lost


def _broken(connection: Any) -> bool:
    # The atomic() transaction's handle: a SQLAlchemy connection, or another
    # connector's (Django's connection), which is not inspected here.
    connection = getattr(connection, "handle", connection)
    if not isinstance(connection, sa.Connection):
        return False
    if connection.invalidated or connection.closed:
        return True
    try:
        dbapi_connection = connection.connection.dbapi_connection
    except sa.exc.SQLAlchemyError:
        return True
    return bool(getattr(dbapi_connection, "closed", False)
                or getattr(dbapi_connection, "broken", False))


@contextlib.contextmanager
def unclaimed(store: Any, lease_seconds: float, task_id: str) -> Iterator[Claim]:
    """A handle with no claim behind it, for a body run without one: its
    ``atomic()`` commits when the body returns and rolls back if it raises."""
    handle = Claim(store=store, key="", token=0, attempt=0, task_id=task_id,
                   lease_seconds=lease_seconds, claimed=False)
    try:
        yield handle
    except BaseException:
        handle.rollback()
        raise
    handle.commit()


def chained(raised: BaseException, cause: BaseException) -> BaseException:
    """``raised``, with ``cause`` as its cause unless they are the same object."""
    if raised is not cause:
        raised.__cause__ = cause
    return raised


def header(request: Any, name: str) -> Any:
    value = getattr(request, name, None)
    if value is None:
        value = (request.headers or {}).get(name)
    return value


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]
