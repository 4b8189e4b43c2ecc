"""The hot statements' libpq path: same results as the driver's cursor, and
the same recovery from lost connections and lost prepared statements."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from celery_claim import ClaimStore, ClaimStoreError
from celery_claim.store import _Held

LEASE = 30.0


def _acquire(store: ClaimStore, key: str, task_id: str = "t1", digest: str | None = "d") -> object:
    return store.acquire(key, task_name="t", task_id=task_id, owner="w", payload_digest=digest,
                         lease_seconds=LEASE)


def _held(store: ClaimStore) -> _Held:
    assert store._driver is not None
    held = store._driver.get()
    assert held is not None
    return held


def _prepared(store: ClaimStore) -> set[str]:
    rows = _held(store).cursor.execute("SELECT name FROM pg_prepared_statements").fetchall()
    return {name for (name,) in rows}


def _life_cycle(store: ClaimStore, key: str) -> list[object]:
    """Every libpq statement, each way it can answer."""
    seen: list[object] = []
    first = _acquire(store, key)
    seen.append(first)
    seen.append(_acquire(store, key, task_id="t2"))  # held: rejected
    assert first is not None
    seen.append(store.release(key, first.token, ttl_seconds=60, error="retry"))  # type: ignore[attr-defined]
    second = _acquire(store, key)
    seen.append(second)
    seen.append(store.complete(key, 1, result={"stale": True}, has_result=True, ttl_seconds=60))
    seen.append(store.complete(key, second.token, result={"é": [1, 2.5, None]},  # type: ignore[union-attr]
                               has_result=True, ttl_seconds=60))
    seen.append(store.release(key, second.token, ttl_seconds=60))  # type: ignore[union-attr]
    record = store.get(key)
    assert record is not None
    seen.append((record.state, record.token, record.attempt, record.result, record.error))
    third = _acquire(store, key + "-f")
    seen.append(store.complete(key + "-f", third.token, state="failed", error="boom",  # type: ignore[union-attr]
                               ttl_seconds=60))
    return seen


def test_libpq_and_cursor_paths_give_the_same_answers(pg_store: ClaimStore) -> None:
    assert _held(pg_store).libpq
    through_libpq = _life_cycle(pg_store, "via-libpq")
    _held(pg_store).libpq = False
    through_cursor = _life_cycle(pg_store, "via-cursor")
    assert through_libpq == through_cursor
    assert through_libpq[5] is True  # the holder completes
    assert through_libpq[4] is False  # a stale token does not
    assert through_libpq[7] == ("succeeded", 2, 2, {"é": [1, 2.5, None]}, None)


def test_hot_statements_are_prepared_once_per_connection(pg_store: ClaimStore) -> None:
    _life_cycle(pg_store, "k")
    names = {n for n in _prepared(pg_store) if n.startswith("celery_claim_")}
    assert {n.rsplit("_", 1)[0] for n in names} == {
        "celery_claim_acquire", "celery_claim_complete", "celery_claim_finish",
        "celery_claim_release"}


def test_lost_prepared_statements_are_prepared_again(pg_store: ClaimStore) -> None:
    token = _acquire(pg_store, "a").token  # type: ignore[attr-defined]
    _held(pg_store).cursor.execute("DEALLOCATE ALL")  # as DISCARD ALL or a pooler would
    assert not _prepared(pg_store)
    assert pg_store.complete("a", token, result=1, has_result=True, ttl_seconds=60)
    assert _acquire(pg_store, "b") is not None


def test_a_terminated_connection_is_replaced_once(pg_store: ClaimStore,
                                                  database_url: str) -> None:
    assert _acquire(pg_store, "a") is not None
    pid = _held(pg_store).connection.info.backend_pid
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"),
                                {"pid": pid}).scalar_one()
    finally:
        engine.dispose()
    assert _acquire(pg_store, "b") is not None  # a fresh connection, transparently
    assert _held(pg_store).connection.info.backend_pid != pid


def test_database_refusals_are_not_transient(pg_store: ClaimStore) -> None:
    with pytest.raises(ClaimStoreError) as caught:
        _acquire(pg_store, "k" * 600)  # longer than the key column
    assert caught.value.transient is False
    assert "too long" in str(caught.value)
    assert _acquire(pg_store, "ok") is not None  # the connection is still good


@pytest.fixture
def unprepared_store(database_url: str, table_name: str) -> Iterator[ClaimStore]:
    # As the docs advise behind PgBouncer in transaction mode.
    engine = sa.create_engine(database_url, connect_args={"prepare_threshold": None})
    store = ClaimStore(engine=engine, table=table_name)
    store.create_schema()
    yield store
    store.drop_schema()
    store.dispose()
    engine.dispose()


def test_without_prepared_statements_nothing_is_prepared(unprepared_store: ClaimStore) -> None:
    assert _held(unprepared_store).prepared is None
    _life_cycle(unprepared_store, "k")
    assert not _prepared(unprepared_store)


def test_green_threads_keep_the_drivers_cooperative_wait(
        pg_store: ClaimStore, monkeypatch: pytest.MonkeyPatch) -> None:
    patched = types.SimpleNamespace(is_module_patched=lambda name: name == "select")
    monkeypatch.setitem(sys.modules, "gevent.monkey", patched)
    assert not _held(pg_store).libpq
    assert _life_cycle(pg_store, "k")[7] == ("succeeded", 2, 2, {"é": [1, 2.5, None]}, None)
    assert not {n for n in _prepared(pg_store) if n.startswith("celery_claim_")}


def test_losing_one_prepared_statement_leaves_the_others_working(
        pg_store: ClaimStore) -> None:
    _life_cycle(pg_store, "first")  # every statement prepared on this connection
    acquire = next(n for n in _prepared(pg_store) if n.startswith("celery_claim_acquire_"))
    _held(pg_store).cursor.execute(f"DEALLOCATE {acquire}")
    assert _life_cycle(pg_store, "second")[7] == ("succeeded", 2, 2, {"é": [1, 2.5, None]},
                                                  None)
    _held(pg_store).prepared.clear()  # type: ignore[union-attr] # forgotten, still on the server
    assert _life_cycle(pg_store, "third")[7] == ("succeeded", 2, 2, {"é": [1, 2.5, None]}, None)


class _Interrupted(Exception):
    """What a soft time limit's signal handler raises."""


@pytest.mark.timeout(30)
def test_a_signal_interrupts_a_statement_waiting_on_a_lock(pg_store: ClaimStore,
                                                           database_url: str) -> None:
    # A duplicate's acquire waits for the row lock of another transaction; a
    # soft time limit (a signal handler that raises) must still get through,
    # and the interrupted connection must not be used again.
    assert _acquire(pg_store, "k") is not None
    pid = _held(pg_store).connection.info.backend_pid
    engine = sa.create_engine(database_url)
    previous = signal.signal(signal.SIGUSR1, lambda *_: (_ for _ in ()).throw(_Interrupted()))
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        with engine.connect() as locker:
            locker.execute(sa.text(
                f"SELECT 1 FROM {pg_store.table_name} WHERE key = 'k' FOR UPDATE"))
            started = time.monotonic()
            timer.start()
            with pytest.raises(_Interrupted):
                _acquire(pg_store, "k", task_id="t2")
            waited = time.monotonic() - started
            locker.rollback()
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
        engine.dispose()
    assert waited < 3.0, f"the signal waited {waited:.1f}s for the lock"
    assert _acquire(pg_store, "other") is not None  # on a fresh connection
    assert _held(pg_store).connection.info.backend_pid != pid
