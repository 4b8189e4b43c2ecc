"""The claim statements on the process's own psycopg connection: prepared
once per session, and recovering from lost connections and lost prepared
statements; refusals told apart from outages; signals and gevent get through
a statement that waits on a row lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from support.stores import store_on_engine

from celery_claim import ClaimStore, ClaimStoreRefused, ClaimStoreUnavailable
from celery_claim.testing import wait_for

LEASE = 30.0
#: The statements every claimed task runs, on the process's own connection.
HOT = ("acquire", "note_duplicate", "get", "complete", "complete_with_result", "release")


def _acquire(store: ClaimStore, key: str, task_id: str = "t1", digest: str | None = "d") -> Any:
    return store.acquire(key, task_name="t", task_id=task_id, owner="w", payload_digest=digest,
                         lease_seconds=LEASE)


def _session(store: ClaimStore) -> Any:
    """The store's psycopg connection in this process (opened if need be)."""
    threads = store.connector._driver  # type: ignore[attr-defined]
    held = threads._get()
    assert held is not None
    return held[0]


def _prepared(store: ClaimStore) -> list[str]:
    """The statements prepared in the session of the process's connection (server view)."""
    rows = _session(store).execute("SELECT statement FROM pg_prepared_statements").fetchall()
    return [statement for (statement,) in rows]


def _life_cycle(store: ClaimStore, key: str) -> list[object]:
    """Every hot statement, each way it can answer."""
    seen: list[object] = []
    first = _acquire(store, key)
    seen.append(first)
    seen.append(_acquire(store, key, task_id="t2"))  # held: rejected
    seen.append(store.note_duplicate(key) is not None)
    seen.append(store.release(key, first.token, ttl_seconds=60, error="retry"))
    second = _acquire(store, key)
    seen.append(store.complete(key, 1, result={"stale": True}, has_result=True, ttl_seconds=60))
    seen.append(store.complete(key, second.token, result={"é": [1, 2.5, None]},
                               has_result=True, ttl_seconds=60))
    record = store.get(key)
    assert record is not None
    seen.append((record.state, record.token, record.attempt, record.result, record.error))
    third = _acquire(store, key + "-f")
    seen.append(store.complete(key + "-f", third.token, state="failed", error="boom",
                               ttl_seconds=60))
    return seen


EXPECTED = [True, None, True, True, False, True,
            ("succeeded", 2, 2, {"é": [1, 2.5, None]}, None), True]


def _answers(seen: list[object]) -> list[object]:
    return [bool(s) if i == 0 else s for i, s in enumerate(seen)]


def test_the_life_cycle_answers_as_specified(pg_store: ClaimStore) -> None:
    assert _answers(_life_cycle(pg_store, "k")) == EXPECTED


def _records(store: ClaimStore, prefix: str) -> list[tuple[object, ...]]:
    """What the store answers over a life cycle, a result of every kind and a
    duplicate that reads the whole row, without the clock's columns."""
    out: list[tuple[object, ...]] = []
    for n, result in enumerate([None, b"\x00\xffbytes", "é" * 300, {"k": [1, 2.5]}]):
        key = f"{prefix}{n}"
        won = store.claim(key, task_name="t", task_id="t1", owner="w", payload_digest="d",
                          lease_seconds=LEASE)
        assert won.__class__.__name__ == "Acquired"
        store.complete(key, won.token, result=result, has_result=True, ttl_seconds=60)
        lost = store.claim(key, task_name="t", task_id="t2", owner="w", payload_digest="e",
                           lease_seconds=LEASE)
        record = lost.record  # type: ignore[union-attr]
        out.append((won.token, won.attempt, record.state, record.token, record.task_id,
                     record.payload_digest, record.duplicates, record.has_result,
                     record.result, lost.takeable, lost.mismatch,  # type: ignore[union-attr]
                     type(record.created_at), record.created_at <= record.db_now))
    return out


