"""ClaimTask: the Celery glue around the claim store.

``__call__`` is the only hook whose return value becomes the task's result,
so the whole life cycle lives there: build the key, acquire (one statement),
run the body under a heartbeat, complete (fenced), or decide what a duplicate
does. ``retry()`` releases the claim before Celery publishes the next
attempt, because that attempt can start before this one has unwound.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import celery
from celery import signals as celery_signals
from celery._state import _task_stack
from celery.exceptions import Ignore, Reject, Retry
from kombu.exceptions import ContentDisallowed, DecodeError

from celery_claim import errors, keys, results, settings, signals, sql, upgrade
from celery_claim.claim import Claim
from celery_claim.lease import heartbeat
from celery_claim.store import ClaimRecord, ClaimStore

__all__ = ["ClaimTask", "store_for"]

logger = logging.getLogger("celery_claim")
_HOST = socket.gethostname()

#: Completion is tried this many times (with short pauses) before giving up.
COMPLETE_ATTEMPTS = 3
#: Fail-closed back-off when the store is unreachable at acquire: capped exponential.
STORE_RETRY_CAP = 60.0
_STORE_ATTEMPTS_HEADER = "claim_store_attempts"
_DEFERRALS_HEADER = "claim_deferrals"


class _Runtime:
    """What one task needs on every call, resolved once."""

    def __init__(self, task: ClaimTask) -> None:
        self.settings = settings.from_sources(_task_options(type(task)), task.app.conf)
        self.keys = keys.KeyBuilder(task.name, _signature(type(task)), self.settings.key)
        configured = (self.settings.engine is not None or self.settings.database_url is not None
                      or self.settings.django_database is not None)
        self.store = store_for(self.settings) if configured else None
        self._task = task

    @functools.cached_property
    def result_serializer(self) -> str:
        """The serializer the app's result backend encodes results with."""
        serializer = getattr(self._task.backend, "serializer", None)
        return str(serializer or self._task.app.conf.result_serializer)

    @functools.cached_property
    def result_accept(self) -> set[str] | None:
        """The content types the app's result backend decodes."""
        accept = getattr(self._task.backend, "accept", None)
        return set(accept) if accept is not None else results.accept_of(self._task.app.conf)


_stores: dict[tuple[Any, ...], ClaimStore] = {}
_stores_lock = threading.Lock()


def store_for(resolved: settings.ClaimSettings) -> ClaimStore:
    """The process-wide store for these settings (one per database and table)."""
    if resolved.django_database is not None:
        try:
            from celery_claim.django.connector import claim_store
        except ImportError as exc:
            raise errors.ClaimConfigurationError(
                "claim_django_database needs Django: pip install 'celery-claim[django]'"
            ) from exc
        return claim_store(resolved.django_database, resolved.table)
    ident = (resolved.database_url if resolved.engine is None else id(resolved.engine),
             resolved.table)
    with _stores_lock:
        store = _stores.get(ident)
        if store is None:
            store = _stores[ident] = ClaimStore(
                resolved.database_url, engine=resolved.engine, table=resolved.table,
                create_schema=resolved.create_schema)
        return store


