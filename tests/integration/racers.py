"""Processes that race for the same claim keys (used by test_race.py).

Three races, each behind a barrier every round:

* ``released``: a key that was claimed and given back (``key-<round % keys>``);
  the winner releases it again after the round;
* ``fresh``: a key nobody has seen (``fresh-<round>``): the INSERT itself;
* ``lapsed``: a key held by a holder whose lease has lapsed (``lapsed-<round>``):
  the takeover.

A racer reports the rounds it believes it won; the test checks those against
the rows in the database.
"""

from __future__ import annotations

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


def race(url: str, table_name: str, mode: str, naive: bool, rounds: int, keys: int,
         barrier: Any, results: Any, racer: int) -> None:
    store = ClaimStore(url, table=table_name, create_schema=False)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    wins: list[tuple[int, int]] = []
    try:
        with engine.connect() as conn:
            for round_ in range(rounds):
                key = key_of(mode, round_, keys)
                barrier.wait()
                if naive:
                    token = naive_acquire(conn, store.table, key, racer)
                else:
                    won = store.acquire(key, task_name="race", task_id=f"r{racer}",
                                        owner=f"racer-{racer}", payload_digest=None,
                                        lease_seconds=60)
                    token = won.token if won else None
                barrier.wait()  # every racer has tried this round
                if token is not None:
                    wins.append((round_, token))
                    if mode == "released":
                        store.release(key, token, ttl_seconds=60)
        results.put((racer, wins, None))
    except BaseException as exc:  # report, never hang the parent
        results.put((racer, wins, repr(exc)))
        barrier.abort()
    finally:
        store.dispose()
        engine.dispose()