def test_the_libpq_path_answers_what_psycopgs_cursor_answers(
        pg_store: ClaimStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_claim.connectors._libpq import LibpqSession
    from celery_claim.connectors._psycopg import ProcessConnection

    sent: list[str] = []
    run = LibpqSession.execute

    def counted(self: LibpqSession, statement: Any, *args: Any) -> Any:
        sent.append(statement.name)
        return run(self, statement, *args)

    monkeypatch.setattr(LibpqSession, "execute", counted)
    through_libpq = _records(pg_store, "pq")
    assert sent
    monkeypatch.setattr(ProcessConnection, "use_libpq", False)
    sent.clear()
    through_cursor = _records(pg_store, "cursor")
    assert not sent
    assert through_libpq == through_cursor
    assert through_libpq[1][8] == b"\x00\xffbytes"


def test_arrays_and_bytes_go_through_the_session_as_through_the_cursor(
        pg_store: ClaimStore) -> None:
    # The heartbeat's renewal takes arrays; a completion, bytes (binary format).
    from celery_claim.connectors._libpq import LibpqSession

    won = _acquire(pg_store, "k")
    session = LibpqSession(_session(pg_store))
    renew = pg_store.statements.get("renew")
    compiled = renew.driver(pg_store.engine.dialect)
    result = session.execute(renew, compiled, {"keys": ["k", "gone"], "tokens": [won.token, 1],
                                                "lease_seconds": 60})
    assert [(row.key, row.token) for row in result.rows] == [("k", won.token)]
    complete = pg_store.statements.get("complete_with_result")
    compiled = complete.driver(pg_store.engine.dialect)
    result = session.execute(complete, compiled, {
        "key": "k", "token": won.token, "state": "succeeded", "error": None,
        "ttl_seconds": 60.0, "result": b"\x00\\x\xff", "result_content_type": "application/data",
        "result_content_encoding": "binary"})
    assert result.rowcount == 1
    assert pg_store.get("k").stored_result.payload == b"\x00\\x\xff"  # type: ignore[union-attr]


def test_hot_statements_are_prepared_once_per_session(pg_store: ClaimStore) -> None:
    _life_cycle(pg_store, "a")
    _life_cycle(pg_store, "b")
    prepared = [s for s in _prepared(pg_store) if pg_store.table_name in s]
    texts = {name: pg_store.statements.driver(name, pg_store.engine.dialect).sql
             for name in HOT}
    # Each hot statement once (as $n text), whatever the number of calls.
    assert len(prepared) == len(HOT)
    for name, text in texts.items():
        head = text.split("%(")[0]
        assert sum(1 for s in prepared if s.startswith(head)) >= 1, name


def test_prepared_statements_lost_by_the_session_are_prepared_again(
        pg_store: ClaimStore) -> None:
    token = _acquire(pg_store, "a").token
    session = _session(pg_store)
    # Behind the driver's back, as a pooler's DISCARD ALL would.
    session.pgconn.exec_(b"DEALLOCATE ALL")
    assert not _prepared(pg_store)
    assert pg_store.complete("a", token, result=1, has_result=True, ttl_seconds=60)
    assert _acquire(pg_store, "b") is not None
    assert _answers(_life_cycle(pg_store, "c")) == EXPECTED


def test_losing_one_prepared_statement_leaves_the_others_working(
        pg_store: ClaimStore) -> None:
    _life_cycle(pg_store, "first")
    rows = _session(pg_store).execute(
        "SELECT name FROM pg_prepared_statements WHERE statement LIKE 'INSERT INTO%'").fetchall()
    assert len(rows) == 1
    _session(pg_store).pgconn.exec_(f"DEALLOCATE {rows[0][0]}".encode())
    assert _answers(_life_cycle(pg_store, "second")) == EXPECTED


def test_a_terminated_connection_is_replaced_once(pg_store: ClaimStore,
                                                  database_url: str) -> None:
    assert _acquire(pg_store, "a") is not None
    pid = _session(pg_store).info.backend_pid
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"),
                                {"pid": pid}).scalar_one()
    finally:
        engine.dispose()
    assert _acquire(pg_store, "b") is not None  # a fresh connection, transparently
    assert _session(pg_store).info.backend_pid != pid


def test_database_refusals_are_not_transient(pg_store: ClaimStore) -> None:
    assert _acquire(pg_store, "first") is not None
    pid = _session(pg_store).info.backend_pid
    with pytest.raises(ClaimStoreRefused) as caught:  # a lease past the calendar's end
        pg_store.acquire("k", task_name="t", task_id="t1", owner="w", payload_digest=None,
                         lease_seconds=1e15)
    assert caught.value.transient is False
    assert "out of range" in str(caught.value)
    assert caught.value.__cause__ is not None
    assert _acquire(pg_store, "ok") is not None  # the connection is still good
    assert _session(pg_store).info.backend_pid == pid


def test_an_unreachable_database_is_transient(table_name: str) -> None:
    store = ClaimStore("postgresql+psycopg://postgres@127.0.0.1:9/test", table=table_name)
    try:
        with pytest.raises(ClaimStoreUnavailable) as caught:
            _acquire(store, "k")
        assert caught.value.transient is True
        assert "acquire" in str(caught.value)
    finally:
        store.dispose()


