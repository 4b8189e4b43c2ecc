"""A connector written from ``celery_claim/connectors/base.py`` alone: plain
psycopg cursors and the statements' driver SQL, with no SQLAlchemy
execution. Every store operation, the transaction ``atomic()`` holds, and
the error classes work through it, against real PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from celery_claim import ClaimStore, ClaimStoreRefused, ClaimStoreUnavailable, sql
from celery_claim.claim import Claim
from celery_claim.connectors import Connector, Result, Transaction, cursor_result
from celery_claim.statements import Statement, Statements, driver_dialect

pytestmark = pytest.mark.postgres

DIALECT = driver_dialect("psycopg")


class CursorConnector(Connector):
    """One autocommit psycopg connection per thread; transactions on a new one."""

    dialect = "postgresql"
    errors = (psycopg.Error, OSError)

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self.conninfo = conninfo
        self.local = threading.local()

    def _own_transaction(self) -> bool:
        return True  # every statement in autocommit

    def _connection(self) -> psycopg.Connection[Any]:
        connection = getattr(self.local, "connection", None)
        if connection is None or connection.closed:
            connection = self.local.connection = psycopg.connect(self.conninfo, autocommit=True)
        return connection

    def _execute(self, statement: Statement, params: dict[str, Any]) -> Result:
        compiled = statement.driver(DIALECT)
        with self._connection().cursor() as cursor:
            cursor.execute(compiled.sql, compiled.params(params))
            return cursor_result(statement, cursor)

    def _begin(self) -> Transaction:
        return CursorTransaction(self, psycopg.connect(self.conninfo))

    def _create_schema(self, statements: Statements) -> None:
        for ddl in sql.ddl(statements.table, "postgresql").split(";\n\n"):
            if ddl.strip():
                self._connection().execute(ddl)  # type: ignore[call-overload]

    def _drop_schema(self, statements: Statements) -> None:
        self._connection().execute(
            f"DROP TABLE IF EXISTS {statements.table.fullname}")  # type: ignore[call-overload]

    def _refused(self, exc: BaseException) -> bool:
        return isinstance(exc, (psycopg.IntegrityError, psycopg.DataError,
                                psycopg.ProgrammingError))

    def _close(self) -> None:
        connection = getattr(self.local, "connection", None)
        if connection is not None:
            connection.close()


class CursorTransaction(Transaction):
    def __init__(self, connector: CursorConnector, connection: psycopg.Connection[Any]) -> None:
        super().__init__(connector)
        self.connection = connection  # handle stays None: the body writes its own way

    def _execute(self, statement: Statement, params: dict[str, Any]) -> Result:
        compiled = statement.driver(DIALECT)
        with self.connection.cursor() as cursor:
            cursor.execute(compiled.sql, compiled.params(params))
            return cursor_result(statement, cursor)

    def _savepoint(self) -> contextlib.AbstractContextManager[Any]:
        return self.connection.transaction()

    def _commit(self) -> None:
        self.connection.commit()
        self.connection.close()

    def _rollback(self) -> None:
        if not self.connection.closed:
            self.connection.rollback()
            self.connection.close()


@pytest.fixture
def conninfo(database_url: str) -> str:
    return sa.engine.make_url(database_url).set(drivername="postgresql").render_as_string(
        hide_password=False)


@pytest.fixture
def store(conninfo: str, table_name: str) -> Iterator[ClaimStore]:
    store = ClaimStore(connector=CursorConnector(conninfo), table=table_name)
    store.create_schema()
    yield store
    store.drop_schema()
    store.dispose()


def _acquire(store: ClaimStore, key: str, task_id: str = "t1") -> Any:
    return store.acquire(key, task_name="t", task_id=task_id, owner="w", payload_digest="d",
                         lease_seconds=30)


def test_every_operation_runs_on_plain_cursors(store: ClaimStore) -> None:
    first = _acquire(store, "a")
    assert (first.token, first.attempt) == (1, 1)
    assert _acquire(store, "a", task_id="t2") is None
    record = store.note_duplicate("a")
    assert record is not None
    assert (record.state, record.duplicates, record.is_live) == ("running", 1, True)
    assert store.renew([("a", 1), ("a", 2), ("missing", 1)], 30) == {("a", 1)}
    assert store.release("a", 1, ttl_seconds=60)
    second = _acquire(store, "a")
    assert store.complete("a", second.token, result={"x": [1, "é"]}, has_result=True,
                          ttl_seconds=0)
    assert not store.complete("a", 1, ttl_seconds=60)  # fenced
    record = store.get("a")
    assert record is not None
    assert (record.state, record.token, record.result, record.has_result) == (
        "succeeded", 2, {"x": [1, "é"]}, True)
    live = _acquire(store, "b")
    assert not store.force_release("b", live.token)
    assert store.force_release("b", live.token, force=True)
    assert [r.key for r in store.list_claims()] == ["a", "b"]
    assert {(row["state"], row["claims"]) for row in store.stats()} == {
        ("released", 1), ("succeeded", 1)}
    assert store.purge() == 1  # "a" expired at once (ttl 0)
    assert store.get("a") is None


@pytest.mark.parametrize("lost", [False, True])
def test_atomic_commits_or_rolls_back_with_the_completion(store: ClaimStore, lost: bool) -> None:
    won = _acquire(store, "k")
    claim = Claim(store=store, key="k", token=won.token, attempt=1, task_id="t1",
                  lease_seconds=30)
    with claim.atomic() as handle:
        assert handle is None  # this connector's body writes through its own library
        with claim.atomic():  # nested: a savepoint
            pass
    assert claim.connection is not None
    token = won.token + 1 if lost else won.token
    done = store.complete("k", token, ttl_seconds=60, connection=claim.connection)
    assert done is not lost
    if done:
        claim.commit()
    else:
        claim.rollback()
    record = store.get("k")
    assert record is not None
    assert record.state == ("running" if lost else "succeeded")


def test_errors_are_refused_or_unavailable(store: ClaimStore, table_name: str) -> None:
    # A NUL character: PostgreSQL's text refuses it (not worth a retry).
    with pytest.raises(ClaimStoreRefused, match="NUL") as refused:
        _acquire(store, "k\x00")
    assert isinstance(refused.value.__cause__, psycopg.DataError)
    gone = ClaimStore(connector=CursorConnector("host=127.0.0.1 port=9 connect_timeout=2"),
                      table=table_name)
    with pytest.raises(ClaimStoreUnavailable, match="claim store acquire failed") as caught:
        _acquire(gone, "k")
    assert caught.value.transient
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


def test_a_table_without_its_settle_function_claims_with_the_previous_statement(
        store: ClaimStore, caplog: pytest.LogCaptureFixture) -> None:
    # Another connector's table (Django's before its migration 0002): the
    # startup check finds no settle function, says so, and the claims run
    # the statement that needs none, instead of failing.
    from celery_claim import sql_settle, upgrade
    from celery_claim.store import Acquired, Lost

    def claim(key: str, task_id: str = "t1") -> Any:
        return store.claim(key, task_name="t", task_id=task_id, owner="w",
                           payload_digest="d", lease_seconds=30)

    store.connector._connection().execute(  # type: ignore[attr-defined]
        sql_settle.drop_settle_function(store.table))
    with pytest.raises(ClaimStoreRefused, match="does not exist"):
        claim("before")  # the control: the claim statement needs it
    with caplog.at_level("WARNING", logger="celery_claim"):
        upgrade.check_current(store)
    assert "has no settle function" in caplog.text
    assert store.claim_statement == "claim_conflict"
    assert claim("k") == Acquired(token=1, attempt=1)
    lost = claim("k", task_id="t2")
    assert isinstance(lost, Lost)
    assert (lost.record.token, lost.record.duplicates, lost.mismatch) == (1, 1, False)
