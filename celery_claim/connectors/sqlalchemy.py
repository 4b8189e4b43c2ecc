"""The SQLAlchemy connector: PostgreSQL through psycopg 3, and SQLite.

Statements run through a SQLAlchemy engine: its pool, in autocommit, and in
a transactional connection for ``atomic()`` (which the body gets as its
handle). On PostgreSQL the claim life cycle's statements (acquire,
duplicate, get, completions, release) skip SQLAlchemy and run on the
process's own psycopg connection (:mod:`celery_claim.connectors._psycopg`),
which its threads take in turn.

Engines belong to a process: after a fork the child drops the pool it
inherited (``dispose(close=False)``) and opens its own connections, so
prefork children never share a socket with their parent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from celery_claim import errors, sql
from celery_claim.connectors.base import Connector, Result, Transaction
from celery_claim.statements import Statement, Statements

__all__ = ["SQLAlchemyConnector", "create_engine"]

#: The claim life cycle: every task runs these, so on PostgreSQL they go
#: straight to the process's driver connection.
HOT_STATEMENTS = frozenset(("acquire", "claim", "claim_conflict", "claim_many", "lost_to",
                            "note_duplicate", "get", "complete", "complete_with_result",
                            "complete_many", "release"))

try:  # the driver's own errors, raised by the process's driver connection
    from psycopg import Error as _PsycopgError

    _DRIVER_ERRORS: tuple[type[BaseException], ...] = (_PsycopgError,)
except ImportError:  # pragma: no cover - SQLite-only installs
    _DRIVER_ERRORS = ()


class SQLAlchemyConnector(Connector):
    """The claim store on a SQLAlchemy engine (a URL, or an engine of yours)."""

    errors = (sa.exc.SQLAlchemyError, OSError, *_DRIVER_ERRORS)

    def __init__(self, url: str | None = None, *, engine: sa.Engine | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        if (url is None) == (engine is None):
            raise errors.ClaimConfigurationError("give the claim store a URL or an engine")
        self._engine = engine if engine is not None else create_engine(url or "")
        self._owns_engine = engine is None
        self.dialect = self._engine.dialect.name
        #: SQLite only: the database clock, Unix seconds (tests move it).
        self.clock = clock
        self._autocommit = self._engine.execution_options(isolation_level="AUTOCOMMIT")
        self._driver = None
        if self.dialect == "postgresql" and self._engine.dialect.driver == "psycopg":
            from celery_claim.connectors._psycopg import ProcessConnection

            self._driver = ProcessConnection(
                self._engine, lambda: self.engine,
                session_setup=_pg_driver_session_setup if engine is None else None)
            self.coalesces = True
        elif self.dialect == "sqlite":
            event.listen(self._engine, "checkout", self._install_clock)

    def __repr__(self) -> str:
        return f"<SQLAlchemyConnector {self.describe()}>"

    def describe(self) -> str:
        """The engine's URL, without its password."""
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def engine(self) -> sa.Engine:
        """This process's engine (the inherited pool is dropped after a fork)."""
        self._check_fork()
        return self._engine

    def connect(self) -> sa.Connection:
        """A new connection in transactional mode."""
        with self.translate("connect"):
            return self.engine.connect()

    def join(self, connection: sa.Connection) -> Transaction:
        """A transaction already open on ``connection`` (its owner commits it)."""
        return _SQLAlchemyTransaction(self, connection, owned=False)

    # --- hooks -------------------------------------------------------------------

    def _own_transaction(self) -> bool:
        return True  # the process connection and the engine's, both in autocommit

    def _execute(self, statement: Statement, params: dict[str, Any]) -> Result:
        if self._driver is not None and statement.name in HOT_STATEMENTS:
            return self._driver.execute(statement, params)
        with self._autocommit.connect() as conn:
            return _result(conn.execute(statement.executable, _bound(params)))

    def _begin(self) -> Transaction:
        connection = self.engine.connect()
        try:
            connection.begin()
        except BaseException:
            connection.close()
            raise
        return _SQLAlchemyTransaction(self, connection, owned=True)

    def _create_schema(self, statements: Statements) -> None:
        table = statements.table
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Serialise concurrent creators; CREATE IF NOT EXISTS alone can
                # still collide in the catalogue.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                             {"name": f"celery_claim:{table.fullname}"})
                if table.schema:
                    conn.execute(sa.schema.CreateSchema(table.schema, if_not_exists=True))
            table.metadata.create_all(conn, tables=[table], checkfirst=True)

    def _drop_schema(self, statements: Statements) -> None:
        with self.engine.begin() as conn:
            statements.table.drop(conn, checkfirst=True)

    def _refused(self, exc: BaseException) -> bool:
        if isinstance(exc, sa.exc.DBAPIError):
            if exc.connection_invalidated:
                return False
            exc = exc.orig or exc
        refused: tuple[type[BaseException], ...] = (
            sa.exc.IntegrityError, sa.exc.DataError, sa.exc.ProgrammingError,
            sa.exc.InternalError, sa.exc.NotSupportedError)
        try:
            import psycopg
        except ImportError:  # pragma: no cover - SQLite-only installs
            return isinstance(exc, refused)
        return isinstance(exc, (*refused, psycopg.IntegrityError, psycopg.DataError,
                                psycopg.ProgrammingError, psycopg.InternalError,
                                psycopg.NotSupportedError))

    def _reconnect(self, exc: BaseException) -> bool:
        # A pooled connection the server closed (restart, terminate): the
        # pool is now invalidated, so one fresh attempt is worth it.
        if isinstance(exc, sa.exc.DBAPIError):
            return bool(exc.connection_invalidated)
        return self._driver is not None and self._driver.lost(exc)

    def _after_fork(self) -> None:
        self._engine.dispose(close=False)  # the driver connection checks the pid

    def _close(self) -> None:
        if self._driver is not None:
            self._driver.close_all()
        if self._owns_engine:
            self._engine.dispose()

    def _install_clock(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        # On every checkout, cheaply: the connection's clock is this connector's.
        if record.info.get("celery_claim_clock") is not self:
            sql.install_sqlite_clock(dbapi_connection, lambda: self.clock())
            record.info["celery_claim_clock"] = self


class _SQLAlchemyTransaction(Transaction):
    def __init__(self, connector: SQLAlchemyConnector, connection: sa.Connection,
                 *, owned: bool) -> None:
        super().__init__(connector)
        self.handle: sa.Connection | None = connection
        self._owned = owned

    def _execute(self, statement: Statement, params: dict[str, Any]) -> Result:
        assert self.handle is not None, "the transaction has ended"
        return _result(self.handle.execute(statement.executable, _bound(params)))

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        assert self.handle is not None, "the transaction has ended"
        savepoint = self.handle.begin_nested()
        try:
            yield
        except BaseException:
            if savepoint.is_active:
                savepoint.rollback()
            raise
        if savepoint.is_active:
            savepoint.commit()

    def _commit(self) -> None:
        if self.handle is not None and self._owned:
            self.handle.commit()
            self._release()

    def _rollback(self) -> None:
        if self.handle is not None and self._owned:
            try:
                self.handle.rollback()
            finally:
                self._release()

    def _broken(self) -> bool:
        connection = self.handle
        if connection is None:
            return False
        if connection.invalidated or connection.closed:
            return True
        try:
            dbapi_connection = connection.connection.dbapi_connection
        except sa.exc.SQLAlchemyError:
            return True
        return bool(getattr(dbapi_connection, "closed", False)
                    or getattr(dbapi_connection, "broken", False))

    def _release(self) -> None:
        connection, self.handle = self.handle, None
        if connection is not None:
            connection.close()


def _bound(params: dict[str, Any]) -> dict[str, Any]:
    # Parameters are named p_<name> in the SQLAlchemy statements.
    return {f"p_{k}": v for k, v in params.items()}


def _result(result: sa.CursorResult[Any]) -> Result:
    return Result(list(result.all()) if result.returns_rows else [], result.rowcount)


# --- engines -------------------------------------------------------------------

def create_engine(url: str) -> sa.Engine:
    """The engine for ``claim_database_url``: psycopg 3 for PostgreSQL, or SQLite."""
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
    # The process's claim connection runs only the hot statements: the
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