@pytest.fixture
def unprepared_store(database_url: str, table_name: str) -> Iterator[ClaimStore]:
    # As the docs advise behind PgBouncer in transaction mode.
    yield from store_on_engine(database_url, table_name, prepare_threshold=None)


def test_without_prepared_statements_nothing_is_prepared(unprepared_store: ClaimStore) -> None:
    for n in range(3):
        assert _answers(_life_cycle(unprepared_store, f"k{n}")) == EXPECTED
    assert _prepared(unprepared_store) == []


class _Interrupted(Exception):
    """What a soft time limit's signal handler raises."""


@pytest.mark.timeout(30)
def test_a_signal_interrupts_a_statement_waiting_on_a_lock(pg_store: ClaimStore,
                                                           database_url: str) -> None:
    # A duplicate's acquire waits for the row lock of another transaction; a
    # soft time limit (a signal handler that raises) must still get through,
    # and the interrupted connection must not be used again.
    assert _acquire(pg_store, "k") is not None
    pid = _session(pg_store).info.backend_pid
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
    assert waited < 3.0, f"the signal waited {waited:.1f}s for the lock"
    # The wait ran on a connection of its own, closed with the interrupted
    # statement; the process's connection gave way after LOCK_TIMEOUT_MS and
    # is the one the next claim uses.
    assert _acquire(pg_store, "other") is not None
    assert _session(pg_store).info.backend_pid == pid
    try:
        with engine.connect() as conn:
            def waiting() -> int:
                return int(conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE :table"), {"table": f"%{pg_store.table_name}%"}).scalar_one())
            wait_for(lambda: waiting() == 0, 10, message="a backend still waits on the lock")
    finally:
        engine.dispose()


GEVENT_SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys, time
    import gevent, sqlalchemy as sa
    from celery_claim import ClaimStore

    url, table = sys.argv[1], sys.argv[2]
    store = ClaimStore(url, table=table)
    store.create_schema()
    def acquire(key, task_id="t1"):
        return store.acquire(key, task_name="t", task_id=task_id, owner="w",
                             payload_digest=None, lease_seconds=30)
    assert acquire("locked") is not None
    done = []
    locker = sa.create_engine(url).connect()
    locker.execute(sa.text(f"SELECT 1 FROM {table} WHERE key = 'locked' FOR UPDATE"))
    blocked = gevent.spawn(lambda: done.append(("blocked", acquire("locked", "t2"))))
    gevent.sleep(0.2)  # the blocked acquire now waits on the row lock
    def others():
        for n in range(20):
            won = acquire(f"free{n}")
            store.complete(f"free{n}", won.token, ttl_seconds=60)
        done.append(("others", 20))
    gevent.spawn(others).join(timeout=10)
    locker.rollback()
    blocked.join(timeout=10)
    print(json.dumps({"order": [name for name, _ in done], "blocked": repr(done[-1][1])}))
    store.drop_schema()
    store.dispose()
""")


@pytest.mark.timeout(60)
def test_gevent_runs_other_claims_while_one_waits_on_a_lock(database_url: str,
                                                             table_name: str) -> None:
    pytest.importorskip("gevent")
    out = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT, database_url, table_name],
                         capture_output=True, text=True, timeout=50, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    # The other greenlet's claims finished while the first acquire waited.
    assert report["order"] == ["others", "blocked"], out.stderr
    assert report["blocked"] == "None"  # then it lost to the holder, as it should


def test_subclasses_of_the_plain_types_go_through_libpq_as_their_values(
        pg_store: ClaimStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # A str enum as the key, an int subclass as the token: the session sends
    # them as their plain values, as the cursor would.
    import enum

    from celery_claim.connectors._libpq import LibpqSession

    class Key(str, enum.Enum):
        ORDER = "order:7"

    class Token(int):
        pass

    declined: list[str] = []
    run = LibpqSession.execute

    def counted(self: LibpqSession, statement: Any, *args: Any) -> Any:
        result = run(self, statement, *args)
        if result is None:
            declined.append(statement.name)
        return result

    monkeypatch.setattr(LibpqSession, "execute", counted)
    won = pg_store.claim(Key.ORDER, task_name="t", task_id="t1", owner="w",
                         payload_digest=None, lease_seconds=LEASE)
    assert won.__class__.__name__ == "Acquired"
    assert pg_store.complete(Key.ORDER, Token(won.token), result=[1, "é"], has_result=True,
                             ttl_seconds=60.0)
    record = pg_store.get("order:7")
    assert record is not None
    assert (record.state, record.result) == ("succeeded", [1, "é"])
    assert declined == []


def _backends_on(engine: sa.Engine, table: str) -> int:
    """The server's backends, other than this one, whose last query was on ``table``."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND query LIKE :table"), {"table": f"%{table}%"}).scalar_one())


@pytest.mark.parametrize("coalesce", [True, False])
def test_the_threads_of_a_process_share_one_connection(database_url: str, table_name: str,
                                                       coalesce: bool) -> None:
    # Eight threads claiming and completing at once: every claim is right,
    # and the server saw one backend for all of them (a connection per
    # thread would be eight).
    store = ClaimStore(database_url, table=table_name, coalesce=coalesce)
    store.create_schema()
    engine = sa.create_engine(database_url)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            start.wait()
            for n in range(40):
                won = _acquire(store, f"k{t}-{n}", task_id=f"t{t}")
                assert won is not None
                assert won.token == 1
                assert _acquire(store, f"k{t}-{n}", task_id="dup") is None
                assert store.complete(f"k{t}-{n}", won.token, ttl_seconds=60)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        with engine.connect() as conn:
            states = conn.execute(sa.text(
                f"SELECT state, token, count(*) FROM {table_name} GROUP BY state, token"
            )).all()
        assert [tuple(row) for row in states] == [("succeeded", 1, 320)]
        assert _backends_on(engine, table_name) == 1
    finally:
        store.drop_schema()
        store.dispose()
        engine.dispose()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("gives_way", [True, False], ids=["lock-timeout", "naive"])
def test_a_claim_waiting_on_a_row_lock_does_not_hold_up_the_others(
        database_url: str, table_name: str, monkeypatch: pytest.MonkeyPatch,
        gives_way: bool) -> None:
    # One thread's claim waits on a row lock that another transaction holds;
    # the other threads' claims of free keys must finish meanwhile. The naive
    # twin (no lock timeout on the shared connection: 0 turns it off) shows
    # that the harness sees them held up.
    from celery_claim.connectors import _psycopg

    if not gives_way:
        monkeypatch.setattr(_psycopg, "LOCK_TIMEOUT_MS", 0)
    store = ClaimStore(database_url, table=table_name)
    store.create_schema()
    assert _acquire(store, "locked") is not None
    engine = sa.create_engine(database_url)
    done: list[str] = []
    try:
        with engine.connect() as locker:
            locker.execute(sa.text(f"SELECT 1 FROM {table_name} WHERE key = 'locked' FOR UPDATE"))
            blocked = threading.Thread(
                target=lambda: done.append(f"blocked:{_acquire(store, 'locked', 't2')}"))
            blocked.start()
            time.sleep(0.3)  # the blocked claim now waits on the row lock

            def others() -> None:
                for n in range(20):
                    won = _acquire(store, f"free{n}")
                    store.complete(f"free{n}", won.token, ttl_seconds=60)
                done.append("others")

            other = threading.Thread(target=others)
            other.start()
            other.join(3.0)
            finished_under_the_lock = "others" in done
            locker.rollback()
        blocked.join(10)
        other.join(10)
        assert sorted(done) == ["blocked:None", "others"]
        assert finished_under_the_lock is gives_way
    finally:
        store.drop_schema()
        store.dispose()
        engine.dispose()


FORK_SCRIPT = textwrap.dedent("""
    import os, sys, threading
    from celery_claim import ClaimStore

    url, table = sys.argv[1], sys.argv[2]
    store = ClaimStore(url, table=table)
    store.create_schema()
    won = store.acquire("parent", task_name="t", task_id="p", owner="w",
                        payload_digest=None, lease_seconds=30)
    assert won is not None
    held = threading.Event()
    release = threading.Event()
    driver = store.connector._driver

    def hold():  # a thread of the parent in the middle of a statement
        with driver._lock:
            held.set()
            release.wait(30)

    threading.Thread(target=hold, daemon=True).start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:
        won = store.acquire("child", task_name="t", task_id="c", owner="w",
                            payload_digest=None, lease_seconds=30)
        ok = won is not None and store.complete("child", won.token, ttl_seconds=60)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    release.set()
    print(os.waitstatus_to_exitcode(status))
    store.drop_schema()
    store.dispose()
""")


@pytest.mark.timeout(60)
def test_a_child_forked_while_a_thread_held_the_connection_opens_its_own(
        database_url: str, table_name: str) -> None:
    # The parent's lock was held at the fork by a thread the child does not
    # have: the child must neither wait for it nor use the parent's socket.
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT, database_url, table_name],
                         capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0", out.stderr
