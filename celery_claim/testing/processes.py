"""Process helpers: what ``/proc`` says about a process, and the worker's start command.

Linux only: the state, parent and process group of a process are read from
``/proc/<pid>/stat``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["BOOTSTRAP", "READY_MARKER", "live_processes", "proc_stat", "process_alive",
           "process_info"]

READY_MARKER = "celery-claim-testing: consumer ready"
# The ``celery`` command plus a worker_ready handler that writes a marker
# straight to fd 2 (Celery redirects sys.stderr to logging), so readiness does
# not depend on the worker's log level.
BOOTSTRAP = "; ".join(
    [
        "import os, sys",
        "from celery import signals",
        "from celery.__main__ import main",
        "signals.worker_ready.connect("
        f"lambda sender=None, **kw: os.write(2, {(READY_MARKER + chr(10)).encode()!r}), "
        "weak=False)",
        "sys.argv[0] = 'celery'",
        "main()",
    ]
)


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, process group) of ``pid`` from ``/proc``, None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def live_processes() -> Iterable[tuple[int, int, int]]:
    """(pid, ppid, process group) of every live process."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                yield int(entry.name), stat[1], stat[2]


def process_info(pid: int) -> dict[str, Any]:
    """pid, name and cmdline of a process, in pytest-celery's column names."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return {"pid": pid}
    return {"pid": pid, "name": name, "cmdline": [c.decode() for c in cmdline if c]}