def _task_options(cls: type) -> dict[str, Any]:
    """The ``claim_*`` options set on this task class (not inherited from ClaimTask)."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is ClaimTask:
            break
        for name, value in vars(klass).items():
            if name.startswith("claim_") and name not in found:
                found[name] = value.__func__ if isinstance(value, staticmethod) else value
    return found


def _signature(cls: type) -> inspect.Signature | None:
    run = None
    for klass in cls.__mro__:
        if "run" in vars(klass):
            run = vars(klass)["run"]
            break
    if run is None:
        return None
    bound = not isinstance(run, staticmethod)
    func = run.__func__ if isinstance(run, staticmethod) else run
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    if bound:
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
    return sig


class ClaimTask(celery.Task):  # type: ignore[misc]
    """A task whose body runs only under an atomic claim in the database.

    Use it per task (``@app.task(base=ClaimTask, bind=True)``) or app-wide
    (``Celery(task_cls="celery_claim:ClaimTask")``). Options are the
    ``claim_*`` settings, given as ``@app.task`` keyword arguments.
    """

    # Re-delivery is safe behind a claim, and it is what recovers a task
    # whose worker died mid-body.
    acks_late = True
    reject_on_worker_lost = True
    # A hard time limit kills the body like a lost worker: requeue the
    # message (Celery's default acks it, and the job would be gone).
    if hasattr(celery.Task, "acks_on_timeout"):  # Celery 5.7 and later
        acks_on_timeout = False
    else:
        # Earlier Celery has one switch for both: a failed body's message is
        # then rejected without requeue instead of acknowledged.
        acks_on_failure_or_timeout = False
        # And it requeues only on the prefork pool; gevent reports a hard
        # time limit to Request.on_timeout alone, which then leaves the
        # message unacknowledged (holding a prefetch slot) until the worker
        # stops or the broker's visibility timeout lapses.
        Request = "celery_claim._request:TimeoutRequeueRequest"

    claim_database_url: str | None = None
    claim_engine: Any = None
    claim_django_database: str | None = None
    claim_table: str | None = None
    claim_key: str | Callable[..., str] | None = None
    claim_lease_seconds: float | None = None
    claim_heartbeat: bool | None = None
    claim_on_running: str | None = None
    claim_on_failure: str | None = None
    claim_store_result: bool | None = None
    claim_check_payload: bool | None = None
    claim_ttl_seconds: float | None = None
    claim_create_schema: bool | None = None
    claim_enabled: bool | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        options = {k: v for k, v in vars(cls).items() if k.startswith("claim_")}
        name = vars(cls).get("name") or cls.__name__
        settings.check_names(options, f"the options of task {name!r}")
        for option, value in options.items():
            if callable(value) and not isinstance(value, (staticmethod, type)):
                # A callable claim_key must not become a bound method.
                setattr(cls, option, staticmethod(value))
            if value is not None:
                settings.validate(option, value)
        key = options.get("claim_key")
        if isinstance(key, str) and "run" in vars(cls):
            keys.KeyBuilder(str(name), _signature(cls), key)

    # --- public ----------------------------------------------------------------

    @property
    def claim(self) -> Claim:
        """The claim held by the running body (only inside the body)."""
        handle = getattr(self.request, "claim", None)
        if handle is None:
            raise errors.ClaimError(
                "self.claim exists only while the body runs under a claim: call the task "
                "through a worker, .delay(), .apply_async() or .apply(), with bind=True",
                task=self.name)
        return handle  # type: ignore[no-any-return]

    @property
    def claim_settings(self) -> settings.ClaimSettings:
        """This task's resolved settings."""
        return self._claim_runtime().settings

    @property
    def claim_store(self) -> ClaimStore:
        """This task's claim store."""
        store = self._claim_runtime().store
        if store is None:
            raise errors.ClaimConfigurationError("claims are disabled for this task",
                                                 task=self.name)
        return store

    def claim_key_for(self, *args: Any, task_id: str = "", **kwargs: Any) -> str:
        """The claim key a call with these arguments would use."""
        return self._claim_runtime().keys.build(task_id, args, kwargs)

    def _claim_runtime(self) -> _Runtime:
        runtime: _Runtime | None = self.__dict__.get("_claim_rt")
        if runtime is None:
            runtime = self.__dict__["_claim_rt"] = _Runtime(self)
        return runtime

    # --- Celery hooks ------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request_stack.top
        if self.name.startswith("celery."):
            return super().__call__(*args, **kwargs)  # Celery's own tasks
        if (request is None or request.called_directly
                or getattr(request, "claim", None) is not None):
            # A direct call task(...) is a plain function call: no claim.
            _task_stack.push(self)
            self.push_request(args=args, kwargs=kwargs)
            try:
                return _Run(self, self._claim_runtime(), self.request, args,
                            kwargs).execute_unclaimed()
            finally:
                self.pop_request()
                _task_stack.pop()
        runtime = self._claim_runtime()
        if not runtime.settings.enabled:
            return _Run(self, runtime, request, args, kwargs).execute_unclaimed()
        return _Run(self, runtime, request, args, kwargs).execute()

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None,
              throw: bool = True, eta: Any = None, countdown: float | None = None,
              max_retries: int | None = None, **options: Any) -> Any:
        """Release the claim (fenced), then let Celery publish the next attempt."""
        request = self.request
        handle: Claim | None = getattr(request, "claim", None)
        if handle is not None and handle.claimed and not handle.released:
            limit = self.max_retries if max_retries is None else max_retries
            if limit is None or request.retries + 1 <= limit:
                _release(self, handle, reason="retry",
                         error=repr(exc) if exc is not None else None)
        return super().retry(args=args, kwargs=kwargs, exc=exc, throw=throw, eta=eta,
                             countdown=countdown, max_retries=max_retries, **options)


