"""The connector interface: how the claim store reaches its database.

The claim store (:class:`celery_claim.store.ClaimStore`) knows which
statement to run and what its answer means; a connector knows how to run it
on one database library. Give the store yours with
``ClaimStore(connector=MyConnector(...), table="celery_claims")``.

The store calls only the public methods of :class:`Connector` and
:class:`Transaction`. A connector fills in their hooks, the methods whose
names start with one underscore; the public methods around them check for a
fork, translate errors and retry once after a lost connection, the same way
for every connector.

Writing a connector
===================

Subclass :class:`Connector`:

* set :attr:`Connector.dialect` (``"postgresql"`` or ``"sqlite"``): the store
  builds that dialect's statements;
* set :attr:`Connector.errors`, the driver's exception classes (for example
  ``(psycopg.Error, OSError)``); only these are translated;
* implement the hooks:

  ``_execute(statement, params) -> Result``
      Run one statement in autocommit, in one round trip, on a connection
      this process and this thread own, and return its rows and rowcount.
  ``_begin() -> Transaction``
      Open a transaction for ``atomic()`` (see below).
  ``_create_schema(statements)`` / ``_drop_schema(statements)``
      Create the table and its indexes if missing / drop the table.
  ``_refused(exc) -> bool``
      True when the database refused the statement itself (a constraint, a
      value out of range, bad SQL, an aborted transaction): trying again
      fails the same way. False when it could not be reached (trying again
      later may succeed). Decides :class:`~celery_claim.errors.ClaimStoreRefused`
      against :class:`~celery_claim.errors.ClaimStoreUnavailable`.

  and, where they apply:

  ``_reconnect(exc) -> bool``
      ``exc`` (one of :attr:`errors`) lost the connection (a server
      restart, ``pg_terminate_backend``) and the statement may run again on a
      fresh one; drop the broken connection and return True. The default
      returns False: no retry.
  ``_after_fork()``
      Called in a forked child before its first statement: forget every
      connection inherited from the parent, without closing it (the parent
      still uses the socket). No connection may cross a fork.
  ``_close()``
      Close this process's connections (:meth:`Connector.dispose`).
  ``describe()``
      Where the claims live, for messages and ``repr`` (never a password).
  ``_own_transaction() -> bool``
      Asked just before ``_execute`` runs a duplicate's statement (each try):
      True when that statement will commit on its own (autocommit, on a
      connection no caller has a transaction open on); then a duplicate's
      count commits without waiting for its WAL flush. The default, False,
      keeps every commit synchronous.

A whole working example, on plain psycopg cursors, is the ``CursorConnector``
of ``tests/integration/test_connector_seam.py``.

Statements and parameters
-------------------------

A hook gets a :class:`~celery_claim.statements.Statement` and a ``dict`` of
parameters by the statement's own names (``key``, ``token``...). A
connector on a DBAPI cursor runs the driver form::

    from celery_claim.statements import driver_dialect

    compiled = statement.driver(driver_dialect("psycopg"))  # or "psycopg2"
    cursor.execute(compiled.sql, compiled.params(params))
    return cursor_result(statement, cursor)

``compiled.sql`` is plain SQL text for that driver (``%s`` placeholders),
compiled once per driver; ``compiled.order`` names its parameters. Every
dialect difference lives in :mod:`celery_claim.sql`, never in a connector. A
SQLAlchemy connection runs ``statement.executable`` instead (its parameters
are named ``p_<name>``).

Rows must have attribute access and ``_asdict()`` (named tuples, or
SQLAlchemy rows); :func:`cursor_result` builds them from a DBAPI cursor.
Every statement returns rows (``RETURNING``) except ``purge``, whose
``rowcount`` counts the deleted rows.

Connections
-----------

A connection belongs to one process and one thread: the heartbeat thread
and each pool thread use their own. A statement runs in autocommit, and is
durable when ``_execute`` returns. Errors from a hook propagate untouched;
the base class translates them, with the original as ``__cause__``.

Transactions (``self.claim.atomic()``)
--------------------------------------

:meth:`Connector.begin` returns a :class:`Transaction`, open until the
store commits or rolls it back. The body's writes in ``atomic()`` and the
claim's fenced completion run in it, and commit together:

* ``handle`` is what ``with self.claim.atomic() as handle:`` gives the body
  (a SQLAlchemy ``Connection``; ``None`` where the body writes through its
  own library, as with Django's ORM);
* ``_execute(statement, params)`` runs the completion inside it, on the
  same connection as the body's writes;
* ``_savepoint()`` is a context manager for a nested ``atomic()`` block: an
  exception inside rolls back only that block's writes, then propagates;
* ``_commit()`` commits (and releases the connection); ``_rollback()``
  rolls back (and releases it), and is also called after a failed commit.

The transaction outlives the ``with`` block that opened it: the body
returns first, then the completion runs and the store commits. A connector
whose library has only a context manager for transactions (Django's
``transaction.atomic(using=alias)``) enters it in ``_begin`` and exits it in
``_commit`` / ``_rollback``, on the same thread. Errors of ``_execute`` and
``_commit`` are translated as above; ``_rollback`` may fail silently (a
broken connection has nothing committed).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from celery_claim import errors
from celery_claim.statements import Statement, Statements

__all__ = ["Connector", "Result", "Transaction", "cursor_result"]

logger = logging.getLogger("celery_claim")


class Result:
    """What a statement returned: its rows, and how many rows it touched."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        #: Rows with attribute access and ``_asdict()``.
        self.rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        """The first row, or ``None``."""
        return self.rows[0] if self.rows else None


