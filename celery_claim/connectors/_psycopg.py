"""One autocommit psycopg connection per thread, for the claim life cycle's statements."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from celery_claim.connectors._libpq import LibpqSession
from celery_claim.connectors.base import Result, cursor_result
from celery_claim.statements import Statement

__all__ = ["LibpqSession", "ThreadConnections"]


class ThreadConnections:
    """Each thread's own autocommit driver connection and cursor.

    Each connection comes from the engine (so its ``connect`` events run, and
    the engine's URL and arguments apply) and is then detached from the pool:
    it is the connector's own, kept by the thread that uses it, closed by
    :meth:`close_all`. A forked child never touches its parent's
    connections; it opens its own. A statement costs one round trip, as a
    server-side prepared statement (unless the engine turned them off with
    ``prepare_threshold=None``, as for PgBouncer in transaction mode), and no
    SQLAlchemy work: no pool checkout, no isolation-level switch, no
    compiled-cache lookup, no result object. It goes through
    :class:`LibpqSession` (psycopg's documented ``psycopg.pq`` layer) when
    its parameters are text, numbers, booleans, bytes or ``None``, and
    through psycopg's cursor otherwise.

    A process keeps at most as many as the engine's pool size; threads beyond
    that (a green-thread pool) go through the engine's pool, which bounds them.
    """

    def __init__(self, engine: sa.Engine, engine_for_process: Callable[[], sa.Engine],
                 *, session_setup: Callable[[Any], None] | None = None) -> None:
        import psycopg

        self._psycopg = psycopg
        self._engine = engine
        self._session_setup = session_setup
        self._engine_for_process = engine_for_process  # drops an inherited pool after a fork
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[list[Any]] = []  # [pid, connection, thread]
        self._generation = 0
        #: ``False``: every statement goes through psycopg's cursor (the
        #: benchmarks compare both paths).
        self.use_libpq = True
        size = getattr(engine.pool, "size", None)
        self.limit: int = size() if callable(size) else 8
        self.dialect = engine.dialect

    def execute(self, statement: Statement, params: dict[str, Any]) -> Result | None:
        """Run ``statement`` on this thread's connection; ``None`` if the
        thread has none (the process holds as many as it may)."""
        held = self._get()
        if held is None:
            return None
        connection, cursor, session = held
        compiled = statement.driver(self.dialect)
        try:
            values = compiled.params(params)
            if self.use_libpq:
                result = session.execute(statement, compiled, values)
                if result is not None:
                    return result
            cursor.execute(compiled.sql, values, prepare=True)
            return cursor_result(statement, cursor)
        except self._psycopg.Error as exc:
            # A connection the server closed (restart, terminate), or a
            # session that lost its prepared statements (DEALLOCATE, a
            # pooler's DISCARD ALL): a fresh connection runs it again.
            if (connection.closed or connection.broken
                    or isinstance(exc, self._psycopg.errors.InvalidSqlStatementName)
                    or self._engine.dialect.is_disconnect(exc, connection, None)):  # type: ignore[arg-type]
                self._discard(connection)
                self._local.lost = exc
            raise
        except BaseException:
            # Interrupted mid-statement (a soft time limit raised by a signal
            # handler): the reply may still be on its way, so this connection
            # is never used again.
            with contextlib.suppress(Exception):
                if connection.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
                    self._discard(connection)
            raise

    def lost(self, exc: BaseException) -> bool:
        """``exc`` broke this thread's connection, which is gone: worth a retry."""
        if getattr(self._local, "lost", None) is exc:
            self._local.lost = None
            return True
        return False

    def _get(self) -> tuple[Any, Any, LibpqSession] | None:
        local = self._local
        held: tuple[Any, Any, LibpqSession] | None = getattr(local, "held", None)
        if held is not None and local.pid == os.getpid() and local.generation == self._generation:
            return held
        slot = self._reserve()
        if slot is None:
            return None
        try:
            fairy = self._engine_for_process().raw_connection()
            fairy.detach()
            connection: Any = fairy.dbapi_connection
            connection.autocommit = True
            cursor = connection.cursor()
            if self._session_setup is not None:
                self._session_setup(cursor)
        except BaseException:
            with self._lock:
                self._opened = [e for e in self._opened if e is not slot]
            raise
        held = (connection, cursor, LibpqSession(connection))
        with self._lock:
            slot[1] = connection
            local.held, local.pid, local.generation = held, os.getpid(), self._generation
        return held

    def _reserve(self) -> list[Any] | None:
        """A slot for one more connection, after closing those of threads that ended."""
        pid = os.getpid()
        with self._lock:
            ended = [e for e in self._opened if e[0] == pid and not e[2].is_alive()]
            self._opened = [e for e in self._opened if e not in ended]
            slot = None
            if sum(1 for e in self._opened if e[0] == pid) < self.limit:
                slot = [pid, None, threading.current_thread()]
                self._opened.append(slot)
        for _, connection, _ in ended:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
        return slot

    def _discard(self, connection: Any) -> None:
        """Drop a broken connection; the thread opens a new one next time."""
        held = getattr(self._local, "held", None)
        if held is not None and held[0] is connection:
            self._local.held = None
        with self._lock:
            self._opened = [e for e in self._opened if e[1] is not connection]
        with contextlib.suppress(Exception):
            connection.close()

    def close_all(self) -> None:
        """Close this process's connections (not an inherited parent's)."""
        with self._lock:
            opened, self._opened = self._opened, []
            self._generation += 1
        for pid, connection, _ in opened:
            if pid == os.getpid() and connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
