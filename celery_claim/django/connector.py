"""The claim store on Django's own database connection.

With ``claim_django_database`` (``CELERY_CLAIM_DJANGO_DATABASE``) set, every
claim statement runs on ``django.db.connections[alias]``: the connection of
the thread that runs it, as every Django query does. The task's thread runs
its acquire, its ``atomic()`` writes and its completion; the heartbeat
thread has its own connection. There is no engine and no pool of our own, so
whatever Django does with connections applies: ``CONN_MAX_AGE``, Celery's
Django fix-up closing them around each task, a prefork child opening its own.

Outside ``atomic()`` each statement is one round trip in Django's autocommit.
``self.claim.atomic()`` enters ``transaction.atomic(using=alias)`` and keeps
it open until the body has returned: the fenced completion then runs inside
it, and the block commits (or, when the claim was lost, rolls back) with
everything the body wrote on that connection: ORM writes, raw cursors and
``transaction.on_commit`` callbacks, which run only after the commit.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction
from sqlalchemy.dialects.postgresql import psycopg as _psycopg_dialect

from celery_claim import errors, sql
from celery_claim.store import ClaimStore, _Outcome

__all__ = ["DjangoClaimStore", "claim_store"]

#: Django's errors that mean the connection (not the statement) failed.
_TRANSIENT = (OperationalError, InterfaceError)
_DIALECT = _psycopg_dialect.dialect()  # type: ignore[no-untyped-call]


class _Rollback(Exception):
    """Passed to an atomic block's ``__exit__`` to roll it back."""


@contextlib.contextmanager
def translate_errors(operation: str, **context: object) -> Iterator[None]:
    """Django's database errors as :class:`ClaimStoreError`, the driver's error as cause."""
    try:
        yield
    except DatabaseError as exc:
        cause = exc.__cause__ or exc
        reason = str(cause).strip().splitlines()
        error = errors.ClaimStoreError(
            f"claim store {operation} failed: {reason[0] if reason else type(exc).__name__}",
            **context)
        error.transient = isinstance(exc, _TRANSIENT)
        raise error from cause


class _Savepoint:
    """A nested ``atomic()`` block: a savepoint inside the claim's transaction."""

    def __init__(self, alias: str) -> None:
        self._block: Any = transaction.atomic(using=alias)
        self._block.__enter__()
        self.is_active = True

    def commit(self) -> None:
        self.is_active = False
        self._block.__exit__(None, None, None)

    def rollback(self) -> None:
        self.is_active = False
        self._block.__exit__(_Rollback, _Rollback(), None)


