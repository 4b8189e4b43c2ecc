"""A background thread that repeats an action until a ``with`` block ends."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

__all__ = ["repeating"]


@contextlib.contextmanager
def repeating(action: Callable[[], None], gap: Callable[[], float], *,
              name: str) -> Iterator[None]:
    """Call ``action`` after every ``gap()`` seconds, from a thread, until the block ends.

    The thread is stopped and joined on the way out, also on an error.
    Exceptions of ``action`` are the caller's to catch.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(gap()):
            action()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
