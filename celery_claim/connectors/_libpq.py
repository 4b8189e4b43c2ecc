"""The claim statements on psycopg's documented lower layers: ``psycopg.pq``
(libpq) for the round trip, ``psycopg.adapt.Transformer`` for the values.

psycopg's cursor does, for every call, work the claim's short statements do
not need: it converts the query, keeps the cursor's state, and decides per
call how to prepare. :class:`LibpqSession` does only the rest, on the
connection's own ``pgconn``:

- parameters are dumped by a ``Transformer`` on the connection's adapters
  (psycopg's own dumpers, in C where psycopg has them): as text, which the
  server reads by the type the statement gives each parameter, except bytes,
  sent as they are in binary format;
- each statement is prepared once per session under a name of its own, or
  sent unnamed where the engine turned prepared statements off
  (``prepare_threshold=None``, as for PgBouncer in transaction mode);
- rows are loaded by the same ``Transformer`` with the connection's loaders,
  so they are the values the cursor gives;
- the wait is a ``select`` on the connection's socket: a signal (a soft time
  limit, Ctrl-C) interrupts it, and a green-thread library that patched
  ``select`` gets its switch.
"""

from __future__ import annotations

import hashlib
import re
import select
from collections.abc import Callable
from typing import Any

from celery_claim.connectors.base import Result
from celery_claim.statements import DriverStatement, Statement

__all__ = ["LibpqSession"]

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
#: SQLSTATE 26000: the session lost a prepared statement (DEALLOCATE, a
#: pooler's DISCARD ALL); 42P05: it already has one of that name.
_LOST_STATEMENT = b"26000"
_DUPLICATE_STATEMENT = b"42P05"


class _Prepared:
    """One statement as libpq takes it: numbered SQL, a name of its own, and
    the format each parameter is dumped in."""

    __slots__ = ("formats", "name", "order", "sql")

    def __init__(self, compiled: DriverStatement) -> None:
        from psycopg.adapt import PyFormat

        numbers = {name: f"${i}" for i, name in enumerate(compiled.order, 1)}
        sql = _PLACEHOLDER.sub(lambda m: numbers[m.group(1)] if m.group(1) else "%",
                               compiled.sql)
        self.sql = sql.encode()
        self.name = b"celery_claim_" + compiled.name.encode() + b"_" + \
            hashlib.sha1(self.sql).hexdigest()[:12].encode()
        self.order = compiled.order
        self.formats = [PyFormat.BINARY if name in compiled.binary else PyFormat.TEXT
                        for name in compiled.order]


#: Each driver statement as libpq takes it, by name and text (built once).
_PREPARED: dict[tuple[str, str], _Prepared] = {}


def prepared(compiled: DriverStatement) -> _Prepared:
    """``compiled`` as libpq takes it (built once per statement and text)."""
    ident = (compiled.name, compiled.sql)
    found = _PREPARED.get(ident)
    if found is None:
        found = _PREPARED[ident] = _Prepared(compiled)
    return found


class LibpqSession:
    """One autocommit psycopg connection, driven through ``psycopg.pq``."""

    def __init__(self, connection: Any) -> None:
        from psycopg import pq
        from psycopg.adapt import Transformer

        self._pq = pq
        self._connection = connection
        self._pgconn = connection.pgconn
        self._encoding: str = connection.info.encoding
        self._named = connection.prepare_threshold is not None
        self._made: set[bytes] = set()
        self._transformer = Transformer(connection)
        self._ok = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)

    def execute(self, statement: Statement, compiled: DriverStatement,
                values: dict[str, Any]) -> Result:
        """Run ``compiled`` with ``values`` (by the statement's own names)."""
        plan = prepared(compiled)
        transformer = self._transformer
        params = transformer.dump_sequence([values[name] for name in plan.order], plan.formats)
        result = self._run(plan, params, transformer.formats)
        count = result.command_tuples
        rowcount = count if count is not None else -1
        if not result.nfields:
            return Result([], rowcount)
        make = statement.make_row
        if make is None:  # the first time: the row type from the column names
            import collections

            names = [result.fname(i).decode(self._encoding) for i in range(result.nfields)]
            row_type: Any = collections.namedtuple(  # type: ignore[misc]
                f"{statement.name}_row", names)
            make = statement.make_row = row_type._make
        transformer.set_pgresult(result)
        return Result(transformer.load_rows(0, result.ntuples, make), rowcount)

    # --- the round trip ----------------------------------------------------------

    def _run(self, plan: _Prepared, params: Any, formats: Any) -> Any:
        pgconn = self._pgconn
        if not self._named:
            return self._raise_for(self._send(
                pgconn.send_query_params, plan.sql, params, None, formats))
        for attempt in (1, 2):
            if plan.name not in self._made:
                made = self._send(pgconn.send_prepare, plan.name, plan.sql)
                if made.status not in self._ok and \
                        made.error_field(self._pq.DiagnosticField.SQLSTATE) != _DUPLICATE_STATEMENT:
                    self._raise_for(made)
                self._made.add(plan.name)
            result = self._send(pgconn.send_query_prepared, plan.name, params, formats)
            if attempt == 1 and result.status not in self._ok and \
                    result.error_field(self._pq.DiagnosticField.SQLSTATE) == _LOST_STATEMENT:
                self._made.discard(plan.name)  # the session lost it: make it again
                continue
            return self._raise_for(result)
        raise AssertionError("unreachable")

    def _send(self, send: Callable[..., None], *args: Any) -> Any:
        """Send one command and wait for its last result (an error stays a result)."""
        pgconn = self._pgconn
        send(*args)
        fileno = pgconn.socket
        while pgconn.flush():
            select.select([fileno], [fileno], [])
        last = None
        while True:
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    if last is None:
                        raise self._connection_error("no result from the server")
                    return last
                last = result
            select.select([fileno], [], [])
            pgconn.consume_input()

    def _raise_for(self, result: Any) -> Any:
        """``result``, or the psycopg error it carries, raised."""
        if result.status in self._ok:
            return result
        import psycopg
        from psycopg import errors

        message = (result.error_message or self._pgconn.error_message).decode(
            self._encoding, "replace").strip()
        if self._pgconn.status == self._pq.ConnStatus.BAD:
            raise psycopg.OperationalError(message or "the connection to the server was lost")
        sqlstate = result.error_field(self._pq.DiagnosticField.SQLSTATE)
        try:
            error_class = errors.lookup(sqlstate.decode()) if sqlstate else psycopg.DatabaseError
        except KeyError:
            error_class = psycopg.DatabaseError
        raise error_class(message)

    def _connection_error(self, message: str) -> Exception:
        import psycopg

        detail = self._pgconn.error_message.decode(self._encoding, "replace").strip()
        return psycopg.OperationalError(detail or message)
