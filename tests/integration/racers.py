"""Processes that race for the same claim keys (used by test_race.py).

Three races, each behind a barrier every round:

* ``released``: a key that was claimed and given back (``key-<round % keys>``);
  the winner releases it again after the round;
* ``fresh``: a key nobody has seen (``fresh-<round>``): the INSERT itself;
* ``lapsed``: a key held by a holder whose lease has lapsed (``lapsed-<round>``):
  the takeover.

A racer reports the rounds it believes it won; the test checks those against
the rows in the database. :func:`race_threads` runs several racers as threads
of one process, sharing one store, so that their claims are coalesced into
one statement; those batches race the other processes' batches.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from celery_claim import ClaimStore

MODES = ("released", "fresh", "lapsed")


def key_of(mode: str, round_: int, keys: int) -> str:
    return f"key-{round_ % keys}" if mode == "released" else f"{mode}-{round_}"


def naive_acquire(conn: sa.Connection, table: sa.Table, key: str, racer: int) -> int | None:
    """The classic check-then-act guard: read, decide, then write."""
    row = conn.execute(sa.select(table.c.state, table.c.lease_expires_at < sa.func.now())
                       .where(table.c.key == key)).first()
    if row is not None and row[0] == "running" and not row[1]:
        return None  # held, its lease current
    now, lease = sa.func.now(), sa.func.now() + sa.text("interval '60 seconds'")
    insert = postgresql.insert(table).values(
        key=key, state="running", token=1, task_name="race", task_id=f"r{racer}", attempt=1,
        owner=f"racer-{racer}", duplicates=0, lease_expires_at=lease, created_at=now,
        updated_at=now)
    token = conn.execute(insert.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={"state": "running", "token": table.c.token + 1, "attempt": table.c.attempt + 1,
              "task_id": insert.excluded.task_id, "owner": insert.excluded.owner,
              "lease_expires_at": lease, "updated_at": now},
    ).returning(table.c.token)).scalar_one()
    return int(token)


def _round(store: ClaimStore, conn: sa.Connection | None, mode: str, key: str, round_: int,
           racer: int, barrier: Any, wins: list[tuple[int, int]],
           lost: list[tuple[int, int]] | None = None) -> None:
    """One round of one racer: the naive guard on ``conn``, or the store's
    ``claim`` (what a task runs; coalesced in a process of threads). A
    delivery that lost records the token of the row it lost to in ``lost``."""
    barrier.wait()
    if conn is not None:
        token = naive_acquire(conn, store.table, key, racer)
    else:
        won = store.claim(key, task_name="race", task_id=f"r{racer}", owner=f"racer-{racer}",
                          payload_digest=None, lease_seconds=60)
        if won is None:
            # As a task does: the statement lost to a row committed after its
            # snapshot, which a second statement reads (and counts).
            won = store.lost_to(key, task_id=f"r{racer}", payload_digest=None)
            assert won is not None, key
            assert not won.takeable, won
        token = won.token if type(won).__name__ == "Acquired" else None
        if lost is not None and token is None:
            lost.append((round_, won.record.token))  # type: ignore[union-attr]
    barrier.wait()  # every racer has tried this round
    if token is not None:
        wins.append((round_, token))
        if mode == "released":
            store.release(key, token, ttl_seconds=60)


def race(url: str, table_name: str, mode: str, naive: bool, rounds: int, keys: int,
         barrier: Any, results: Any, racer: int) -> None:
    store = ClaimStore(url, table=table_name, create_schema=False)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    wins: list[tuple[int, int]] = []
    lost: list[tuple[int, int]] = []
    try:
        with engine.connect() as conn:
            for round_ in range(rounds):
                _round(store, conn if naive else None, mode, key_of(mode, round_, keys),
                       round_, racer, barrier, wins, lost)
        if not naive:
            results.put(("lost", lost, None))
        results.put((racer, wins, None))
    except BaseException as exc:  # report, never hang the parent
        results.put((racer, wins, repr(exc)))
        barrier.abort()
    finally:
        store.dispose()
        engine.dispose()


def race_threads(url: str, table_name: str, mode: str, naive: bool, rounds: int, keys: int,
                 barrier: Any, results: Any, process: int, threads: int) -> None:
    """``threads`` racers in this process, claiming through one store with
    ``ClaimStore.claim`` (coalesced); each reports as racer ``process *
    threads + n``, and the process reports how many calls were batched.
    Every process's thread ``n`` races for the same keys."""
    store = ClaimStore(url, table=table_name, create_schema=False)
    assert store.coalesced is not None
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_size=threads)

    def racer(n: int) -> None:
        me = process * threads + n
        wins: list[tuple[int, int]] = []
        lost: list[tuple[int, int]] = []
        conn = engine.connect() if naive else None
        try:
            for step in range(rounds // threads):
                # Each step, thread n of every process races for key n of the
                # step: a process's threads claim distinct keys at once.
                round_ = step * threads + n
                _round(store, conn, mode, key_of(mode, round_, keys), round_, me, barrier,
                       wins, lost)
            if not naive:
                results.put(("lost", lost, None))
            results.put((me, wins, None))
        except BaseException as exc:  # report, never hang the parent
            results.put((me, wins, repr(exc)))
            barrier.abort()
        finally:
            if conn is not None:
                conn.close()

    workers = [threading.Thread(target=racer, args=(n,)) for n in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        results.put(("batched", store.coalesced.claim.batched_calls, None))
    finally:
        store.dispose()
        engine.dispose()
