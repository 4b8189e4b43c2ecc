"""Processes that race for the same claim keys (used by test_race.py)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from celery_claim import ClaimStore


def naive_acquire(conn: sa.Connection, table: sa.Table, key: str) -> int | None:
    """The classic check-then-act guard: read, decide, then write."""
    state = conn.execute(sa.select(table.c.state).where(table.c.key == key)).scalar()
    if state == "running":
        return None
    token = conn.execute(
        sa.update(table).where(table.c.key == key)
        .values(state="running", token=table.c.token + 1).returning(table.c.token)
    ).scalar_one()
    return int(token)


def race(url: str, table_name: str, naive: bool, rounds: int, keys: int,
         barrier: Any, results: Any, racer: int) -> None:
    store = ClaimStore(url, table=table_name, create_schema=False)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    wins: list[tuple[int, int]] = []
    try:
        with engine.connect() as conn:
            for round_ in range(rounds):
                key = f"key-{round_ % keys}"
                barrier.wait()
                if naive:
                    token = naive_acquire(conn, store.table, key)
                else:
                    won = store.acquire(key, task_name="race", task_id=f"r{racer}",
                                        owner=f"racer-{racer}", payload_digest=None,
                                        lease_seconds=60)
                    token = won.token if won else None
                barrier.wait()  # every racer has tried this round
                if token is not None:
                    wins.append((round_, token))
                    store.release(key, token, ttl_seconds=60)
        results.put((racer, wins, None))
    except BaseException as exc:  # report, never hang the parent
        results.put((racer, wins, repr(exc)))
        barrier.abort()
    finally:
        store.dispose()
        engine.dispose()
