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

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from django.db import (
    DataError,
    IntegrityError,
    InternalError,
    NotSupportedError,
    ProgrammingError,
    connections,
    transaction,
)
from django.db import Error as DjangoError

from celery_claim import errors, sql
from celery_claim.connectors.base import Connector, Result, Transaction, cursor_result
from celery_claim.statements import Statement, Statements, driver_dialect
from celery_claim.store import ClaimStore

__all__ = ["DjangoConnector", "claim_store"]

#: Django's errors that mean the database refused the statement itself.
_REFUSED = (IntegrityError, DataError, ProgrammingError, InternalError, NotSupportedError)


class _Rollback(Exception):
    """Passed to an atomic block's ``__exit__`` to roll it back."""


class DjangoConnector(Connector):
    """Runs the claim statements on ``django.db.connections[alias]``."""

    dialect = "postgresql"
    errors = (DjangoError, OSError)

    def __init__(self, alias: str = "default") -> None:
        super().__init__()
        if alias not in connections.settings:
            raise errors.ClaimConfigurationError(
                "claim_django_database must name a DATABASES alias",
                claim_django_database=alias, known=sorted(connections.settings))
        vendor = connections[alias].vendor  # a class attribute: nothing connects
        if vendor != "postgresql":
            raise errors.ClaimConfigurationError(
                "claim_django_database must be a PostgreSQL database (Django's postgresql "
                "backend, on psycopg 3 or psycopg2)", claim_django_database=alias, vendor=vendor)
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        self.alias = alias
        self.driver = driver_dialect("psycopg" if is_psycopg3 else "psycopg2")

    def __repr__(self) -> str:
        return f"<DjangoConnector {self.alias!r}>"

    def describe(self) -> str:
        return f"Django's database {self.alias!r}"

    @property
    def connection(self) -> Any:
        """This thread's Django connection for the alias."""
        return connections[self.alias]

    def _execute(self, statement: Statement, params: dict[str, Any]) -> Result:
        return _run(self.connection, self.driver, statement, params)

    def _own_transaction(self) -> bool:
        # Only in Django's autocommit, outside any atomic block, with nothing
        # the caller began on the driver's connection (a raw BEGIN): a claim
        # called in a view under ATOMIC_REQUESTS, or in a TestCase, runs
        # inside the caller's transaction. Decided after connecting.
        connection = self.connection
        connection.ensure_connection()
        return bool(connection.get_autocommit() and not connection.in_atomic_block
                    and int(connection.connection.info.transaction_status) == 0)  # idle

    def _begin(self) -> Transaction:
        return DjangoTransaction(self)

    def _refused(self, exc: BaseException) -> bool:
        return isinstance(exc, _REFUSED)

    def _reconnect(self, exc: BaseException) -> bool:
        # A connection the server or the network closed: outside a
        # transaction, Django opens a new one on the next query once this
        # one is closed. Inside one, the transaction is gone: no retry.
        connection = self.connection
        if self._refused(exc) or connection.in_atomic_block:
            return False
        with contextlib.suppress(Exception):
            connection.close()
        return True

    def _create_schema(self, statements: Statements) -> None:
        """Check that the table exists and is current: ``manage.py migrate`` creates it."""
        connection = self.connection
        name = statements.table.name
        with connection.cursor() as cursor:
            tables = connection.introspection.table_names(cursor)
            columns = ({c.name for c in connection.introspection.get_table_description(
                cursor, name)} if name in tables else set())
        if not columns:
            raise errors.ClaimConfigurationError(
                f"the claims table {name} does not exist in Django's database "
                f"{self.alias!r}: run `manage.py migrate celery_claim`")
        missing = set(sql.RESULT_COLUMNS) - columns
        if missing:
            raise errors.ClaimConfigurationError(
                f"the claims table {name} was created by an earlier release of celery-claim: "
                "stop its workers, then run `celery-claim schema --upgrade` "
                f"(missing: {', '.join(sorted(missing))})")

    def _drop_schema(self, statements: Statements) -> None:
        raise errors.ClaimConfigurationError(
            "the claims table belongs to Django's migrations: "
            "`manage.py migrate celery_claim zero` drops it")

    def _after_fork(self) -> None:
        # Celery's Django fix-up drops the connections a prefork child
        # inherited (without closing the parent's sockets) at
        # worker_process_init, before any task runs; Django opens new ones.
        pass


def _run(connection: Any, driver: Any, statement: Statement, params: dict[str, Any]) -> Result:
    compiled = statement.driver(driver)
    with connection.cursor() as cursor:
        cursor.execute(compiled.sql, compiled.params(params))
        return cursor_result(statement, cursor)


class DjangoTransaction(Transaction):
    """What ``self.claim.atomic()`` holds: ``transaction.atomic(using=alias)``,
    entered at the first ``atomic()`` and left when the claim completes."""

    def __init__(self, connector: DjangoConnector) -> None:
        super().__init__(connector)
        self.alias = connector.alias
        #: ``with self.claim.atomic() as connection:``: Django's connection for
        #: the alias (``connection.cursor()`` for raw SQL; the ORM needs nothing).
        self.handle = connections[self.alias]
        self.driver = connector.driver
        # Not durable: inside django.test.TestCase (a transaction per test)
        # or the caller's own atomic block, this is a savepoint.
        self._block: Any = transaction.atomic(using=self.alias)
        self._block.__enter__()

    def _execute(self, statement: Statement, params: dict[str, Any]) -> Result:
        return _run(connections[self.alias], self.driver, statement, params)

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        with transaction.atomic(using=self.alias):
            yield

    def _commit(self) -> None:
        """Leave the block: Django commits, then runs the ``on_commit`` callbacks."""
        block, self._block = self._block, None
        if block is not None:
            block.__exit__(None, None, None)

    def _rollback(self) -> None:
        block, self._block = self._block, None
        if block is not None:
            block.__exit__(_Rollback, _Rollback(), None)

    def _broken(self) -> bool:
        # Django's wrapper around the driver connection: gone, or closed or
        # broken under it (the server restarted, the network failed).
        raw = self.handle.connection
        return raw is None or bool(getattr(raw, "closed", False)
                                   or getattr(raw, "broken", False))


_stores: dict[tuple[str, str], ClaimStore] = {}
_stores_lock = threading.Lock()


def claim_store(alias: str | None = None, table: str | None = None) -> ClaimStore:
    """The process's claim store on Django's database ``alias`` (default: the app's)."""
    from django.apps import apps

    from celery_claim.django import conf

    if not apps.ready and not apps.loading:  # `celery -A proj claim ...`: Django is not set up
        import django

        django.setup()
    alias = alias or conf.database_alias()
    table = table or conf.table_name()
    with _stores_lock:
        store = _stores.get((alias, table))
        if store is None:
            store = _stores[(alias, table)] = ClaimStore(
                connector=DjangoConnector(alias), table=table)
        return store