class _Run:
    """One claimed execution of a task body."""

    def __init__(self, task: ClaimTask, runtime: _Runtime, request: Any,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.task = task
        self.runtime = runtime
        self.settings = runtime.settings
        self.store: ClaimStore = runtime.store  # type: ignore[assignment] # None: unclaimed only
        self.request = request
        self.args = args
        self.kwargs = kwargs

    def execute(self) -> Any:
        s = self.settings
        task_id = self.request.id or ""
        arguments = self.runtime.keys.bind(self.args, self.kwargs)
        key = self.runtime.keys.build(task_id, self.args, self.kwargs, arguments)
        digest = keys.payload_digest(arguments) if s.check_payload else None
        started = time.monotonic()
        try:
            self.store.ensure_schema()
            upgrade.check_current(self.store)
            won, record = self._acquire(key, task_id, digest)
        except errors.ClaimStoreError as exc:
            signals.claim_store_error.send(sender=self.task, key=key, task_id=task_id,
                                           token=None, operation="acquire", exc=exc)
            raise _chained(self._fail_closed(key, exc), exc)  # noqa: B904
        except errors.ClaimConfigurationError as exc:
            # The table needs an upgrade (a worker refuses to start then):
            # the body never runs against it, and the message waits.
            logger.error("%s", exc)
            raise _chained(self._fail_closed(key, exc), exc)  # noqa: B904
        if won is None:
            return self._duplicate(key, digest, record)
        handle = Claim(store=self.store, key=key, token=won.token, attempt=won.attempt,
                       task_id=task_id, lease_seconds=s.lease_seconds,
                       on_lost=lambda claim, where: _lost_claim(self.task, claim, where))
        wait = time.monotonic() - started
        signals.claim_acquired.send(sender=self.task, key=key, task_id=task_id,
                                    token=won.token, attempt=won.attempt, wait=wait)
        _log(logging.DEBUG, "acquired", self.task, handle, duration=wait)
        return self._run_body(handle)

    def execute_unclaimed(self) -> Any:
        """Run the body with no claim; atomic() commits when the body returns."""
        handle = Claim(store=self.runtime.store, key="", token=0, attempt=0,
                       task_id=self.request.id or "", lease_seconds=self.settings.lease_seconds,
                       claimed=False)
        self.request.claim = handle
        try:
            retval = self.task.run(*self.args, **self.kwargs)
        except BaseException:
            handle.rollback()
            raise
        else:
            handle.commit()
            return retval
        finally:
            self.request.claim = None

    def _acquire(self, key: str, task_id: str,
                 digest: str | None) -> tuple[Any, ClaimRecord | None]:
        s = self.settings
        record = None
        owner = f"{getattr(self.request, 'hostname', None) or _HOST}/{os.getpid()}"
        for _ in range(3):
            won = self.store.acquire(
                key, task_name=self.task.name, task_id=task_id, owner=owner,
                payload_digest=digest, lease_seconds=s.lease_seconds,
                retry_failed=s.on_failure == "release", check_payload=s.check_payload)
            if won is not None:
                return won, None
            record = self.store.note_duplicate(key)
            if record is None or _mismatch(s, digest, record, self.request.id or ""):
                if record is None:
                    continue  # purged between the two statements: try again
                return None, record
            takeable = (record.is_expired or record.is_stale or record.state == sql.RELEASED
                        or (record.state == sql.FAILED and s.on_failure == "release"))
            if not takeable:
                return None, record
            # It changed between the two statements (released, lapsed): look again.
        return None, record

    # --- the duplicate's state machine ---------------------------------------------

    def _duplicate(self, key: str, digest: str | None, record: ClaimRecord | None) -> Any:
        s = self.settings
        record_state = record.state if record is not None else "unknown"
        if record is not None and _mismatch(s, digest, record, self.request.id or ""):
            self._report_duplicate(key, record, "mismatch")
            raise errors.ClaimPayloadMismatch(
                key=key, task=self.task.name, task_id=self.request.id,
                holder_task_id=record.task_id)
        if record is not None and record.state == sql.SUCCEEDED:
            self._report_duplicate(key, record, "succeeded")
            return self._stored_result(key, record)
        if record is not None and record.state == sql.FAILED:
            self._report_duplicate(key, record, "failed")
            raise Ignore()
        # Running (or changing under us three times in a row).
        if s.on_running == "skip":
            self._report_duplicate(key, record, "running-skipped")
            raise Ignore()
        if s.on_running == "raise" or self.request.is_eager:
            self._report_duplicate(key, record, "running-raised")
            raise errors.ClaimInProgress(
                key=key, state=record_state,
                holder_task_id=record.task_id if record else None,
                lease_remaining=round(record.lease_remaining, 3) if record else None)
        delay = (record.lease_remaining if record else 1.0) + random.uniform(0.1, 1.0)
        deferrals = int(_header(self.request, _DEFERRALS_HEADER) or 0) + 1
        try:
            self._republish(delay, {_DEFERRALS_HEADER: deferrals})
        except Exception as exc:
            logger.error("could not re-publish deferred duplicate %s (%s); requeueing it",
                         self.request.id, exc)
            raise Reject(exc, requeue=True) from exc
        self._report_duplicate(key, record, "running-deferred", countdown=round(delay, 3))
        # Ignore: acked, and nothing written to the result backend, where the
        # holder (often under the same task id) keeps its state.
        raise Ignore()

    def _stored_result(self, key: str, record: ClaimRecord) -> Any:
        """What the first delivery returned, decoded as the result backend decodes it."""
        stored = record.stored_result
        if stored is not None:
            try:
                return stored.decode(self.runtime.result_accept)
            except (ContentDisallowed, DecodeError) as exc:
                reason = f"the stored result cannot be decoded here ({exc})"
        elif self.settings.store_result:
            reason = "the result's serializer could not encode it, so it was not stored"
        else:
            reason = "results are not stored (claim_store_result=False)"
        if record.task_id == (self.request.id or ""):
            # The holder's own task id: its result is already in the result
            # backend, and a failure stored now would overwrite it.
            raise Ignore()
        raise errors.ClaimResultUnavailable(
            f"the claim succeeded, but its result cannot be returned to this duplicate: "
            f"{reason}; the first delivery's result is under its task id", key=key,
            holder_task_id=record.task_id)

    def _report_duplicate(self, key: str, record: ClaimRecord | None, outcome: str,
                          **extra: Any) -> None:
        signals.claim_duplicate.send(sender=self.task, key=key, task_id=self.request.id,
                                     token=record.token if record else None,
                                     outcome=outcome, record=record)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "claim duplicate key=%s task_id=%s outcome=%s holder_task_id=%s token=%s%s",
                key, self.request.id, outcome, record.task_id if record else None,
                record.token if record else None,
                "".join(f" {k}={v}" for k, v in extra.items()),
                extra={"claim_event": "duplicate", "claim_key": key, "claim_outcome": outcome,
                       "task_id": self.request.id})

    # --- the body --------------------------------------------------------------

    def _run_body(self, handle: Claim) -> Any:
        s = self.settings
        self.request.claim = handle
        if s.heartbeat:
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
                raise _chained(self._completion_failed(handle, exc), exc)  # noqa: B904
            except BaseException as exc:
                heartbeat.drop(handle)
                handle.rollback()
                if not handle.released:
                    self._after_failure(handle, exc)
                raise
            heartbeat.drop(handle)
            if handle.released:  # self.retry(throw=False) gave the claim back
                handle.rollback()
                return retval
            return self._complete(handle, retval)
        finally:
            self.request.claim = None

    def _after_failure(self, handle: Claim, exc: BaseException) -> None:
        s = self.settings
        if isinstance(exc, (Retry, Ignore, Reject)) or not isinstance(exc, Exception):
            _release(self.task, handle, reason=type(exc).__name__.lower(), error=repr(exc))
            return
        try:
            done = self.store.complete(handle.key, handle.token, state=sql.FAILED,
                                       error=_describe(exc), ttl_seconds=s.ttl_seconds)
        except errors.ClaimStoreError as store_exc:
            logger.warning("claim %s: could not record the failure (%s); the lease will lapse",
                           handle.key, store_exc)
            return
        if not done:
            self._lost(handle, "complete")
            return
        _emit_completed(self.task, handle, sql.FAILED)

    def _complete(self, handle: Claim, retval: Any) -> Any:
        s = self.settings
        result = _encode(self.task, self.runtime.result_serializer, retval) if s.store_result \
            else None
        has_result = result is not None
        connection = handle.connection
        last_exc: errors.ClaimStoreError | None = None
        done = False
        for attempt in range(COMPLETE_ATTEMPTS):
            try:
                done = self.store.complete(handle.key, handle.token, result=result,
                                           has_result=has_result, state=sql.SUCCEEDED,
                                           ttl_seconds=s.ttl_seconds, connection=connection)
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
                    self._after_failure(handle, exc)
                    raise (exc.__cause__ or exc) from exc
                last_exc = exc
                signals.claim_store_error.send(sender=self.task, key=handle.key,
                                               task_id=handle.task_id, token=handle.token,
                                               operation="complete", exc=exc)
                if connection is not None or attempt + 1 == COMPLETE_ATTEMPTS:
                    break
                time.sleep(0.2 * 2 ** attempt)
        if last_exc is not None:
            raise _chained(self._completion_failed(handle, last_exc), last_exc)
        if not done:
            self._lost(handle, "complete")
            lost = errors.ClaimLost(
                "the claim was taken over after its lease lapsed; this attempt's completion "
                "and its atomic() writes were discarded", key=handle.key, token=handle.token,
                task_id=handle.task_id)
            if not self.request.is_eager and self._successor_shares_task_id(handle):
                # The successor runs under this task id: a FAILURE stored now
                # would overwrite its result. The loss is logged and signalled.
                raise Ignore() from lost
            raise lost
        _emit_completed(self.task, handle, sql.SUCCEEDED)
        return retval

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
                and record.state == sql.SUCCEEDED)

    # --- failure paths ---------------------------------------------------------

    def _fail_closed(self, key: str, exc: errors.ClaimError) -> BaseException:
        """The store is unreachable at acquire: never run the body, never drop the message."""
        if self.request.is_eager:
            return exc
        attempts = int(_header(self.request, _STORE_ATTEMPTS_HEADER) or 0)
        countdown = min(STORE_RETRY_CAP, 2.0 ** attempts) * random.uniform(0.5, 1.0)
        logger.warning("claim store unreachable at acquire for key=%s task_id=%s; the body did "
                       "not run; retrying in %.1fs: %s", key, self.request.id, countdown, exc)
        return self._retry_later(countdown, {_STORE_ATTEMPTS_HEADER: attempts + 1}, exc)

    def _completion_failed(self, handle: Claim, exc: errors.ClaimStoreError) -> BaseException:
        """Completion could not be recorded: the work is retried, fenced by the lease."""
        if self.request.is_eager:
            return exc
        released = False
        try:
            released = self.store.release(handle.key, handle.token, error=_describe(exc),
                                          ttl_seconds=self.settings.ttl_seconds)
        except errors.ClaimStoreError:
            pass
        countdown = 1.0 if released else handle.lease_seconds + 1.0
        logger.error("claim %s: completion failed (%s); the task will run again in %.1fs",
                     handle.key, exc, countdown)
        return self._retry_later(countdown, {}, exc)

    def _retry_later(self, countdown: float, headers: dict[str, Any],
                     exc: BaseException) -> BaseException:
        try:
            self._republish(countdown, headers)
        except Exception as publish_exc:
            logger.error("could not re-publish task %s (%s); requeueing the message",
                         self.request.id, publish_exc)
            rejected: BaseException = Reject(exc, requeue=True)
            return rejected
        retry: BaseException = Retry(exc=exc, when=countdown)
        return retry

    def _republish(self, countdown: float, headers: dict[str, Any]) -> None:
        request = self.request
        merged = dict(request.headers or {})
        merged.update(headers)
        signature = self.task.signature_from_request(
            request, self.args, self.kwargs, countdown=countdown, headers=merged)
        signature.apply_async()

    def _lost(self, handle: Claim, where: str) -> None:
        handle.mark_lost(where)


