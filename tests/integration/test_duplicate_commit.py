"""A transaction whose only write is a duplicate's count commits without
waiting for its WAL flush; every other transaction keeps synchronous commit.

Each statement runs here inside an explicit transaction, where the setting
it leaves for the rest of that transaction can be read back with ``SHOW``
(in the store it is the statement's own transaction, and the setting ends
with it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.rows import dict_row

from celery_claim import ClaimStore
from celery_claim.statements import driver_dialect
from celery_claim.store import Acquired, Lost

pytestmark = pytest.mark.postgres

DIALECT = driver_dialect("psycopg")
CLAIM = {"task_name": "t.charge", "task_id": "id-1", "owner": "w/1",
         "payload_digest": "d" * 64, "lease_seconds": 30.0, "retry_failed": False,
         "check_payload": True, "ttl_seconds": 3600.0}


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    dsn = sa.engine.make_url(database_url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    with psycopg.connect(dsn) as connection:  # not autocommit: each test's own transaction
        yield connection


@pytest.fixture
def synchronous(conn: psycopg.Connection[Any]) -> str:
    """The session's setting, ``on`` whatever the server's default (a
    throwaway test server may run with it off): what a claim keeps."""
    conn.execute("SET synchronous_commit = on")
    conn.commit()
    return "on"


@pytest.fixture(params=["claim", "claim_conflict"])
def claim(request: pytest.FixtureRequest) -> str:
    """The claim statement: with the settle function, and the one without it."""
    return str(request.param)


def _won(row: dict[str, Any]) -> tuple[bool, int]:
    """(won, token) from a row of either claim statement."""
    if "settled" in row:
        if row["settled"] is None:  # inserted
            return True, row["token"]
        answer = json.loads(row["settled"])
        return answer[0], answer[1]
    return row["won"], row["token"]


def _run(store: ClaimStore, conn: psycopg.Connection[Any], name: str,
         **params: Any) -> tuple[list[Any], str]:
    """Run statement ``name`` in a transaction: (its rows as dicts, synchronous_commit after it)."""
    compiled = store.statements.driver(name, DIALECT)
    try:
        with conn.cursor(row_factory=dict_row) as cursor:  # type: ignore[arg-type]
            cursor.execute(compiled.sql, compiled.params(params))  # type: ignore[arg-type]
            rows = cursor.fetchall()
            cursor.execute("SHOW synchronous_commit")
            setting = (cursor.fetchone() or {}).get("synchronous_commit", "?")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return rows, setting


def _finish(pg_store: ClaimStore, key: str, token: int, state: str = "succeeded") -> None:
    assert pg_store.complete(key, token, result=5, has_result=True, state=state,
                             ttl_seconds=3600.0)


def _take_overable(pg_store: ClaimStore, conn: psycopg.Connection[Any], how: str) -> None:
    """Leave row ``k`` in a state the next acquire takes over."""
    won = pg_store.acquire("k", **CLAIM)
    assert won is not None
    table = pg_store.table.fullname
    if how == "released":
        assert pg_store.release("k", won.token, ttl_seconds=3600.0)
    elif how == "failed":
        _finish(pg_store, "k", won.token, state="failed")
    elif how == "lease lapsed":
        conn.execute(f"UPDATE {table} SET lease_expires_at = now() - interval '1 second'")  # type: ignore[call-overload]
    else:  # expired
        _finish(pg_store, "k", won.token)
        conn.execute(f"UPDATE {table} SET expires_at = now() - interval '1 second'")  # type: ignore[call-overload]
    conn.commit()


@pytest.mark.parametrize("own_transaction", [True, False])
def test_a_first_delivery_commits_synchronously(
        pg_store: ClaimStore, conn: psycopg.Connection[Any], synchronous: str,
        own_transaction: bool, claim: str) -> None:
    (row,), setting = _run(pg_store, conn, claim, key="k", own_transaction=own_transaction,
                           **CLAIM)
    assert (_won(row), setting) == ((True, 1), synchronous)  # won a fresh key


@pytest.mark.parametrize("how", ["released", "failed", "lease lapsed", "expired"])
def test_a_take_over_commits_synchronously(
        pg_store: ClaimStore, conn: psycopg.Connection[Any], synchronous: str, how: str,
        claim: str) -> None:
    _take_overable(pg_store, conn, how)
    (row,), setting = _run(pg_store, conn, claim, key="k", own_transaction=True,
                           **{**CLAIM, "retry_failed": True})
    # Won again, by taking over the existing row: the duplicate's count,
    # which reads that row too, did not run.
    assert (_won(row), setting) == ((True, 2), synchronous)
    assert pg_store.get("k").duplicates == 0  # type: ignore[union-attr]


def test_a_duplicate_commits_without_waiting_and_is_counted_at_once(
        pg_store: ClaimStore, conn: psycopg.Connection[Any], synchronous: str,
        claim: str) -> None:
    won = pg_store.acquire("k", **CLAIM)
    assert won is not None
    rows, setting = _run(pg_store, conn, claim, key="k", own_transaction=True, **CLAIM)
    assert (_won(rows[0])[0], setting) == (False, "off")  # lost to a running claim
    _finish(pg_store, "k", won.token)
    rows, setting = _run(pg_store, conn, claim, key="k", own_transaction=True, **CLAIM)
    assert (_won(rows[0])[0], setting) == (False, "off")  # a duplicate of a finished claim
    record = pg_store.get("k")
    assert record is not None
    assert (record.state, record.duplicates, record.result) == ("succeeded", 2, 5)


def test_inside_a_callers_transaction_a_duplicate_leaves_it_synchronous(
        pg_store: ClaimStore, conn: psycopg.Connection[Any], synchronous: str,
        claim: str) -> None:
    won = pg_store.acquire("k", **CLAIM)
    assert won is not None
    _finish(pg_store, "k", won.token)
    rows, setting = _run(pg_store, conn, claim, key="k", own_transaction=False, **CLAIM)
    assert (_won(rows[0])[0], setting) == (False, synchronous)
    assert pg_store.get("k").duplicates == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("own_transaction", [True, False])
def test_the_duplicates_second_statements_follow_the_same_rule(
        pg_store: ClaimStore, conn: psycopg.Connection[Any], synchronous: str,
        own_transaction: bool) -> None:
    won = pg_store.acquire("k", **CLAIM)
    assert won is not None
    _finish(pg_store, "k", won.token)
    expected = "off" if own_transaction else synchronous
    _, setting = _run(pg_store, conn, "lost_to", key="k", task_id="id-2",
                      payload_digest="d" * 64, retry_failed=False, check_payload=True,
                      own_transaction=own_transaction)
    assert setting == expected
    _, setting = _run(pg_store, conn, "note_duplicate", key="k",
                      own_transaction=own_transaction)
    assert setting == expected
    assert pg_store.get("k").duplicates == 2  # type: ignore[union-attr]


def test_the_store_answers_a_duplicate_from_the_one_statement(pg_store: ClaimStore) -> None:
    assert pg_store.connector._own_transaction()  # autocommit statements
    won = pg_store.claim("k", **CLAIM)
    assert isinstance(won, Acquired)
    _finish(pg_store, "k", won.token)
    lost = pg_store.claim("k", **CLAIM)
    assert isinstance(lost, Lost)
    assert (lost.record.state, lost.record.result) == ("succeeded", 5)
    assert pg_store.get("k").duplicates == 1  # type: ignore[union-attr]


def _spy(monkeypatch: pytest.MonkeyPatch, connector: Any) -> dict[str, Any]:
    """What each statement the connector's hook runs was told, by name."""
    sent: dict[str, Any] = {}
    execute = connector._execute

    def spy(statement: Any, params: dict[str, Any]) -> Any:
        sent[statement.name] = params.get("own_transaction", "absent")
        return execute(statement, params)

    monkeypatch.setattr(connector, "_execute", spy)
    return sent