def cursor_result(statement: Statement, cursor: Any) -> Result:
    """The rows of a DBAPI ``cursor`` that ran ``statement``, as named tuples."""
    make = statement.make_row
    if make is None:  # the first time: the row type from the column names
        description = cursor.description
        if description is None:  # no rows (DELETE without RETURNING)
            return Result([], cursor.rowcount)
        row_type: Any = collections.namedtuple(  # type: ignore[misc]
            f"{statement.name}_row", [c[0] for c in description])
        make = statement.make_row = row_type._make
    return Result([make(row) for row in cursor.fetchall()], cursor.rowcount)


class Connector(abc.ABC):
    """Runs the claim store's named statements on one database library."""

    #: ``"postgresql"`` or ``"sqlite"``: the statements the store builds.
    dialect: str
    #: The driver's exception classes: what :meth:`translate` turns into
    #: :class:`~celery_claim.errors.ClaimStoreError`.
    errors: tuple[type[BaseException], ...] = (OSError,)
    #: The store may send concurrent claims and completions of this
    #: process's threads as one statement (``claim_many``, ``complete_many``).
    coalesces: bool = False

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._fork_lock = threading.Lock()

    # --- public: called by the store ------------------------------------------

    def execute(self, operation: str, statement: Statement, params: dict[str, Any],
                **context: object) -> Result:
        """Run ``statement`` in autocommit, in one round trip.

        ``operation`` and ``context`` (the key) go into the error message.
        A statement that lost its connection runs once more on a fresh one.
        """
        self._check_fork()
        for attempt in (1, 2):
            try:
                if statement.own_transaction:
                    params = {**params, "own_transaction": self._own_transaction()}
                return self._execute(statement, params)
            except self.errors as exc:
                if attempt == 1 and self._reconnect(exc):
                    continue
                with self.translate(operation, **context):
                    raise
        raise AssertionError("unreachable")

    def begin(self, **context: object) -> Transaction:
        """Open a transaction for ``atomic()``."""
        self._check_fork()
        with self.translate("connect", **context):
            return self._begin()

    def create_schema(self, statements: Statements) -> None:
        """Create the table and its indexes if missing (safe to race)."""
        self._check_fork()
        with self.translate("create_schema"):
            self._create_schema(statements)

    def drop_schema(self, statements: Statements) -> None:
        """Drop the table."""
        self._check_fork()
        with self.translate("drop_schema"):
            self._drop_schema(statements)

    def describe(self) -> str:
        """Where the claims live, for messages (no password): override it."""
        return type(self).__name__

    def dispose(self) -> None:
        """Close this process's connections (never an inherited parent's)."""
        self._check_fork()
        self._close()

    @contextlib.contextmanager
    def translate(self, operation: str, **context: object) -> Iterator[None]:
        """Raise the driver's errors as :class:`~celery_claim.errors.ClaimStoreError`:
        :class:`~celery_claim.errors.ClaimStoreRefused` when the database refused
        the statement, :class:`~celery_claim.errors.ClaimStoreUnavailable` otherwise.
        The original error is the ``__cause__``."""
        try:
            yield
        except errors.ClaimError:
            raise
        except self.errors as exc:
            lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            reason = lines[0] if lines else type(exc).__name__
            message = f"claim store {operation} failed: {reason}"
            if self._refused(exc):
                raise errors.ClaimStoreRefused(message, **context) from exc
            raise errors.ClaimStoreUnavailable(message, **context) from exc

    # --- hooks -------------------------------------------------------------------

    @abc.abstractmethod
    def _execute(self, statement: Statement, params: dict[str, Any]) -> Result:
        """Run one statement in autocommit on this thread's connection."""

    @abc.abstractmethod
    def _begin(self) -> Transaction:
        """Open a transaction (see the module's docstring)."""

    @abc.abstractmethod
    def _create_schema(self, statements: Statements) -> None:
        """Create ``statements.table`` and its indexes if missing."""

    @abc.abstractmethod
    def _drop_schema(self, statements: Statements) -> None:
        """Drop ``statements.table`` if it exists."""

    @abc.abstractmethod
    def _refused(self, exc: BaseException) -> bool:
        """True: the database refused the statement; False: it was unreachable."""

    def _own_transaction(self) -> bool:
        """Whether the duplicate's statement :meth:`_execute` is about to run
        is a transaction of its own. Then its count may commit without
        waiting for its WAL flush (``celery_claim.sql_claim``). False by
        default: a statement inside a caller's open transaction must not
        change that transaction's settings."""
        return False

    def _reconnect(self, exc: BaseException) -> bool:
        """Drop a connection ``exc`` broke; True: run the statement again."""
        return False

    def _after_fork(self) -> None:  # noqa: B027 - optional: nothing to forget
        """In a forked child: forget the parent's connections, closing none."""

    def _close(self) -> None:  # noqa: B027 - optional: nothing to close
        """Close this process's connections."""

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            with self._fork_lock:
                if self._pid != os.getpid():
                    self._after_fork()
                    self._pid = os.getpid()