def _lost_claim(task: ClaimTask, handle: Claim, where: str) -> None:
    signals.claim_lost.send(sender=task, key=handle.key, task_id=handle.task_id,
                            token=handle.token, where=where)
    logger.error("claim lost key=%s task_id=%s token=%s noticed_by=%s: another worker took "
                 "over after the lease lapsed", handle.key, handle.task_id, handle.token, where,
                 extra={"claim_event": "lost", "claim_key": handle.key,
                        "task_id": handle.task_id})


def _release(task: ClaimTask, handle: Claim, *, reason: str, error: str | None) -> None:
    heartbeat.drop(handle)
    handle.rollback()
    handle.released = True
    resolved = task._claim_runtime().settings
    try:
        ok = handle.store.release(handle.key, handle.token, error=error,
                                  ttl_seconds=resolved.ttl_seconds)
    except errors.ClaimStoreError as exc:
        logger.warning("claim %s: release failed (%s); the lease will lapse instead",
                       handle.key, exc)
        return
    if not ok:
        handle.mark_lost("release")
        return
    signals.claim_released.send(sender=task, key=handle.key, task_id=handle.task_id,
                                token=handle.token, reason=reason)
    _log(logging.INFO, "released", task, handle, reason=reason)


def _emit_completed(task: ClaimTask, handle: Claim, state: str) -> None:
    duration = time.monotonic() - handle.acquired_at
    signals.claim_completed.send(sender=task, key=handle.key, task_id=handle.task_id,
                                 token=handle.token, state=state, duration=duration)
    _log(logging.INFO, "completed", task, handle, state=state, duration=duration)


