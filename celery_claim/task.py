"""ClaimTask: the Celery glue around the claim's life cycle.

``__call__`` is the only hook whose return value becomes the task's result,
so it hands every claimed delivery to :class:`celery_claim.lifecycle.ClaimedRun`
(acquire, decide, run the body, record the outcome). ``retry()`` releases the
claim before Celery publishes the next attempt, because that attempt can start
before this one has unwound. What differs between Celery releases is in
:mod:`celery_claim.compat`; what a worker checks at start, in
:mod:`celery_claim.startup`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

import celery

from celery_claim import compat, errors, keys, lifecycle, recovery, results, settings
from celery_claim.claim import Claim
from celery_claim.store import ClaimStore

__all__ = ["ClaimTask", "store_for"]

#: The handle of a direct call (``task(...)``) in progress: Celery's own
#: ``Task.__call__`` pushes the task and a fresh request, and the body's
#: ``self.claim`` finds the handle here.
_direct_call: contextvars.ContextVar[Claim | None] = contextvars.ContextVar(
    "celery_claim_direct_call", default=None)


class _Runtime:
    """What one task needs on every call, resolved once."""

    def __init__(self, task: ClaimTask) -> None:
        self.settings = settings.from_sources(_task_options(type(task)), task.app.conf)
        self.keys = keys.KeyBuilder(task.name, _signature(type(task)), self.settings.key)
        configured = (self.settings.engine is not None or self.settings.database_url is not None
                      or self.settings.django_database is not None)
        self.store = store_for(self.settings) if configured else None
        #: The store's table was created (or found) and is current: checked
        #: by the first claim, not by every one.
        self.store_ready = False
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


#: Builds the store on Django's connection for a DATABASES alias and a table:
#: set by the Django app (``celery_claim.django`` in ``INSTALLED_APPS``) when
#: Django starts, so the core never imports Django.
_django_stores: Callable[[str, str], ClaimStore] | None = None


def use_django_stores(factory: Callable[[str, str], ClaimStore]) -> None:
    """Called by the Django app's ``ready()``: how ``claim_django_database`` stores are made."""
    global _django_stores
    _django_stores = factory


def django_store(alias: str, table: str) -> ClaimStore:
    """The store on Django's connection ``alias``; a clear error when the Django
    app is not installed or Django has not started."""
    if _django_stores is None:
        raise errors.ClaimConfigurationError(
            "claim_django_database needs the Django app: pip install 'celery-claim[django]', "
            "add 'celery_claim.django' to INSTALLED_APPS, and start Django (a worker started "
            "with DJANGO_SETTINGS_MODULE set does), or leave claim_django_database unset",
            claim_django_database=alias)
    return _django_stores(alias, table)


def store_for(resolved: settings.ClaimSettings) -> ClaimStore:
    """The process-wide store for these settings (one per database and table)."""
    if resolved.django_database is not None:
        return django_store(resolved.django_database, resolved.table)
    ident = (resolved.database_url if resolved.engine is None else id(resolved.engine),
             resolved.table, resolved.coalesce)
    with _stores_lock:
        store = _stores.get(ident)
        if store is None:
            store = _stores[ident] = ClaimStore(
                resolved.database_url, engine=resolved.engine, table=resolved.table,
                create_schema=resolved.create_schema, coalesce=resolved.coalesce)
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

    # acks_late, reject_on_worker_lost and the hard-time-limit requeue are
    # set below from compat.acking_attributes(): they differ across Celery
    # releases. See docs/configuration.md for their precedence.
    acks_late = True
    reject_on_worker_lost = True

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
    claim_coalesce: bool | None = None
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
        handle = getattr(self.request, "claim", None) or _direct_call.get()
        if handle is None:
            raise errors.ClaimError(
                "self.claim exists only while the body runs under a claim: call the task "
                "through a worker, .delay(), .apply_async() or .apply(), with bind=True",
                task=self.name)
        return handle

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
        runtime = self._claim_runtime()
        if (request is None or request.called_directly
                or getattr(request, "claim", None) is not None):
            return self._call_directly(runtime, args, kwargs)
        if not runtime.settings.enabled:
            return lifecycle.run_unclaimed(self, runtime.store, runtime.settings, request,
                                           args, kwargs)
        return lifecycle.ClaimedRun(self, runtime, request, args, kwargs).execute()

    def _call_directly(self, runtime: _Runtime, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
        """A direct call ``task(...)`` is a plain function call: no claim. Celery's
        own ``__call__`` runs it (current task, request); ``atomic()`` commits when
        the body returns."""
        with recovery.unclaimed(runtime.store, runtime.settings.lease_seconds, "") as handle:
            token = _direct_call.set(handle)
            try:
                return super().__call__(*args, **kwargs)
            finally:
                _direct_call.reset(token)

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None,
              throw: bool = True, eta: Any = None, countdown: float | None = None,
              max_retries: int | None = None, **options: Any) -> Any:
        """Release the claim (fenced), then let Celery publish the next attempt."""
        request = self.request
        handle: Claim | None = getattr(request, "claim", None)
        if handle is not None and handle.claimed and not handle.released:
            limit = self.max_retries if max_retries is None else max_retries
            if limit is None or request.retries + 1 <= limit:
                recovery.release(self, handle, reason="retry",
                                 error=repr(exc) if exc is not None else None,
                                 ttl_seconds=self._claim_runtime().settings.ttl_seconds)
        return super().retry(args=args, kwargs=kwargs, exc=exc, throw=throw, eta=eta,
                             countdown=countdown, max_retries=max_retries, **options)


for _name, _value in compat.acking_attributes(celery.Task).items():
    setattr(ClaimTask, _name, _value)

from celery_claim import startup  # noqa: E402,F401 - registers the worker start checks