def test_the_connector_tells_the_duplicates_statements_they_are_their_own(
        pg_store: ClaimStore, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _spy(monkeypatch, pg_store.connector)
    won = pg_store.claim("k", **CLAIM)
    assert isinstance(won, Acquired)
    pg_store.lost_to("k", task_id="id-2", payload_digest="d" * 64)
    pg_store.note_duplicate("k")
    _finish(pg_store, "k", won.token)
    assert sent == {"claim": True, "lost_to": True, "note_duplicate": True,
                    "complete_with_result": "absent"}


def test_a_connector_that_cannot_tell_keeps_every_commit_synchronous(
        pg_store: ClaimStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_claim.connectors import Connector

    monkeypatch.setattr(pg_store.connector, "_own_transaction",
                        lambda: Connector._own_transaction(pg_store.connector))
    sent = _spy(monkeypatch, pg_store.connector)
    assert isinstance(pg_store.claim("k", **CLAIM), Acquired)
    pg_store.note_duplicate("k")
    assert sent == {"claim": False, "note_duplicate": False}


def test_inside_a_transaction_a_duplicates_statement_is_never_its_own(
        pg_store: ClaimStore) -> None:
    won = pg_store.claim("k", **CLAIM)
    assert isinstance(won, Acquired)
    _finish(pg_store, "k", won.token)
    transaction = pg_store.connector.begin()
    try:
        handle = transaction.handle
        before = handle.exec_driver_sql("SHOW synchronous_commit").scalar_one()
        (row,) = transaction.execute("note_duplicate", pg_store.statements.get("note_duplicate"),
                                     {"key": "k", "own_transaction": True}).rows
        after = handle.exec_driver_sql("SHOW synchronous_commit").scalar_one()
    finally:
        transaction.rollback()
    assert row.quick_commit is None  # the caller's transaction keeps its setting
    assert after == before