def _log(level: int, event: str, task: ClaimTask, handle: Claim, *,
         duration: float | None = None, **fields: Any) -> None:
    if not logger.isEnabledFor(level):
        return
    extra = "".join(f" {k}={v}" for k, v in fields.items())
    took = f" duration_ms={duration * 1000:.1f}" if duration is not None else ""
    logger.log(level, "claim %s key=%s task_id=%s token=%s attempt=%s%s%s", event, handle.key,
               handle.task_id, handle.token, handle.attempt, extra, took,
               extra={"claim_event": event, "claim_key": handle.key,
                      "task_id": handle.task_id, "claim_token": handle.token})


def _mismatch(s: settings.ClaimSettings, digest: str | None, record: ClaimRecord,
              task_id: str) -> bool:
    # The same task id with new arguments is a retry(args=...), not another job.
    return (s.check_payload and digest is not None and record.payload_digest is not None
            and record.payload_digest != digest and not record.is_expired
            and record.task_id != task_id)


def _chained(raised: BaseException, cause: BaseException) -> BaseException:
    """``raised``, with ``cause`` as its cause unless they are the same object."""
    if raised is not cause:
        raised.__cause__ = cause
    return raised


def _header(request: Any, name: str) -> Any:
    value = getattr(request, name, None)
    if value is None:
        value = (request.headers or {}).get(name)
    return value


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


