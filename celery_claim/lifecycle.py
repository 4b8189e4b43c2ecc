"""The life cycle of one delivery of a claimed task, in one place.

Acquire (one statement), then decide, then run the body under a heartbeat,
then record the outcome (fenced by the token), give the claim back, or fail
closed. The acquire's own rule (which rows may be taken) is the SQL's, in
:mod:`celery_claim.sql`; this module decides what a delivery does with its
answer.

=====================================  ==========================================
the delivery finds                     it does
=====================================  ==========================================
no row, or a row it may take           acquire (token + 1) and run the body
(released; failed under ``retry``;
lease lapsed; past ``expires_at``)
the store unreachable, or its table    **fail closed**: the body does not run;
needing an upgrade                     re-published with back-off
same key, other arguments              ``ClaimPayloadMismatch``; body not run
``succeeded``                          return the stored result (decoded as the
                                       result backend decodes it); none stored:
                                       ``ClaimResultUnavailable``, or ``Ignore``
                                       under the holder's own task id
``failed`` under ``keep``              ``Ignore``
``running`` under a live lease         ``defer`` (re-publish after the lease,
                                       ``Ignore``), ``skip`` (``Ignore``) or
                                       ``raise`` (``ClaimInProgress``; also
                                       eager mode)
=====================================  ==========================================

=====================================  ==========================================
the holder's body                      the claim becomes
=====================================  ==========================================
returns                                ``succeeded`` with the encoded result, in
                                       the ``atomic()`` transaction if one is open
returns, but the token moved on        nothing: ``ClaimLost`` (or ``Ignore`` when
                                       the successor shares the task id)
raises an ``Exception``                ``failed`` (taken again later under
                                       ``claim_on_failure="retry"``)
calls ``self.retry()``, raises         ``released``, before Celery re-publishes
``Ignore``/``Reject``, or is
interrupted (``BaseException``)
loses the store, or its ``atomic()``   ``released`` (or left to lapse), and the
connection, or cannot record success   task re-published: it runs again
=====================================  ==========================================
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from typing import Any

from celery.exceptions import Ignore, Reject, Retry
from kombu.exceptions import ContentDisallowed, DecodeError

from celery_claim import callbacks, errors, keys, reporting, results, upgrade
from celery_claim.claim import Claim
from celery_claim.lease import heartbeat
from celery_claim.recovery import (
    DEFERRALS_HEADER,
    Recovery,
    TaskClaim,
    atomic_connection_lost,
    chained,
    describe,
    fenced,
    header,
    release,
    unclaimed,
)
from celery_claim.settings import ClaimSettings
from celery_claim.signals import claim_store_error
from celery_claim.states import OnFailure, Outcome, State
from celery_claim.store import Acquired, ClaimStore, Lost

__all__ = ["COMPLETE_ATTEMPTS", "ClaimedRun", "run_unclaimed"]

logger = logging.getLogger("celery_claim")
_HOST = socket.gethostname()

#: Completion is tried this many times (with short pauses) before giving up.
COMPLETE_ATTEMPTS = 3


def run_unclaimed(task: Any, store: ClaimStore | None, settings: ClaimSettings, request: Any,
                  args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run the body with no claim; ``atomic()`` commits when the body returns."""
    try:
        with unclaimed(store, settings.lease_seconds, request.id or "") as handle:
            request.claim = handle
            return task.run(*args, **kwargs)
    finally:
        request.claim = None


