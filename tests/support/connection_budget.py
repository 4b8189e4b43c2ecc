"""PostgreSQL connections shared by the test processes of one run.

The suite runs in several processes (pytest-xdist), all on one PostgreSQL
server. Most tests open a few connections; some open many at once: the
races (eight processes of four threads, a connection each), the scenarios
with real workers (two or three workers, their pool processes, heartbeats
and result backends). Three of those at the same moment would pass the
server's ``max_connections`` (100 by default) and fail with "too many
clients already", whichever test happened to connect last.

So a test that opens many connections declares about how many, with
``@pytest.mark.connections(n)`` (the acceptance tier counts 25 unless it
says otherwise), and holds that many from a budget the processes of the run
share: the server's ``max_connections``, less its reserved slots and a
margin for the tests that declare nothing. A test that does not fit waits
until enough is given back, in the order the tests came. The budget lives
in a file in the temporary directory, named by the run's id; each holder is
listed under its process id, and a process that died holding some gives it
back. It covers the processes of one run: ``-n 0`` needs none, and separate
runs on one server do not share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

#: Left for the tests that declare nothing, the fixtures' own engines and the
#: connections that are closing while others open.
MARGIN = 25
#: How long a test waits for its share before it runs anyway (with a warning):
#: longer than the longest test holds one (pytest-timeout's 300 s and a teardown).
PATIENCE_SECONDS = 600.0


def server_limit(url: str) -> int:
    """``max_connections`` less the slots reserved for superusers."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            limit = int(conn.execute(sa.text("SHOW max_connections")).scalar_one())
            reserved = int(conn.execute(
                sa.text("SHOW superuser_reserved_connections")).scalar_one())
    finally:
        engine.dispose()
    return limit - reserved


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ConnectionBudget:
    """A count of connections shared through a locked file.

    The file holds ``{"held": {pid: count}, "waiting": [pid, ...]}``: the
    waiters take their shares in the order they came, so a process that
    gives its share back and asks again at once does not pass one that has
    been waiting.
    """

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = max(limit, 1)

    @contextlib.contextmanager
    def _open_locked(self) -> Iterator[IO[str]]:
        """The file, locked; never one that another process has just removed."""
        while True:
            file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            file.close()
        with file:
            yield file

    def remove_if_unused(self) -> None:
        """Remove the file when nobody holds or waits (the last process out)."""
        with contextlib.suppress(OSError), self._locked() as (held, waiting):
            if not held and not waiting:
                os.unlink(self.path)  # the others reopen by name: see _open_locked

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[dict[str, int], list[str]]]:
        with self._open_locked() as file:
            file.seek(0)
            try:
                state = json.loads(file.read() or "{}")
                held = {str(k): int(v) for k, v in dict(state.get("held", {})).items()}
                waiting = [str(p) for p in list(state.get("waiting", []))]
            except (ValueError, TypeError, AttributeError):
                held, waiting = {}, []  # a torn or foreign file: start again
            held = {pid: n for pid, n in held.items() if _alive(int(pid))}
            waiting = [pid for pid in dict.fromkeys(waiting) if _alive(int(pid))]
            yield held, waiting
            file.seek(0)
            file.truncate()
            file.write(json.dumps({"held": held, "waiting": waiting}))

    def take(self, count: int, *, force: bool = False) -> bool:
        """Take ``count`` (at most the whole budget) if it fits now and no
        earlier waiter is still waiting; else join the waiters. ``force``
        takes it regardless, so that the others see it."""
        count = min(count, self.limit)
        me = str(os.getpid())
        with self._locked() as (held, waiting):
            held.pop(me, None)
            first = not waiting or waiting[0] == me
            fits = not held or sum(held.values()) + count <= self.limit
            if not force and not (first and fits):
                if me not in waiting:
                    waiting.append(me)
                return False
            if me in waiting:
                waiting.remove(me)
            held[me] = count
            return True

    def give_back(self) -> None:
        me = str(os.getpid())
        with self._locked() as (held, waiting):
            held.pop(me, None)
            if me in waiting:
                waiting.remove(me)

    @contextlib.contextmanager
    def hold(self, count: int) -> Iterator[float]:
        """Hold ``count`` for the block; yields the seconds it waited.

        After :data:`PATIENCE_SECONDS` it takes its share anyway (the others
        then wait for it), and the seconds it yields say so.
        """
        started = time.monotonic()
        while not self.take(count):
            if time.monotonic() - started > PATIENCE_SECONDS:
                self.take(count, force=True)
                break
            time.sleep(0.05)
        try:
            yield time.monotonic() - started
        finally:
            self.give_back()