class Transaction(abc.ABC):
    """An open transaction held by ``atomic()``, committed with the completion."""

    #: What ``with self.claim.atomic() as handle:`` gives the body.
    handle: Any = None

    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    def execute(self, operation: str, statement: Statement, params: dict[str, Any],
                **context: object) -> Result:
        """Run ``statement`` inside this transaction."""
        if statement.own_transaction:
            params = {**params, "own_transaction": False}  # the caller's transaction
        with self.connector.translate(operation, **context):
            return self._execute(statement, params)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[Any]:
        """A nested block: an error inside rolls back only its own writes."""
        with self._savepoint():
            yield self.handle

    def commit(self, **context: object) -> None:
        """Commit, and give the connection back; on failure, roll back and raise."""
        try:
            with self.connector.translate("commit", **context):
                self._commit()
        except BaseException:
            self.rollback()
            raise

    @property
    def broken(self) -> bool:
        """True when the connection under this transaction is gone (the server
        closed it, the network failed): an error the body raised from it is
        then the store's failure, not the body's."""
        try:
            return self._broken()
        except Exception:
            return True

    def rollback(self) -> None:
        """Roll back, and give the connection back. Never raises: a broken
        connection has nothing committed to undo."""
        try:
            self._rollback()
        except Exception:
            logger.debug("rollback of atomic() failed", exc_info=True)

    # --- hooks -------------------------------------------------------------------

    @abc.abstractmethod
    def _execute(self, statement: Statement, params: dict[str, Any]) -> Result:
        """Run one statement on this transaction's connection."""

    @abc.abstractmethod
    def _savepoint(self) -> contextlib.AbstractContextManager[Any]:
        """A context manager for a nested block (a SAVEPOINT)."""

    @abc.abstractmethod
    def _commit(self) -> None:
        """Commit and release the connection."""

    def _broken(self) -> bool:
        """Whether the connection is gone; the default cannot tell (False)."""
        return False

    @abc.abstractmethod
    def _rollback(self) -> None:
        """Roll back and release the connection (also after a failed commit)."""
