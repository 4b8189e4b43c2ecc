"""Queues and waiting: publish duplicates, count what is queued, wait until the work is done.

The counts read kombu's Redis transport directly: a queue is a list per
priority, and the messages delivered but not acknowledged sit in one
``unacked`` hash per database (per ``global_keyprefix``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from celery import Task

__all__ = ["WaitTimeout", "publish_duplicates", "queue_length", "unacked_length", "wait_for",
           "wait_until_drained"]

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """A condition awaited by :func:`wait_for` did not become true in time."""



def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Raises :class:`WaitTimeout` (both an ``AssertionError`` and a
    ``TimeoutError``) after ``timeout`` seconds. ``message`` may be a callable,
    evaluated only on timeout, to report the latest state. Exceptions raised
    by ``predicate`` propagate at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeout(f"{text} (after {timeout:g}s)")
        time.sleep(interval)


def publish_duplicates(
    task: Task,
    calls: Iterable[Sequence[Any] | Mapping[str, Any]],
    copies: int = 2,
    *,
    adjacent: bool = True,
    **options: Any,
) -> list[str]:
    """Publish every call ``copies`` times with one task id; return the ids.

    This is a producer publishing the same message twice: Celery does not
    de-duplicate it, so without a guard every copy runs. A call is a sequence
    of positional arguments or a mapping of keyword arguments. With
    ``adjacent`` (default) the copies of one call are published back to back,
    so that idle workers take them at the same moment; otherwise each round
    publishes every call once. ``options`` go to ``apply_async`` (``queue=``,
    ``countdown=``, ...). One producer connection is used for all messages.
    """
    planned = [(str(uuid.uuid4()), call) for call in calls]
    if adjacent:
        order = [item for item in planned for _ in range(copies)]
    else:
        order = [item for _ in range(copies) for item in planned]
    with task.app.producer_or_acquire() as producer:
        for task_id, call in order:
            if isinstance(call, Mapping):
                args, kwargs = (), dict(call)
            else:
                args, kwargs = tuple(call), {}
            task.apply_async(args, kwargs, task_id=task_id, producer=producer, **options)
    return [task_id for task_id, _ in planned]


def queue_length(redis_url: str, queue: str, *, key_prefix: str = "") -> int:
    """Messages waiting in a kombu Redis queue, over all its priority lists.

    Reserved (prefetched) and unacknowledged messages are not counted.
    ``key_prefix`` is the transport's ``global_keyprefix``, if any.
    """
    import redis

    name = f"{key_prefix}{queue}"
    keys = [name, *(f"{name}\x06\x16{priority}" for priority in range(1, 10))]
    client = redis.Redis.from_url(redis_url)
    try:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            return sum(int(n) for n in pipe.execute())
    finally:
        client.close()


def unacked_length(redis_url: str, *, key_prefix: str = "") -> int:
    """Messages delivered to workers and not acknowledged yet, over every queue.

    kombu's Redis transport keeps them in one ``unacked`` hash per database
    (per ``global_keyprefix``): messages running with ``acks_late``, messages
    prefetched by a worker, and ETA/countdown messages a worker holds until
    their time. Those older than ``visibility_timeout`` are put back in their
    queue and delivered again.
    """
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.hlen(f"{key_prefix}unacked"))
    finally:
        client.close()


def _unacked_described(redis_url: str, *, key_prefix: str = "", limit: int = 10) -> list[str]:
    """The first ``limit`` unacknowledged messages, as "task[id] queue tag" (for a timeout)."""
    import json

    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.hgetall(f"{key_prefix}unacked")
    except Exception as exc:  # the timeout's own message must still be raised
        return [f"(could not be listed: {exc!r})"]
    finally:
        client.close()
    described = []
    for tag, raw in list(entries.items())[:limit]:
        try:
            payload, _exchange, routing_key = json.loads(raw)
            headers = payload.get("headers") or {}
            name = tag.decode(errors="replace") if isinstance(tag, bytes) else str(tag)
            described.append(f"{headers.get('task', '?')}[{headers.get('id', '?')}] "
                             f"queue={routing_key} tag={name}")
        except (ValueError, TypeError, AttributeError):
            described.append(f"tag={tag!r} (not a kombu message)")
    return described


def wait_until_drained(
    redis_url: str,
    queues: str | Sequence[str],
    *,
    key_prefix: str = "",
    store: Any = None,
    settle: float = 1.0,
    timeout: float = 120.0,
    interval: float = 0.2,
) -> None:
    """Wait until the work is done: nothing queued, nothing unacknowledged, no claim running.

    ``queues`` are the Redis queues to watch; unacknowledged messages are
    counted over all of them (see :func:`unacked_length`). With ``store`` (a
    :class:`~celery_claim.ClaimStore`), a claim still ``running`` also counts
    as work in progress: a running claim that no message will ever come back
    for is a lost job, and this wait then times out. All of it must hold for
    ``settle`` seconds in a row (a message is briefly in neither list while a
    worker moves it). Raises :class:`WaitTimeout` with the last counts.
    """
    names = [queues] if isinstance(queues, str) else list(queues)
    last: dict[str, int] = {}
    quiet_since: list[float] = []

    def drained() -> bool:
        last["queued"] = sum(queue_length(redis_url, q, key_prefix=key_prefix) for q in names)
        last["unacked"] = unacked_length(redis_url, key_prefix=key_prefix)
        last["running claims"] = (
            len(store.list_claims(state="running", limit=100)) if store is not None else 0
        )
        if any(last.values()):
            quiet_since.clear()
            return False
        if not quiet_since:
            quiet_since.append(time.monotonic())
        return time.monotonic() - quiet_since[0] >= settle

    wait_for(
        drained,
        timeout,
        interval,
        message=lambda: "work still in progress: "
        + ", ".join(f"{count} {what}" for what, count in last.items())
        + "".join(f"\n  unacked: {line}" for line in (
            _unacked_described(redis_url, key_prefix=key_prefix) if last.get("unacked") else ())),
    )