class ClaimedRun(Recovery):
    """One delivery of a claimed task: from the acquire to the recorded outcome."""

    def __init__(self, task: Any, runtime: Any, request: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.task = task
        self.runtime = runtime
        self.settings: ClaimSettings = runtime.settings
        self.ttl_seconds = self.settings.ttl_seconds
        self.store: ClaimStore = runtime.store
        self.request = request
        self.args = args
        self.kwargs = kwargs

    def execute(self) -> Any:
        s = self.settings
        task_id = self.request.id or ""
        builder = self.runtime.keys
        digest = None
        if builder.is_default:
            # A key made of the task id names one message: the same key with
            # other arguments is a retry of that message, which the payload
            # check lets through anyway (sql._takes). No digest to compute.
            key = builder.build(task_id, self.args, self.kwargs)
        else:
            arguments = builder.bind(self.args, self.kwargs)
            key = builder.build(task_id, self.args, self.kwargs, arguments)
            if s.check_payload:
                digest = keys.payload_digest(arguments)
                if digest is None:
                    reporting.warn_once(
                        self.task, "digest", "task %s was called with arguments that have no "
                        "stable digest (an object only pickle carries): its payload check is "
                        "skipped for such calls; pass plain values, or set "
                        "claim_check_payload=False to say so", self.task.name)
        # Before the decision: a duplicate dispatches the same callbacks too.
        callbacks.pin_callback_ids(self.request, key)
        started = time.monotonic()
        try:
            if not self.runtime.store_ready:
                self.store.ensure_schema()
                upgrade.check_current(self.store)
                self.runtime.store_ready = True
            won, lost = self._acquire(key, task_id, digest)
        except errors.ClaimStoreError as exc:
            claim_store_error.send(sender=self.task, key=key, task_id=task_id, token=None,
                                   operation="acquire", exc=exc)
            raise chained(self.fail_closed(key, exc), exc)  # noqa: B904
        except errors.ClaimConfigurationError as exc:
            # The table needs an upgrade (a worker refuses to start then):
            # the body never runs against it, and the message waits.
            logger.error("%s", exc)
            raise chained(self.fail_closed(key, exc), exc)  # noqa: B904
        if won is None:
            return self._answer_duplicate(key, lost)
        handle = TaskClaim(store=self.store, key=key, token=won.token, attempt=won.attempt,
                           task_id=task_id, lease_seconds=s.lease_seconds,
                           on_lost=lambda claim, where: reporting.lost(self.task, claim, where))
        reporting.acquired(self.task, handle, time.monotonic() - started)
        return self._run_body(handle)

    # --- acquire, then decide ----------------------------------------------------

    def _acquire(self, key: str, task_id: str,
                 digest: str | None) -> tuple[Acquired | None, Lost | None]:
        # One statement on PostgreSQL: won, or the row it lost to with the
        # SQL's verdict on it (sql._takes); Python never re-derives the rule.
        s = self.settings
        lost = None
        owner = f"{getattr(self.request, 'hostname', None) or _HOST}/{os.getpid()}"
        retry_failed = s.on_failure == OnFailure.RETRY
        for _ in range(3):
            answer = self.store.claim(
                key, task_name=self.task.name, task_id=task_id, owner=owner,
                payload_digest=digest, lease_seconds=s.lease_seconds,
                retry_failed=retry_failed, check_payload=s.check_payload,
                ttl_seconds=self.ttl_seconds)
            if isinstance(answer, Acquired):
                return answer, None
            # SQLite; or claim_conflict (no settle function), and a row
            # newer than the statement's snapshot.
            if answer is None:
                answer = self.store.lost_to(key, task_id=task_id, payload_digest=digest,
                                            retry_failed=retry_failed,
                                            check_payload=s.check_payload)
                if answer is None:
                    continue  # purged between the two statements: try again
            lost = answer
            if lost.mismatch or not lost.takeable:
                return None, lost
            # It changed between the two statements (released, lapsed): look again.
        return None, lost

    def _answer_duplicate(self, key: str, lost: Lost | None) -> Any:
        # The row's state, holder and stored result answer a finished claim's
        # duplicate; the whole record is built only for what asks for it
        # (a running claim's lease, a signal's receivers).
        s = self.settings
        if lost is not None and lost.mismatch:
            self._duplicate(key, lost, Outcome.MISMATCH)
            raise errors.ClaimPayloadMismatch(
                key=key, task=self.task.name, task_id=self.request.id,
                holder_task_id=lost.task_id)
        state = lost.state if lost is not None else None
        if lost is not None and state == State.SUCCEEDED:
            self._duplicate(key, lost, Outcome.SUCCEEDED)
            return self._stored_result(key, lost)
        if state == State.FAILED:
            self._duplicate(key, lost, Outcome.FAILED)
            raise Ignore()
        # Running (or changing under us three times in a row).
        if s.on_running == "skip":
            self._duplicate(key, lost, Outcome.RUNNING_SKIPPED)
            raise Ignore()
        record = lost.record if lost is not None else None
        if s.on_running == "raise" or self.request.is_eager:
            self._duplicate(key, lost, Outcome.RUNNING_RAISED)
            raise errors.ClaimInProgress(
                key=key, state=record.state if record is not None else "unknown",
                holder_task_id=record.task_id if record else None,
                lease_remaining=round(record.lease_remaining, 3) if record else None)
        delay = (record.lease_remaining if record else 1.0) + random.uniform(0.1, 1.0)
        deferrals = int(header(self.request, DEFERRALS_HEADER) or 0) + 1
        try:
            self.republish(delay, {DEFERRALS_HEADER: deferrals})
        except Exception as exc:
            logger.error("could not re-publish deferred duplicate %s (%s); requeueing it",
                         self.request.id, exc)
            raise Reject(exc, requeue=True) from exc
        self._duplicate(key, lost, Outcome.RUNNING_DEFERRED, countdown=round(delay, 3))
        # Ignore: acked, and nothing written to the result backend, where the
        # holder (often under the same task id) keeps its state.
        raise Ignore()

    def _duplicate(self, key: str, lost: Lost | None, outcome: Outcome, **extra: Any) -> None:
        reporting.duplicate(self.task, key, self.request.id, lost, outcome, **extra)

    def _stored_result(self, key: str, lost: Lost) -> Any:
        """What the first delivery returned, decoded as the result backend decodes it."""
        stored = lost.stored_result
        if stored is not None:
            try:
                return stored.decode(self.runtime.result_accept)
            except (ContentDisallowed, DecodeError) as exc:
                reason = f"the stored result cannot be decoded here ({exc})"
        elif self.settings.store_result:
            reason = "the result's serializer could not encode it, so it was not stored"
        else:
            reason = "results are not stored (claim_store_result=False)"
        if lost.task_id == (self.request.id or ""):
            # The holder's own task id: its result is already in the result
            # backend, and a failure stored now would overwrite it.
            raise Ignore()
        raise errors.ClaimResultUnavailable(
            f"the claim succeeded, but its result cannot be returned to this duplicate: "
            f"{reason}; the first delivery's result is under its task id", key=key,
            holder_task_id=lost.task_id)

    # --- run the body, then record what happened ----------------------------------

    def _run_body(self, handle: TaskClaim) -> Any:
        self.request.claim = handle
        if self.settings.heartbeat:
            heartbeat.hold(handle)
        try:
            try:
                retval = self.task.run(*self.args, **self.kwargs)
            except errors.ClaimStoreError as exc:
                # The claim database failed under the body (atomic() could not
                # connect): not the job's failure; run it again later.
                heartbeat.drop(handle)
                handle.rollback()
                if handle.released:
                    raise
                raise chained(self.completion_failed(handle, exc), exc)  # noqa: B904
            except BaseException as exc:
                heartbeat.drop(handle)
                lost = atomic_connection_lost(handle, exc)
                handle.rollback()
                if lost is not None and not handle.released:
                    # The atomic() connection died under the body (PostgreSQL
                    # restarted, the connection was killed): its writes are
                    # gone, and the job is not at fault. Run it again later.
                    raise chained(self.completion_failed(handle, lost), lost)  # noqa: B904
                if not handle.released:
                    self._record_failure(handle, exc)
                raise
            heartbeat.drop(handle)
            if handle.released:  # self.retry(throw=False) gave the claim back
                handle.rollback()
                return retval
            return self._record_success(handle, retval)
        finally:
            self.request.claim = None

    def _record_failure(self, handle: Claim, exc: BaseException) -> None:
        if isinstance(exc, (Retry, Ignore, Reject)) or not isinstance(exc, Exception):
            release(self.task, handle, reason=type(exc).__name__.lower(), error=repr(exc),
                    ttl_seconds=self.ttl_seconds)
            return
        if fenced(handle, "complete", "record the failure", lambda: self.store.complete(
                handle.key, handle.token, state=State.FAILED.value, error=describe(exc),
                ttl_seconds=self.ttl_seconds)):
            reporting.completed(self.task, handle, State.FAILED)

    def _record_success(self, handle: Claim, retval: Any) -> Any:
        result = self._encode(retval) if self.settings.store_result else None
        connection = handle.connection
        last_exc: errors.ClaimStoreError | None = None
        done = False
        for attempt in range(COMPLETE_ATTEMPTS):
            try:
                done = self.store.complete(handle.key, handle.token, result=result,
                                           has_result=result is not None,
                                           state=State.SUCCEEDED.value,
                                           ttl_seconds=self.ttl_seconds, connection=connection)
                if connection is not None:
                    if done:
                        handle.commit()
                    else:
                        handle.rollback()
                elif not done:
                    done = self._completed_before(handle)
                last_exc = None
                break
            except errors.ClaimStoreError as exc:
                if connection is not None:
                    # The atomic() transaction is gone: its writes were not
                    # committed, so the work must be redone.
                    handle.rollback()
                if not exc.transient:
                    # The database refused the transaction (a deferred
                    # constraint, an aborted transaction): the body's failure.
                    self._record_failure(handle, exc)
                    raise (exc.__cause__ or exc) from exc
                last_exc = exc
                claim_store_error.send(sender=self.task, key=handle.key, task_id=handle.task_id,
                                       token=handle.token, operation="complete", exc=exc)
                if connection is not None or attempt + 1 == COMPLETE_ATTEMPTS:
                    break
                time.sleep(0.2 * 2 ** attempt)
        if last_exc is not None:
            raise chained(self.completion_failed(handle, last_exc), last_exc)
        if not done:
            handle.mark_lost("complete")
            lost = errors.ClaimLost(
                "the claim was taken over after its lease lapsed; this attempt's completion "
                "and its atomic() writes were discarded", key=handle.key, token=handle.token,
                task_id=handle.task_id)
            if not self.request.is_eager and self._successor_shares_task_id(handle):
                # The successor runs under this task id: a FAILURE stored now
                # would overwrite its result. The loss is logged and signalled.
                raise Ignore() from lost
            raise lost
        reporting.completed(self.task, handle, State.SUCCEEDED)
        return retval

    def _encode(self, value: Any) -> results.Encoded | None:
        """The result as the result backend encodes it, or ``None`` if it cannot."""
        serializer = self.runtime.result_serializer
        try:
            return results.encode(value, serializer)
        except results.NotEncodable as exc:
            reporting.warn_once(
                self.task, "result", "task %s returned a value the %s result serializer cannot "
                "encode (%s): the claim is marked succeeded without a stored result, and a "
                "duplicate under another task id fails with ClaimResultUnavailable",
                self.task.name, serializer, exc)
            return None

    def _successor_shares_task_id(self, handle: Claim) -> bool:
        try:
            record = self.store.get(handle.key)
        except errors.ClaimStoreError:
            return False
        return record is not None and record.task_id == handle.task_id

    def _completed_before(self, handle: Claim) -> bool:
        # An earlier completion may have committed though its reply was lost.
        record = self.store.get(handle.key)
        return (record is not None and record.token == handle.token
                and record.state == State.SUCCEEDED)
