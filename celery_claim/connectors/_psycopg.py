"""One autocommit psycopg connection per process, for the claim life cycle's statements."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from celery_claim.connectors._libpq import LibpqSession
from celery_claim.connectors.base import Result, cursor_result
from celery_claim.statements import DriverStatement, Statement

__all__ = ["LOCK_TIMEOUT_MS", "LibpqSession", "ProcessConnection"]

#: How long a statement on the process's connection waits for a row lock
#: (another transaction's on the same claim) before it gives the connection
#: back to the process's other threads and waits on a connection of its own.
LOCK_TIMEOUT_MS = 50


class ProcessConnection:
    """The process's one autocommit driver connection for the hot statements.

    Every thread of the process runs its claim statements on it, one at a
    time, under a lock, as the floor (one psycopg connection per process)
    does. With the threads and gevent pools that is cheaper than a
    connection per thread, for the worker and for the server: eight
    connections in use at once are eight PostgreSQL backends competing for
    the machine's cores and the WAL, where one takes the statements in turn,
    and the claims queued behind it share a statement
    (:mod:`celery_claim.coalesce`). Measured in ``docs/performance.md``
    (threads pool). Heartbeats and ``atomic()`` never wait for it: they run
    on the engine's pool. Nor does a statement that must wait for a row
    lock hold the others up: after :data:`LOCK_TIMEOUT_MS` it gives the
    connection back and runs again on a driver connection of its own, opened
    for it and closed after it, where it waits as long as it must (behind
    PgBouncer in transaction mode the session is not ours to set, and such a
    statement waits where it is).

    The connection comes from the engine (so its ``connect`` events run, and
    the engine's URL and arguments apply) and is then detached from the pool:
    it is the connector's own, closed by :meth:`close_all`. A forked child
    never touches its parent's connection, nor its lock; it opens its own. A
    statement costs one round trip, as a server-side prepared statement
    (unless the engine turned them off with ``prepare_threshold=None``, as
    for PgBouncer in transaction mode), and no SQLAlchemy work: no pool
    checkout, no isolation-level switch, no compiled-cache lookup, no result
    object. It goes through :class:`LibpqSession` (psycopg's documented
    ``psycopg.pq`` and ``psycopg.adapt.Transformer`` layers).
    """

    #: ``False``: every statement goes through psycopg's cursor (the
    #: benchmarks compare both paths).
    use_libpq = True

    def __init__(self, engine: sa.Engine, engine_for_process: Callable[[], sa.Engine],
                 *, session_setup: Callable[[Any], None] | None = None) -> None:
        import psycopg

        self._psycopg = psycopg
        self._engine = engine
        self._session_setup = session_setup
        self._engine_for_process = engine_for_process  # drops an inherited pool after a fork
        self._local = threading.local()  # each thread's last lost connection
        # Reentrant: a signal handler that runs a statement in the thread
        # that holds it (Ctrl-C during a claim) must not deadlock.
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._held: tuple[Any, Any, LibpqSession] | None = None
        self.dialect = engine.dialect
        self._compiled: dict[Statement, DriverStatement] = {}

    def execute(self, statement: Statement, params: dict[str, Any]) -> Result:
        """Run ``statement`` on the process's connection, after the statement
        another thread may have on it. One that must wait for a row lock
        gives the connection back and waits on a connection of its own."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            try:
                return self._run(self._get(), statement, params, shared=True)
            except self._psycopg.errors.LockNotAvailable:
                pass  # LOCK_TIMEOUT_MS passed: an autocommit statement that did nothing
        own = self._open(lock_timeout=False)
        try:
            return self._run(own, statement, params, shared=False)
        finally:
            with contextlib.suppress(Exception):
                own[0].close()

    def _run(self, held: tuple[Any, Any, LibpqSession], statement: Statement,
             params: dict[str, Any], *, shared: bool) -> Result:
        connection, cursor, session = held
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = statement.driver(self.dialect)
        try:
            if self.use_libpq:
                return session.execute(statement, compiled, params)
            cursor.execute(compiled.sql, compiled.params(params), prepare=True)
            return cursor_result(statement, cursor)
        except self._psycopg.errors.LockNotAvailable:
            raise
        except self._psycopg.Error as exc:
            # A connection the server closed (restart, terminate), or a
            # session that lost its prepared statements (DEALLOCATE, a
            # pooler's DISCARD ALL): a fresh connection runs it again.
            if (connection.closed or connection.broken
                    or isinstance(exc, self._psycopg.errors.InvalidSqlStatementName)
                    or self._engine.dialect.is_disconnect(exc, connection, None)):  # type: ignore[arg-type]
                if shared:
                    self._discard(connection)
                self._local.lost = exc
            raise
        except BaseException:
            # Interrupted mid-statement (a soft time limit raised by a signal
            # handler): the reply may still be on its way, so this connection
            # is never used again.
            with contextlib.suppress(Exception):
                if shared and connection.info.transaction_status \
                        != self._psycopg.pq.TransactionStatus.IDLE:
                    self._discard(connection)
            raise

    def lost(self, exc: BaseException) -> bool:
        """``exc`` broke this thread's connection, which is gone: worth a retry."""
        if getattr(self._local, "lost", None) is exc:
            self._local.lost = None
            return True
        return False

    def _get(self) -> tuple[Any, Any, LibpqSession]:
        """The process's connection, opened if need be (under the lock)."""
        held = self._held
        if held is None:
            self._held = held = self._open(lock_timeout=True)
        return held

    def _open(self, *, lock_timeout: bool) -> tuple[Any, Any, LibpqSession]:
        """A new autocommit driver connection, detached from the engine's pool."""
        fairy = self._engine_for_process().raw_connection()
        fairy.detach()
        connection: Any = fairy.dbapi_connection
        try:
            connection.autocommit = True
            cursor = connection.cursor()
            if lock_timeout and connection.prepare_threshold is not None:
                # Not behind a transaction pooler (PgBouncer's transaction mode
                # takes prepare_threshold=None), so the session is ours to set.
                cursor.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
            if self._session_setup is not None:
                self._session_setup(cursor)
        except BaseException:
            with contextlib.suppress(Exception):
                connection.close()
            raise
        return connection, cursor, LibpqSession(connection)

    def _after_fork(self) -> None:
        """A forked child starts with no connection and a free lock: the
        parent's, and the statement a parent's thread had on it, are not its own."""
        self._lock = threading.RLock()
        self._held = None
        self._local = threading.local()
        self._pid = os.getpid()

    def _discard(self, connection: Any) -> None:
        """Drop a broken connection; the next statement opens a new one."""
        held = self._held
        if held is not None and held[0] is connection:
            self._held = None
        with contextlib.suppress(Exception):
            connection.close()

    def close_all(self) -> None:
        """Close this process's connection (never an inherited parent's)."""
        held, self._held = self._held, None
        if held is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                held[0].close()