class DjangoTransaction:
    """What ``self.claim.atomic()`` holds: Django's atomic block, open until completion.

    ``cursor()`` is Django's cursor for raw SQL; ORM writes need nothing, they
    run on the same connection.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._block: Any = None

    @property
    def connection(self) -> Any:
        """Django's connection wrapper for the alias (this thread's)."""
        return connections[self.alias]

    def cursor(self) -> Any:
        return connections[self.alias].cursor()

    def begin(self) -> None:
        # Not durable: inside django.test.TestCase (a transaction per test)
        # or an outer atomic block of the caller's, this is a savepoint.
        block = transaction.atomic(using=self.alias)
        with translate_errors("begin"):
            block.__enter__()
        self._block = block

    def begin_nested(self) -> _Savepoint:
        return _Savepoint(self.alias)

    def commit(self) -> None:
        """Commit (runs the ``on_commit`` callbacks registered inside)."""
        block, self._block = self._block, None
        if block is not None:
            with translate_errors("commit"):
                block.__exit__(None, None, None)

    def rollback(self) -> None:
        block, self._block = self._block, None
        if block is not None:
            block.__exit__(_Rollback, _Rollback(), None)

    def close(self) -> None:
        self.rollback()


class DjangoClaimStore(ClaimStore):
    """The claims table on Django's connection for ``alias``."""

    def __init__(self, alias: str, *, table: str = sql.DEFAULT_TABLE) -> None:
        if alias not in connections.settings:
            raise errors.ClaimConfigurationError(
                "claim_django_database must name a DATABASES alias",
                claim_django_database=alias, known=sorted(connections.settings))
        self.alias = alias
        self.url = None
        self.table = sql.make_table(table)
        self.table_name = table
        self.create_schema_on_start = True
        self._schema_ready = False
        vendor = connections[alias].vendor
        if vendor != "postgresql":
            raise errors.ClaimConfigurationError(
                "claim_django_database must be a PostgreSQL database (Django's postgresql "
                "backend, psycopg 3 or psycopg2)", claim_django_database=alias, vendor=vendor)
        self.statements = sql.Statements(self.table, "postgresql")
        self._row_types: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ClaimStore {self.table_name} on Django's database {self.alias!r}>"

    # --- connections -------------------------------------------------------------

    @property
    def engine(self) -> Any:
        raise errors.ClaimConfigurationError(
            "a claim store on Django's connection has no SQLAlchemy engine",
            claim_django_database=self.alias)

    def connect(self) -> Any:
        """The claim's transaction for ``atomic()``: Django's atomic block on the alias."""
        return DjangoTransaction(self.alias)

    def dispose(self) -> None:
        """Nothing to close: the connections are Django's."""

    def _run(self, operation: str, name: str, params: dict[str, Any],
             connection: Any = None) -> _Outcome:
        text, values = self._compiled(name, params)
        django_connection = connections[self.alias]
        for attempt in (1, 2):
            try:
                with translate_errors(operation, key=params.get("key")), \
                        django_connection.cursor() as cursor:
                    cursor.execute(text, values)
                    if cursor.description is None:
                        return _Outcome([], cursor.rowcount)
                    row_type = self._django_row_type(name, cursor)
                    return _Outcome([row_type._make(r) for r in cursor.fetchall()],
                                    cursor.rowcount)
            except errors.ClaimStoreError as exc:
                if not exc.transient or django_connection.in_atomic_block or attempt == 2:
                    raise
                # The server or the network closed the connection: Django
                # reconnects on the next query once this one is closed.
                with contextlib.suppress(Exception):
                    django_connection.close()
        raise AssertionError("unreachable")

    def _django_row_type(self, name: str, cursor: Any) -> Any:
        """Named tuples that also offer SQLAlchemy's ``Row._mapping``."""
        row_type = self._row_types.get(name)
        if row_type is None:
            base = collections.namedtuple(f"{name}_row", _columns(cursor))  # type: ignore[misc]
            row_type = self._row_types[name] = type(
                base.__name__, (base,), {"__slots__": (), "_mapping": property(base._asdict)})
        return row_type

    def _compiled(self, name: str, params: dict[str, Any]) -> tuple[str, Any]:
        statement = self.statements.driver(name, _DIALECT)
        if statement is None:  # an expanding IN (renew): compiled per call
            bound = self.statements[name].params(  # type: ignore[attr-defined]
                **{f"p_{k}": v for k, v in params.items()})
            compiled = bound.compile(dialect=_DIALECT,
                                     compile_kwargs={"render_postcompile": True})
            return str(compiled.string), dict(compiled.params)
        # Bytes (the encoded result) go as they are: both drivers send bytea.
        values = [params[key] if isinstance(params[key], bytes) or key not in
                  statement.processors else statement.processors[key](params[key])
                  for key in statement.order]
        return statement.sql, tuple(values)

    # --- schema (Django's migrations own it) -----------------------------------

    def create_schema(self) -> None:
        """Check that the table exists and is current: ``manage.py migrate`` creates it."""
        from celery_claim import upgrade

        connection = connections[self.alias]
        with translate_errors("create_schema"), connection.cursor() as cursor:
            tables = connection.introspection.table_names(cursor)
            columns = (
                {c.name for c in connection.introspection.get_table_description(
                    cursor, self.table_name)} if self.table_name in tables else set())
        if not columns:
            raise errors.ClaimConfigurationError(
                f"the claims table {self.table_name} does not exist in Django's database "
                f"{self.alias!r}: run `manage.py migrate celery_claim`")
        missing = set(sql.RESULT_COLUMNS) - columns
        if missing:
            raise errors.ClaimConfigurationError(
                f"the claims table {self.table_name} was created by an earlier release of "
                "celery-claim: stop its workers, then run `celery-claim schema --upgrade` "
                f"(missing: {', '.join(sorted(missing))})")
        self._schema_ready = True
        with upgrade._checked_lock:
            upgrade._checked.add(self)

    def drop_schema(self) -> None:
        raise errors.ClaimConfigurationError(
            "the claims table belongs to Django's migrations: "
            "`manage.py migrate celery_claim zero` drops it")

    def ddl(self) -> str:
        return ClaimStore("postgresql+psycopg://", table=self.table_name).ddl()


def _columns(cursor: Any) -> list[str]:
    return [column[0] for column in cursor.description]


_stores: dict[tuple[str, str], DjangoClaimStore] = {}
_stores_lock = threading.Lock()


def claim_store(alias: str | None = None, table: str | None = None) -> DjangoClaimStore:
    """The process's claim store on Django's database ``alias`` (default: the app's)."""
    from celery_claim.django import conf

    alias = alias or conf.database_alias()
    table = table or conf.table_name()
    with _stores_lock:
        store = _stores.get((alias, table))
        if store is None:
            store = _stores[(alias, table)] = DjangoClaimStore(alias, table=table)
        return store
