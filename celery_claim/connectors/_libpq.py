"""The claim statements on psycopg's documented libpq layer (``psycopg.pq``).

psycopg's cursor adapts every parameter through its dumpers, converts the
query, keeps the cursor's state and loads the rows, in Python, for every
call; for the claim's two short statements that is most of their client CPU.
:class:`LibpqSession` does the same work for the few types the claim
statements take, on the connection's own ``pgconn``:

- parameters go as text (bytes in binary), with no declared types: the
  server infers each from the statement, as it does for the cursor's
  strings;
- each statement is prepared once per session under a name of its own, or
  sent unnamed where the engine turned prepared statements off
  (``prepare_threshold=None``, as for PgBouncer in transaction mode);
- rows are loaded by the connection's own loaders (``connection.adapters``),
  so they are the values the cursor gives;
- the wait is a ``select`` on the connection's socket: a signal (a soft time
  limit, Ctrl-C) interrupts it, and a green-thread library that patched
  ``select`` gets its switch.

Anything else (a list, a date, a JSON value) goes through the cursor.
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
    """One statement as libpq takes it: numbered SQL and a name of its own."""

    __slots__ = ("name", "sql")

    def __init__(self, compiled: DriverStatement) -> None:
        numbers = {name: f"${i}" for i, name in enumerate(compiled.order, 1)}
        sql = _PLACEHOLDER.sub(lambda m: numbers[m.group(1)] if m.group(1) else "%",
                               compiled.sql)
        self.sql = sql.encode()
        self.name = b"celery_claim_" + compiled.name.encode() + b"_" + \
            hashlib.sha1(self.sql).hexdigest()[:12].encode()


#: Each driver statement as libpq takes it, by name and text (built once).
_PREPARED: dict[tuple[str, str], _Prepared] = {}


class LibpqSession:
    """One autocommit psycopg connection, driven through ``psycopg.pq``."""

    def __init__(self, connection: Any) -> None:
        from psycopg import Binary, pq

        self._pq = pq
        self._binary = Binary  # what SQLAlchemy's LargeBinary hands psycopg
        self._connection = connection
        self._pgconn = connection.pgconn
        self._encoding: str = connection.info.encoding
        self._named = connection.prepare_threshold is not None
        self._made: set[bytes] = set()
        self._loaders: dict[int, Callable[[Any], Any]] = {}
        self._row_loaders: dict[Statement, list[Callable[[Any], Any]]] = {}
        self._ok = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)

    def execute(self, statement: Statement, compiled: DriverStatement,
                values: dict[str, Any]) -> Result | None:
        """Run ``compiled`` with ``values``; ``None`` if a value needs the cursor."""
        params: list[bytes | None] = []
        formats: list[int] = []
        encoding = self._encoding
        for name in compiled.order:
            value = values[name]
            kind = type(value)
            # The exact types by identity; subclasses and wrappers in _param.
            if kind is str:
                params.append(value.encode(encoding))
                formats.append(0)
            elif value is None:
                params.append(None)
                formats.append(0)
            elif kind is bool:
                params.append(b"t" if value else b"f")
                formats.append(0)
            elif kind is float or kind is int:
                params.append(repr(value).encode())
                formats.append(0)
            elif kind is bytes:
                params.append(value)
                formats.append(1)
            else:
                param = self._param(value)
                if param is None:
                    return None
                params.append(param[0])
                formats.append(param[1])
        ident = (compiled.name, compiled.sql)
        prepared = _PREPARED.get(ident)
        if prepared is None:
            prepared = _PREPARED[ident] = _Prepared(compiled)
        result = self._run(prepared, params, formats)
        return self._rows(statement, result)

    def _param(self, value: Any) -> tuple[bytes, int] | None:
        """A value of a subclass (or a binary wrapper) as libpq takes it; ``None``
        if it needs the cursor's dumpers."""
        if isinstance(value, str):
            return value.encode(self._encoding), 0
        if value is True or value is False:
            return (b"t" if value else b"f"), 0
        if isinstance(value, (int, float)):  # bools were taken just above
            return repr(value).encode(), 0
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value), 1
        if isinstance(value, self._binary):
            return bytes(value.obj), 1
        return None

    # --- the round trip ----------------------------------------------------------

    def _run(self, prepared: _Prepared, params: list[bytes | None],
             formats: list[int]) -> Any:
        pgconn = self._pgconn
        if not self._named:
            return self._raise_for(self._send(
                pgconn.send_query_params, prepared.sql, params, None, formats))
        for attempt in (1, 2):
            if prepared.name not in self._made:
                made = self._send(pgconn.send_prepare, prepared.name, prepared.sql)
                if made.status not in self._ok and \
                        made.error_field(self._pq.DiagnosticField.SQLSTATE) != _DUPLICATE_STATEMENT:
                    self._raise_for(made)
                self._made.add(prepared.name)
            result = self._send(pgconn.send_query_prepared, prepared.name, params, formats)
            if attempt == 1 and result.status not in self._ok and \
                    result.error_field(self._pq.DiagnosticField.SQLSTATE) == _LOST_STATEMENT:
                self._made.discard(prepared.name)  # the session lost it: make it again
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

    # --- rows ----------------------------------------------------------------------

    def _rows(self, statement: Statement, result: Any) -> Result:
        count = result.command_tuples
        rowcount = count if count is not None else -1
        nfields = result.nfields
        if not nfields:
            return Result([], rowcount)
        make = statement.make_row
        if make is None:  # the first time: the row type from the column names
            import collections

            names = [result.fname(i).decode(self._encoding) for i in range(nfields)]
            row_type: Any = collections.namedtuple(  # type: ignore[misc]
                f"{statement.name}_row", names)
            make = statement.make_row = row_type._make
        loads = self._row_loaders.get(statement)
        if loads is None or len(loads) != nfields:  # the types of a statement's columns are fixed
            loads = self._row_loaders[statement] = [
                self._loader(result.ftype(i)) for i in range(nfields)]
        get = result.get_value
        rows = []
        columns = range(nfields)
        for r in range(result.ntuples):
            values = [get(r, c) for c in columns]
            rows.append(make([None if data is None else load(data)
                              for data, load in zip(values, loads, strict=True)]))
        return Result(rows, rowcount)

    def _loader(self, oid: int) -> Callable[[Any], Any]:
        load = self._loaders.get(oid)
        if load is None:
            connection = self._connection
            loader_class = connection.adapters.get_loader(oid, self._pq.Format.TEXT)
            load = self._loaders[oid] = loader_class(oid, connection).load
        return load
