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
until enough is given back. The budget lives in a file beside the run's
other temporary files; each holder is listed under its process id, and a
process that died holding some gives it back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

#: Left for the tests that declare nothing, the fixtures' own engines and the
#: connections that are closing while others open.
MARGIN = 25
#: How long a test waits for its share before it runs anyway (and says so).
PATIENCE_SECONDS = 120.0


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
    """A count of connections shared through a locked file."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = max(limit, 1)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, int]]:
        with open(self.path, "a+", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            text = file.read()
            held: dict[str, int] = json.loads(text) if text.strip() else {}
            held = {pid: n for pid, n in held.items() if _alive(int(pid))}
            yield held
            file.seek(0)
            file.truncate()
            file.write(json.dumps(held))

    def take(self, count: int) -> bool:
        """Take ``count`` (at most the whole budget) if it fits now."""
        count = min(count, self.limit)
        with self._locked() as held:
            if held and sum(held.values()) + count > self.limit:
                return False
            held[str(os.getpid())] = count
            return True

    def give_back(self) -> None:
        with self._locked() as held:
            held.pop(str(os.getpid()), None)

    @contextlib.contextmanager
    def hold(self, count: int) -> Iterator[float]:
        """Hold ``count`` for the block; yields the seconds it waited."""
        started = time.monotonic()
        while not self.take(count):
            if time.monotonic() - started > PATIENCE_SECONDS:
                break  # never wait for ever: run, and let the test say what happened
            time.sleep(0.1)
        try:
            yield time.monotonic() - started
        finally:
            self.give_back()