_warned_unencodable: set[str] = set()


def _encode(task: ClaimTask, serializer: str, value: Any) -> results.Encoded | None:
    """The result as the result backend encodes it, or ``None`` if it cannot."""
    try:
        return results.encode(value, serializer)
    except results.NotEncodable as exc:
        if task.name not in _warned_unencodable:
            _warned_unencodable.add(task.name)
            logger.warning("task %s returned a value the %s result serializer cannot encode "
                           "(%s): the claim is marked succeeded without a stored result, and a "
                           "duplicate under another task id fails with ClaimResultUnavailable",
                           task.name, serializer, exc)
        return None


@celery_signals.worker_init.connect  # type: ignore[untyped-decorator]
def _prepare_worker(sender: Any = None, **_: Any) -> None:
    """Validate every ClaimTask's settings and create the schema before consuming."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    try:
        settings.app_config(app.conf)
        for task in list(app.tasks.values()):
            if isinstance(task, ClaimTask) and not task.name.startswith("celery."):
                runtime = task._claim_runtime()
                if runtime.store is not None:
                    runtime.store.ensure_schema()
                    upgrade.check_current(runtime.store)
    except errors.ClaimConfigurationError as exc:
        # Celery swallows exceptions of signal receivers, and a worker that
        # consumed with a broken configuration would fail and ack every job.
        print(f"celery-claim: cannot start the worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from exc
    except errors.ClaimStoreError as exc:
        # An outage is not a configuration error: tasks fail closed and are
        # re-published until the database is back; the table is created then.
        print(f"celery-claim: claim store not reachable at worker start: {exc}",
              file=sys.stderr, flush=True)
