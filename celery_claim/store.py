"""ClaimStore: the claim table's operations, one statement each.

The store knows SQL and nothing of Celery. Each method runs one named
statement from :mod:`celery_claim.sql` in one round trip (autocommit), except
where it joins the caller's transaction (``connection=``).

Engines belong to a process: after a fork the child drops the pool it
inherited (``dispose(close=False)``) and opens its own connections, so
prefork children never share a socket with their parent.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from celery_claim import errors, results, sql

__all__ = ["Acquired", "ClaimRecord", "ClaimStore", "translate_errors"]

_UTC = datetime.timezone.utc

try:  # the driver's own errors, raised by the hot path's driver connections
    from psycopg import Error as _PsycopgError

    _DRIVER_ERRORS: tuple[type[BaseException], ...] = (_PsycopgError,)
except ImportError:  # pragma: no cover - SQLite-only installs
    _DRIVER_ERRORS = ()
_STORE_ERRORS: tuple[type[BaseException], ...] = (
    sa.exc.DBAPIError, sa.exc.SQLAlchemyError, OSError, *_DRIVER_ERRORS)


def _aware(value: datetime.datetime | None) -> datetime.datetime | None:
    # SQLite hands back naive UTC; PostgreSQL timestamptz is already aware.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=_UTC)
    return value


@dataclasses.dataclass(frozen=True)
class ClaimRecord:
    """One row of the claims table, read at ``db_now`` (the database's clock)."""

    key: str
    state: str
    token: int
    task_name: str
    task_id: str
    attempt: int
    owner: str
    payload_digest: str | None
    #: The result as its serializer encoded it (see :mod:`celery_claim.results`).
    stored_result: results.Encoded | None
    has_result: bool
    error: str | None
    duplicates: int
    lease_expires_at: datetime.datetime | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    finished_at: datetime.datetime | None
    expires_at: datetime.datetime | None
    db_now: datetime.datetime

    @classmethod
    def from_row(cls, row: Any) -> ClaimRecord:
        """From a SQLAlchemy ``Row`` or a driver's named tuple."""
        values = row._asdict()
        for name in ("lease_expires_at", "created_at", "updated_at", "finished_at",
                     "expires_at", "db_now"):
            values[name] = _aware(values[name])
        values["has_result"] = bool(values["has_result"])
        payload = values.pop("result")
        content_type = values.pop("result_content_type")
        content_encoding = values.pop("result_content_encoding")
        values["stored_result"] = (
            None if payload is None else results.Encoded(
                bytes(payload), content_type or results.JSON, content_encoding or "utf-8"))
        return cls(**values)

    @property
    def result(self) -> Any:
        """The stored result, decoded (json, msgpack or yaml; a pickled result is
        decoded only by :meth:`celery_claim.results.Encoded.decode` with pickle accepted)."""
        if self.stored_result is None:
            return None
        return self.stored_result.decode(results.READABLE)

    @property
    def lease_remaining(self) -> float:
        """Seconds until the lease lapses (0 when not running or already lapsed)."""
        if self.state != sql.RUNNING or self.lease_expires_at is None:
            return 0.0
        return max(0.0, (self.lease_expires_at - self.db_now).total_seconds())

    @property
    def is_live(self) -> bool:
        """Running under a lease that has not lapsed."""
        return self.state == sql.RUNNING and self.lease_remaining > 0

    @property
    def is_stale(self) -> bool:
        """Running, but the lease has lapsed: the holder is gone or paused."""
        return self.state == sql.RUNNING and not self.is_live

    @property
    def is_expired(self) -> bool:
        """Past its retention time: the next acquire treats it as new."""
        return self.expires_at is not None and self.expires_at < self.db_now

    def as_dict(self) -> dict[str, Any]:
        values = {
            f.name: (v.isoformat() if isinstance(v, datetime.datetime) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }
        del values["stored_result"]
        stored = self.stored_result
        text = stored.text if stored is not None else None
        # JSON as JSON (kombu's typed values stay {"__type__": ..., "__value__": ...}).
        values["result"] = (json.loads(text) if text is not None and stored is not None
                            and stored.content_type == results.JSON else text)
        values["result_content_type"] = stored.content_type if stored is not None else None
        return values


@dataclasses.dataclass(frozen=True)
class Acquired:
    """A won claim: the fencing token and the number of this acquisition."""

    token: int
    attempt: int


@contextlib.contextmanager
def translate_errors(operation: str, **context: object) -> Iterator[None]:
    """Turn driver and SQLAlchemy errors into :class:`ClaimStoreError`."""
    try:
        yield
    except _STORE_ERRORS as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        error = errors.ClaimStoreError(
            f"claim store {operation} failed: {reason[0] if reason else type(exc).__name__}",
            **context,
        )
        error.transient = _is_transient(exc)
        raise error from exc


def _is_transient(exc: BaseException) -> bool:
    """Unavailable (try again later), or refused (the statement itself is at fault)."""
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
    refused = (sa.exc.IntegrityError, sa.exc.DataError, sa.exc.ProgrammingError,
               sa.exc.InternalError, sa.exc.NotSupportedError)
    if isinstance(exc, refused):
        return False
    try:
        import psycopg
    except ImportError:  # pragma: no cover - SQLite-only installs
        return True
    return not isinstance(exc, (psycopg.IntegrityError, psycopg.DataError,
                                psycopg.ProgrammingError, psycopg.InternalError,
                                psycopg.NotSupportedError))


@dataclasses.dataclass(frozen=True)
class _Outcome:
    rows: list[Any]  # SQLAlchemy rows or named tuples: both have attributes and _asdict()
    rowcount: int

    @classmethod
    def of(cls, result: sa.CursorResult[Any]) -> _Outcome:
        rows = list(result.all()) if result.returns_rows else []
        return cls(rows, result.rowcount)

    def first(self) -> Any:
        return self.rows[0] if self.rows else None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)


#: The claim life cycle: every task runs these, so on PostgreSQL they go
#: straight to a driver connection (see :class:`_DriverConnections`).
_HOT_STATEMENTS = frozenset(("acquire", "note_duplicate", "get", "complete", "finish",
                             "release"))
#: The two statements of every task, and release, go one level lower still:
#: to libpq through the driver (see :meth:`ClaimStore._run_libpq`). They
#: return integers only (the token, the attempt).
_LIBPQ_STATEMENTS = frozenset(("acquire", "complete", "finish", "release"))


def _green_threads() -> bool:
    """A green-thread library patched ``select``: the claim statements then
    stay on the driver's cursor, the path green-thread pools are tested on."""
    gevent = sys.modules.get("gevent.monkey")
    eventlet = sys.modules.get("eventlet.patcher")
    try:
        return bool((gevent is not None and gevent.is_module_patched("select"))
                    or (eventlet is not None and eventlet.is_monkey_patched("select")))
    except Exception:  # when in doubt, stay cooperative
        return True


class _Held:
    """A thread's driver connection, with what the libpq path keeps per connection."""

    __slots__ = ("connection", "cursor", "dump_json", "encoding", "libpq", "prepared")

    def __init__(self, connection: Any, cursor: Any) -> None:
        from psycopg.adapt import PyFormat
        from psycopg.types.json import Jsonb

        self.connection = connection
        self.cursor = cursor
        self.encoding: str = connection.info.encoding
        dumper = connection.adapters.get_dumper(Jsonb, PyFormat.TEXT)(Jsonb, connection)
        self.dump_json: Callable[[Any], Any] = dumper.dump
        # Named prepared statements unless the engine turned them off
        # (prepare_threshold=None, as for PgBouncer in transaction mode).
        self.prepared: set[bytes] | None = (
            None if connection.prepare_threshold is None else set())
        self.libpq = not _green_threads()


class _DriverConnections:
    """One autocommit driver connection per thread, for the hot statements.

    Each connection comes from the engine (so its ``connect`` events run, and
    the engine's URL and arguments apply) and is then detached from the pool:
    it is the store's own, kept by the thread that uses it, closed by
    :meth:`ClaimStore.dispose`. A forked child never touches its parent's
    connections; it opens its own. Running a statement costs one round trip
    and no SQLAlchemy work: no pool checkout, no isolation-level switch, no
    compiled-cache lookup, no result object.

    A process keeps at most as many as the engine's pool size; threads beyond
    that (a green-thread pool) go through the engine's pool, which bounds them.
    """

    def __init__(self, engine: sa.Engine, engine_for_process: Callable[[], sa.Engine],
                 *, session_setup: Callable[[Any], None] | None = None) -> None:
        self._engine = engine
        self._session_setup = session_setup
        self._engine_for_process = engine_for_process  # drops an inherited pool after a fork
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[list[Any]] = []  # [pid, connection, thread]
        self._generation = 0
        size = getattr(engine.pool, "size", None)
        self.limit: int = size() if callable(size) else 8
        self.errors: tuple[type[BaseException], ...] = (
            engine.dialect.loaded_dbapi.Error, OSError)

    def get(self) -> _Held | None:
        """This thread's driver connection and its cursor, opened on first use;
        ``None`` when the process holds as many as it may."""
        local = self._local
        held: _Held | None = getattr(local, "held", None)
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
            held = _Held(connection, cursor)
        except BaseException:
            with self._lock:
                self._opened = [e for e in self._opened if e is not slot]
            raise
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

    def discard(self, connection: Any) -> None:
        """Drop a broken connection; the thread opens a new one next time."""
        held = getattr(self._local, "held", None)
        if held is not None and held.connection is connection:
            self._local.held = None
        with self._lock:
            self._opened = [e for e in self._opened if e[1] is not connection]
        with contextlib.suppress(Exception):
            connection.close()

    def is_disconnect(self, exc: Any, connection: Any) -> bool:
        return bool(connection.closed or connection.broken
                    or self._engine.dialect.is_disconnect(exc, connection, None))

    def close_all(self) -> None:
        """Close this process's connections (not an inherited parent's)."""
        with self._lock:
            opened, self._opened = self._opened, []
            self._generation += 1
        for pid, connection, _ in opened:
            if pid == os.getpid() and connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()


class ClaimStore:
    """The claims table in one database, reached through a SQLAlchemy engine."""

    def __init__(self, url: str | None = None, *, engine: sa.Engine | None = None,
                 table: str = sql.DEFAULT_TABLE, create_schema: bool = True) -> None:
        if (url is None) == (engine is None):
            raise errors.ClaimConfigurationError("give the claim store a URL or an engine")
        self.url = url
        self.table = sql.make_table(table)
        self.table_name = table
        self.create_schema_on_start = create_schema
        self._engine = engine if engine is not None else _create_engine(url or "")
        self._owns_engine = engine is None
        self.statements = sql.Statements(self.table, self._engine.dialect.name)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._schema_ready = False
        self._autocommit = self._engine.execution_options(isolation_level="AUTOCOMMIT")
        self._driver = (
            _DriverConnections(self._engine, lambda: self.engine,
                               session_setup=_pg_driver_session_setup if engine is None else None)
            if self.statements.dialect == "postgresql" else None)
        self._row_types: dict[str, Any] = {}

    def __repr__(self) -> str:
        where = self._engine.url.render_as_string(hide_password=True)
        return f"<ClaimStore {self.table_name} at {where}>"

    # --- connections -------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """This process's engine (the inherited pool is dropped after a fork)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._engine.dispose(close=False)
                    self._pid = os.getpid()
        return self._engine

    def connect(self) -> sa.Connection:
        """A new connection in transactional mode, for ``atomic()``."""
        self.engine  # noqa: B018 - fork check
        with translate_errors("connect"):
            return self._engine.connect()

    def _run(self, operation: str, name: str, params: dict[str, Any],
             connection: sa.Connection | None = None) -> _Outcome:
        if connection is None and self._driver is not None and name in _HOT_STATEMENTS:
            # Fork check first: a forked child must never take a connection
            # from the pool it inherited (the parent's sockets).
            self.engine  # noqa: B018
            driver_statement = self.statements.driver(name, self._engine.dialect)
            if driver_statement is not None:
                outcome = self._run_driver(operation, driver_statement, params)
                if outcome is not None:
                    return outcome
        statement = self.statements[name]
        key = params.get("key")
        params = {f"p_{k}": v for k, v in params.items()}
        if connection is not None:
            with translate_errors(operation, key=key):
                return _Outcome.of(connection.execute(statement, params))
        self.engine  # noqa: B018 - fork check
        for attempt in (1, 2):
            try:
                with self._autocommit.connect() as conn:
                    return _Outcome.of(conn.execute(statement, params))
            except sa.exc.DBAPIError as exc:
                # A pooled connection the server closed (restart, terminate):
                # the pool is now invalidated, so one fresh attempt is worth it.
                if attempt == 1 and _retryable(exc):
                    continue
                with translate_errors(operation, key=key):
                    raise
            except (sa.exc.SQLAlchemyError, OSError):
                with translate_errors(operation, key=key):
                    raise
        raise AssertionError("unreachable")

    def _run_driver(self, operation: str, statement: sql.DriverStatement,
                    params: dict[str, Any]) -> _Outcome | None:
        """Run a hot statement on this thread's driver connection, in autocommit;
        ``None`` if this thread has none (see :class:`_DriverConnections`)."""
        driver = self._driver
        assert driver is not None
        values = statement.params(params)
        for attempt in (1, 2):
            with translate_errors(operation, key=params.get("key")):
                held = driver.get()  # a failed connect raises, translated
            if held is None:
                return None
            connection, cursor = held.connection, held.cursor
            try:
                if held.libpq and statement.name in _LIBPQ_STATEMENTS:
                    outcome = self._run_libpq(held, statement, values)
                    if outcome is not None:
                        return outcome
                cursor.execute(statement.sql, values)
                # Every hot statement returns rows (RETURNING or SELECT).
                row_type = self._row_type(statement.name, _cursor_columns, cursor)
                return _Outcome([row_type._make(row) for row in cursor.fetchall()],
                                cursor.rowcount)
            except driver.errors as exc:
                if not driver.is_disconnect(exc, connection):
                    with translate_errors(operation, key=params.get("key")):
                        raise
                driver.discard(connection)
                # A connection the server closed (restart, terminate): one
                # fresh attempt is worth it, as for pooled connections.
                if attempt == 2:
                    with translate_errors(operation, key=params.get("key")):
                        raise
            except BaseException:
                # Interrupted mid-statement (a soft time limit raised by a
                # signal handler): the reply may still be on its way, so this
                # connection is never used again.
                with contextlib.suppress(Exception):
                    from psycopg import pq

                    if connection.info.transaction_status != pq.TransactionStatus.IDLE:
                        driver.discard(connection)
                raise
        raise AssertionError("unreachable")

    def _row_type(self, name: str, columns: Callable[[Any], list[str]], source: Any) -> Any:
        """The named-tuple type of statement ``name``'s rows, made once from the
        first result's column names (both paths give the same names)."""
        row_type = self._row_types.get(name)
        if row_type is None:
            row_type = self._row_types[name] = collections.namedtuple(f"{name}_row",
                                                                      columns(source))
        return row_type

    def _run_libpq(self, held: _Held, statement: sql.DriverStatement,
                   values: tuple[Any, ...]) -> _Outcome | None:
        """Run ``statement`` through libpq (the driver's ``pgconn``), bypassing
        the cursor: a named prepared statement per connection, parameters and
        results in text. This skips the driver's per-call Python work
        (adaptation, cursor state, result loading), most of a claim's CPU in
        the worker. The wait is the driver's own (``Connection.wait``), so a
        signal (a soft time limit, Ctrl-C) interrupts it as it does a cursor.
        ``None``: a parameter needs the driver's adaptation; the caller uses
        the cursor.

        Errors are the driver's own classes, built from the result, so the
        caller handles them exactly as it does the cursor's."""
        from psycopg import OperationalError, generators, pq
        from psycopg import errors as pg_errors

        text = statement.text_values(values, held.encoding, held.dump_json)
        if text is None:
            return None
        connection = held.connection
        pgconn = connection.pgconn
        prepared = held.prepared

        def run(send: Callable[..., None], *args: Any) -> Any:
            send(*args)
            results = connection.wait(generators.execute(pgconn))
            return results[-1]

        name = statement.prepared_name
        for attempt in (1, 2):
            if prepared is None:
                result = run(pgconn.send_query_params, statement.numbered, text)
            else:
                if name not in prepared:
                    result = run(pgconn.send_prepare, name, statement.numbered)
                    if result.status == pq.ExecStatus.COMMAND_OK or (
                            result.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"):
                        prepared.add(name)  # made, or the session already had it
                if name in prepared:
                    result = run(pgconn.send_query_prepared, name, text)
            if result.status == pq.ExecStatus.TUPLES_OK:
                columns = range(result.nfields)
                row_type = self._row_type(statement.name, _result_columns, result)
                rows = [row_type._make([_int_or_none(result.get_value(r, c)) for c in columns])
                        for r in range(result.ntuples)]
                return _Outcome(rows, result.ntuples)
            error = pg_errors.error_from_result(result, encoding=held.encoding)
            if pgconn.status == pq.ConnStatus.BAD:
                raise OperationalError(str(error) or "the connection to the server was lost")
            if (attempt == 1 and prepared is not None
                    and isinstance(error, pg_errors.InvalidSqlStatementName)):
                prepared.discard(name)  # the session lost it (DEALLOCATE, DISCARD ALL)
                continue
            if result.status != pq.ExecStatus.FATAL_ERROR:
                raise pg_errors.ProgrammingError(
                    f"claim statement {statement.name} returned no rows ({result.status.name})")
            raise error
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        """Close this process's pooled connections."""
        if self._driver is not None:
            self._driver.close_all()
        if self._owns_engine:
            self._engine.dispose()

    # --- schema ----------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the table and its indexes if missing (safe to race)."""
        with translate_errors("create_schema"), self.engine.begin() as conn:
            if self.statements.dialect == "postgresql":
                # Serialise concurrent creators; CREATE IF NOT EXISTS alone can
                # still collide in the catalogue.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                             {"name": f"celery_claim:{self.table_name}"})
                if self.table.schema:
                    conn.execute(sa.schema.CreateSchema(self.table.schema, if_not_exists=True))
            self.table.metadata.create_all(conn, tables=[self.table], checkfirst=True)
        self._schema_ready = True

    def ensure_schema(self) -> None:
        """Create the schema once per store when ``create_schema`` is on."""
        if self.create_schema_on_start and not self._schema_ready:
            self.create_schema()

    def drop_schema(self) -> None:
        """Drop the table (tests and ``celery-claim schema --drop``)."""
        with translate_errors("drop_schema"), self.engine.begin() as conn:
            self.table.drop(conn, checkfirst=True)
        self._schema_ready = False

    def ddl(self) -> str:
        """The CREATE statements for this table on this dialect."""
        dialect = self._engine.dialect
        parts = [str(sa.schema.CreateTable(self.table).compile(dialect=dialect)).strip()]
        parts += [str(sa.schema.CreateIndex(ix).compile(dialect=dialect)).strip()
                  for ix in sorted(self.table.indexes, key=lambda ix: ix.name or "")]
        return ";\n\n".join(parts) + ";\n"

    # --- the claim life cycle ------------------------------------------------

    def acquire(self, key: str, *, task_name: str, task_id: str, owner: str,
                payload_digest: str | None, lease_seconds: float,
                retry_failed: bool = True, check_payload: bool = True) -> Acquired | None:
        """Claim ``key`` in one statement. ``None``: someone else holds it."""
        rows = self._run("acquire", "acquire", {
            "key": key, "task_name": task_name, "task_id": task_id, "owner": owner[:255],
            "payload_digest": payload_digest, "lease_seconds": lease_seconds,
            "retry_failed": retry_failed, "check_payload": check_payload,
        }).rows
        return Acquired(token=rows[0].token, attempt=rows[0].attempt) if rows else None

    def note_duplicate(self, key: str) -> ClaimRecord | None:
        """Count a duplicate delivery of ``key`` and read the row it lost to."""
        row = self._run("note_duplicate", "note_duplicate", {"key": key}).first()
        return ClaimRecord.from_row(row) if row is not None else None

    def get(self, key: str) -> ClaimRecord | None:
        """Read one claim."""
        row = self._run("get", "get", {"key": key}).first()
        return ClaimRecord.from_row(row) if row is not None else None

    def complete(self, key: str, token: int, *, result: Any = None, has_result: bool = False,
                 state: str = sql.SUCCEEDED, error: str | None = None,
                 ttl_seconds: float, connection: sa.Connection | None = None) -> bool:
        """Mark the claim finished, fenced by ``token``. ``False``: the claim was lost.

        ``result`` is a :class:`celery_claim.results.Encoded` (what a task
        stores), or a value, stored through kombu's json serializer."""
        params = {"key": key, "token": token, "state": state, "error": error,
                  "ttl_seconds": ttl_seconds}
        if has_result:
            encoded = result if isinstance(result, results.Encoded) else results.encode_json(result)
            params.update(result=encoded.payload, result_content_type=encoded.content_type,
                          result_content_encoding=encoded.content_encoding)
        name = "complete" if has_result else "finish"
        return self._run("complete", name, params, connection).first() is not None

    def release(self, key: str, token: int, *, ttl_seconds: float,
                error: str | None = None) -> bool:
        """Give the claim back, fenced by ``token``. ``False``: it was not ours any more."""
        return self._run("release", "release", {
            "key": key, "token": token, "error": error, "ttl_seconds": ttl_seconds,
        }).first() is not None

    def renew(self, pairs: Iterable[tuple[str, int]], lease_seconds: float) -> set[tuple[str, int]]:
        """Extend many leases at once; returns the (key, token) pairs still held."""
        pairs = list(pairs)
        if not pairs:
            return set()
        rows = self._run("renew", "renew", {"pairs": pairs, "lease_seconds": lease_seconds})
        return {(row.key, row.token) for row in rows.rows}

    # --- operations --------------------------------------------------------------

    def force_release(self, key: str, token: int, *, force: bool = False,
                      ttl_seconds: float = 7 * 24 * 3600.0,
                      reason: str = "released by operator") -> bool:
        """Release a claim by hand, fenced by ``token``; refuses a live lease unless forced."""
        return self._run("force_release", "force_release", {
            "key": key, "token": token, "force": force, "error": reason,
            "ttl_seconds": ttl_seconds,
        }).first() is not None

    def purge(self, batch_size: int = 1000, max_batches: int | None = None) -> int:
        """Delete finished claims past their expiry, in short batches. Returns the count."""
        deleted = batches = 0
        while max_batches is None or batches < max_batches:
            count = self._run("purge", "purge", {"batch_size": batch_size}).rowcount
            deleted += count
            batches += 1
            if count < batch_size:
                break
        return deleted

    def list_claims(self, *, state: str | None = None, task_name: str | None = None,
             stale: bool = False, limit: int = 50, after_key: str = "") -> list[ClaimRecord]:
        """One page of claims ordered by key; pass the last key as ``after_key``."""
        rows = self._run("list", "list", {
            "state": state, "task_name": task_name, "stale": stale, "limit": limit,
            "after_key": after_key,
        })
        return [ClaimRecord.from_row(row) for row in rows.rows]

    def stats(self) -> list[dict[str, Any]]:
        """Claims, duplicates, acquisitions and stale leases by task and state."""
        return [dict(row._mapping) for row in self._run("stats", "stats", {}).rows]


def _cursor_columns(cursor: Any) -> list[str]:
    return [c.name for c in cursor.description]


def _result_columns(result: Any) -> list[str]:
    return [(result.fname(c) or b"").decode() for c in range(result.nfields)]


def _int_or_none(value: bytes | None) -> int | None:
    return None if value is None else int(value)


def _create_engine(url: str) -> sa.Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise errors.ClaimConfigurationError(
            f"claim_database_url is not a valid SQLAlchemy URL: {exc}") from exc
    options: dict[str, Any] = {}
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if "+" not in parsed.drivername:  # plain postgresql:// means psycopg 3 here
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_driver_name() in ("psycopg2", "asyncpg", "pg8000"):
            raise errors.ClaimConfigurationError(
                "use the psycopg 3 driver: postgresql+psycopg://...", url=str(parsed))
        parsed = parsed.set(drivername="postgresql+psycopg")
        options["connect_args"] = {
            "connect_timeout": 5, "application_name": "celery-claim",
            # A partitioned network fails a statement within seconds instead
            # of hanging the task (and the heartbeat) until TCP gives up.
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
            "keepalives_count": 3, "tcp_user_timeout": 10_000,
        }
    elif backend == "sqlite":
        options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        if parsed.database in (None, "", ":memory:"):
            # One shared connection, or every thread would see its own empty
            # database. Good for single-threaded eager tests only.
            options["poolclass"] = sa.pool.StaticPool
    try:
        engine = sa.create_engine(parsed, **options)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise errors.ClaimConfigurationError(
            f"cannot create an engine for claim_database_url: {exc}") from exc
    if backend == "postgresql":
        event.listen(engine, "connect", _pg_session_setup)
    elif backend == "sqlite":
        event.listen(engine, "connect", _sqlite_session_setup)
    return engine


def _pg_session_setup(dbapi_connection: Any, record: Any) -> None:
    # A generic plan cached while the table was empty can be a sequential
    # scan for "WHERE key = $1"; custom plans always use the primary key.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_custom_plan")
    dbapi_connection.commit()


def _pg_driver_session_setup(cursor: Any) -> None:
    # The store's own claim connections run only the hot statements: the
    # acquire (an INSERT, never a scan) and primary-key lookups. With
    # sequential scans off, a generic plan cannot be the empty-table trap
    # above, so these connections keep PostgreSQL's cached generic plans
    # instead of planning every call (a third less database CPU per claim).
    cursor.execute("SET plan_cache_mode = auto; SET enable_seqscan = off")


def _sqlite_session_setup(dbapi_connection: Any, record: Any) -> None:
    # WAL lets readers run beside the single writer; busy_timeout waits for it.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
