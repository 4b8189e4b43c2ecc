"""What each claim event tells the world: a signal, the package's own
observers (the metrics) and a log line.

The life cycle calls these at each transition. Signal receivers (users'
own handlers) and log readers see the same events with the same fields;
the observers of every task's three events (acquired, duplicate,
completed) get the task and the values they count, without Celery's
dispatch (:func:`observe`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery_claim import signals
from celery_claim.claim import Claim
from celery_claim.records import Lost
from celery_claim.states import Outcome, State

__all__ = ["EVENTS", "acquired", "completed", "duplicate", "log", "lost", "observe", "released",
           "unobserve", "warn_once"]

logger = logging.getLogger("celery_claim")

#: The package's own observers (the Prometheus metrics) of the three events
#: nearly every delivery reports, by event, not through the signals: a
#: receiver of ``claim_duplicate`` makes every duplicate build its row's
#: whole record, and Celery's dispatch of a signal to one receiver (about
#: 2.5 us) costs more than a counter's increment (about 0.5 us).
EVENTS = ("acquired", "duplicate", "completed")
_observers: dict[str, tuple[Callable[..., None], ...]] = {event: () for event in EVENTS}
_observers_lock = threading.Lock()


def observe(event: str, observer: Callable[..., None]) -> None:
    """Call ``observer`` at each ``event`` (one of :data:`EVENTS`), in the
    task's thread, with keywords: ``sender`` (the task) and the event's
    values (``acquired``: ``wait``; ``duplicate``: ``outcome``;
    ``completed``: ``state``, ``duration``). It must take ``**kwargs`` too,
    for values added later. An exception it raises is logged on the
    ``celery_claim`` logger, as a signal's receiver's is on Celery's, and
    the task goes on. Observing twice is observing once."""
    with _observers_lock:
        if observer not in _observers[event]:
            _observers[event] = (*_observers[event], observer)


def unobserve(event: str, observer: Callable[..., None]) -> None:
    """Stop calling ``observer`` at ``event``."""
    with _observers_lock:
        _observers[event] = tuple(o for o in _observers[event] if o != observer)


def _notify(observers: tuple[Callable[..., None], ...], task: Any, **values: Any) -> None:
    for observer in observers:
        try:
            observer(sender=task, **values)
        except Exception:  # as a signal's receiver: never the task's failure
            logger.exception("claim observer %r raised", observer)


def log(level: int, event: str, handle: Claim, *, duration: float | None = None,
        **fields: Any) -> None:
    """One structured line for a claim event (``extra`` carries the fields)."""
    if not logger.isEnabledFor(level):
        return
    extra = "".join(f" {k}={v}" for k, v in fields.items())
    took = f" duration_ms={duration * 1000:.1f}" if duration is not None else ""
    logger.log(level, "claim %s key=%s task_id=%s token=%s attempt=%s%s%s", event, handle.key,
               handle.task_id, handle.token, handle.attempt, extra, took,
               extra={"claim_event": event, "claim_key": handle.key,
                      "task_id": handle.task_id, "claim_token": handle.token})


def acquired(task: Any, handle: Claim, wait: float) -> None:
    # Every task's path: a signal nobody listens to costs no call.
    observers = _observers["acquired"]
    if observers:
        _notify(observers, task, wait=wait)
    if signals.claim_acquired.receivers:
        signals.claim_acquired.send(sender=task, key=handle.key, task_id=handle.task_id,
                                    token=handle.token, attempt=handle.attempt, wait=wait)
    log(logging.DEBUG, "acquired", handle, duration=wait)


def duplicate(task: Any, key: str, task_id: str | None, lost: Lost | None,
              outcome: Outcome, **extra: Any) -> None:
    observers = _observers["duplicate"]
    if observers:
        _notify(observers, task, outcome=str(outcome))
    # The row's record is built for the signal's receivers only.
    if signals.claim_duplicate.receivers:
        record = lost.record if lost is not None else None
        signals.claim_duplicate.send(sender=task, key=key, task_id=task_id,
                                     token=record.token if record else None,
                                     outcome=str(outcome), record=record)
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "claim duplicate key=%s task_id=%s outcome=%s holder_task_id=%s token=%s%s",
            key, task_id, outcome, lost.task_id if lost else None,
            lost.token if lost else None,
            "".join(f" {k}={v}" for k, v in extra.items()),
            extra={"claim_event": "duplicate", "claim_key": key,
                   "claim_outcome": str(outcome), "task_id": task_id})


def completed(task: Any, handle: Claim, state: State) -> None:
    observers = _observers["completed"]
    receivers = signals.claim_completed.receivers
    if not observers and not receivers and not logger.isEnabledFor(logging.INFO):
        return
    duration = time.monotonic() - handle.acquired_at
    if observers:
        _notify(observers, task, state=str(state), duration=duration)
    if receivers:
        signals.claim_completed.send(sender=task, key=handle.key, task_id=handle.task_id,
                                     token=handle.token, state=str(state), duration=duration)
    log(logging.INFO, "completed", handle, state=state, duration=duration)


def released(task: Any, handle: Claim, reason: str) -> None:
    signals.claim_released.send(sender=task, key=handle.key, task_id=handle.task_id,
                                token=handle.token, reason=reason)
    log(logging.INFO, "released", handle, reason=reason)


def lost(task: Any, handle: Claim, where: str) -> None:
    signals.claim_lost.send(sender=task, key=handle.key, task_id=handle.task_id,
                            token=handle.token, where=where)
    logger.error("claim lost key=%s task_id=%s token=%s noticed_by=%s: another worker took "
                 "over after the lease lapsed", handle.key, handle.task_id, handle.token, where,
                 extra={"claim_event": "lost", "claim_key": handle.key,
                        "task_id": handle.task_id})


_warned: set[tuple[str, str]] = set()


def warn_once(task: Any, topic: str, message: str, *args: Any) -> None:
    """Log ``message`` once per task and topic in this process."""
    if (task.name, topic) not in _warned:
        _warned.add((task.name, topic))
        logger.warning(message, *args)
