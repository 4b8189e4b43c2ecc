"""What a worker checks and says before it consumes.

- At ``worker_init``: every claimed task's settings are valid, its table
  exists (created when ``claim_create_schema`` is on) and is current; a
  configuration error stops the worker, because a worker that consumed with
  it would fail and acknowledge every job.
- At ``celeryd_after_setup`` (the worker's logging is set up): one line when
  the claim's acking defaults override the app's, and warnings for settings
  that put jobs at risk (``acks_late=False``; the pickle serializer's
  arguments that have no stable digest).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals as celery_signals

from celery_claim import errors, reporting, settings, upgrade

__all__ = ["acking_report", "claim_tasks"]

logger = logging.getLogger("celery_claim")


def claim_tasks(app: Any) -> list[Any]:
    """The app's claimed tasks (not Celery's own)."""
    from celery_claim.task import ClaimTask

    return [task for task in list(app.tasks.values())
            if isinstance(task, ClaimTask) and not task.name.startswith("celery.")]


def _own_setting(task: Any, name: str) -> bool:
    """Whether the task (not ClaimTask's default) sets ``name``."""
    from celery_claim.task import ClaimTask

    for klass in type(task).__mro__:
        if klass is ClaimTask:
            return False
        if name in vars(klass):
            return True
    return False


def acking_report(app: Any) -> None:
    """Say at worker start how the claim's acking defaults meet the app's settings.

    ``ClaimTask`` sets ``acks_late = True`` and ``reject_on_worker_lost = True``;
    Celery applies ``task_acks_late`` / ``task_reject_on_worker_lost`` only to
    tasks that leave them ``None``, so the claim's defaults win over the app's
    settings, and a task's own attribute wins over both. One line says so when
    they override the app; a task that sets ``acks_late=False`` (or
    ``reject_on_worker_lost=False``) itself is warned about.
    """
    overriding = []
    for task in claim_tasks(app):
        if not _own_setting(task, "acks_late"):
            overriding.append(task.name)
        if not task.acks_late:
            reporting.warn_once(
                task, "acks", "task %s sets acks_late=False: its message is acknowledged "
                "before the body runs, so a lost worker (SIGKILL, OOM, a hard time limit) "
                "loses the job; the claim's lease cannot bring it back", task.name)
        elif not task.reject_on_worker_lost:
            reporting.warn_once(
                task, "acks", "task %s sets reject_on_worker_lost=False: a lost worker's "
                "message is acknowledged, not requeued, so the job is lost unless a "
                "duplicate arrives", task.name)
    app_late, app_reject = app.conf.task_acks_late, app.conf.task_reject_on_worker_lost
    if overriding and not (app_late and app_reject):
        logger.info("celery-claim: %d ClaimTask task(s) run with the claim's acks_late=True "
                    "(and reject_on_worker_lost=True unless the task sets it), over the "
                    "app's task_acks_late=%s and task_reject_on_worker_lost=%s (a task's own "
                    "acks_late= wins): %s",
                    len(overriding), app_late, app_reject, ", ".join(sorted(overriding)))


def _digest_warning(task: Any) -> None:
    serializer = task.serializer or task.app.conf.task_serializer
    if serializer == "pickle" and task.claim_settings.check_payload:
        reporting.warn_once(
            task, "digest", "task %s uses the pickle serializer: arguments that are arbitrary "
            "objects have no stable digest, and the payload check skips such calls (a "
            "warning at the first one); pass plain values (str, int, float, Decimal, UUID, "
            "dates, bytes, lists, dicts), or set claim_check_payload=False to say so",
            task.name)


@celery_signals.celeryd_after_setup.connect  # type: ignore[untyped-decorator]
def _report_at_start(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Start-up lines, once the worker's logging is set up."""
    app = getattr(instance, "app", None)
    if app is None:
        return
    acking_report(app)
    for task in claim_tasks(app):
        if task.claim_settings.enabled:
            _digest_warning(task)


#: Pools whose processes run one task at a time (Celery's names and modules).
_ONE_AT_A_TIME = ("prefork", "processes", "solo")


def _one_task_at_a_time(worker: Any) -> bool:
    """Does each process of this worker run one task at a time?"""
    pool = getattr(worker, "pool_cls", None)  # a name, "module:Class", or the class
    name = pool if isinstance(pool, str) else str(getattr(pool, "__module__", ""))
    module = name.partition(":")[0]
    return module.rpartition(".")[2].lower() in _ONE_AT_A_TIME


@celery_signals.worker_init.connect  # type: ignore[untyped-decorator]
def _prepare_worker(sender: Any = None, **_: Any) -> None:
    """Validate every ClaimTask's settings and create the schema before consuming."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    alone = _one_task_at_a_time(sender)
    try:
        settings.app_config(app.conf)
        for task in claim_tasks(app):
            store = task._claim_runtime().store
            if store is not None:
                if alone:
                    store.one_task_at_a_time()
                store.ensure_schema()
                upgrade.check_current(store)
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
