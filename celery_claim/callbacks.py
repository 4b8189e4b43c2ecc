"""Task ids for a claimed task's ``link`` and ``link_error`` callbacks.

Celery's tracer sends a task's callbacks after every successful delivery, a
duplicate's included (the duplicate returns the stored result, and to Celery
that is a success). A callback signature that was not frozen gets a new task
id at each dispatch, so under the default key (task name and task id) every
dispatch would be another claim, and the callback would run again. Before
the claim decides anything, every such callback is given a task id derived
from the parent's claim key: each delivery of the job dispatches the same
callback message, and the callback's own claim runs it once.
"""

from __future__ import annotations

import uuid
from typing import Any

__all__ = ["pin_callback_ids"]

#: The namespace of the derived ids (a constant: ids must match across workers).
_NAMESPACE = uuid.UUID("6f1f9c2e-4a8b-5d3c-9e7f-0b1a2c3d4e5f")


def pin_callback_ids(request: Any, key: str) -> None:
    """Give every callback of ``request`` that has no task id one made from ``key``.

    Only plain signatures are pinned; a group given as a callback keeps
    Celery's own ids for its members (freeze it to pin them)."""
    for kind, signatures in (("link", request.callbacks), ("link_error", request.errbacks)):
        for index, signature in enumerate(signatures or ()):
            if not isinstance(signature, dict) or signature.get("subtask_type"):
                continue  # a group, chord or chain: its members' ids are its own
            options = signature.setdefault("options", {})
            if not options.get("task_id"):
                options["task_id"] = str(uuid.uuid5(_NAMESPACE, f"{key}\x00{kind}\x00{index}"))
