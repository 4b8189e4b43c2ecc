"""The ``atomic()`` connection dies under the body (its server process is
terminated, as after a PostgreSQL restart): a store failure, so the job runs
again and its write lands once. The task has no retry policy of its own.

The naive twin, a plain Celery task writing through its own transaction,
fails on the same error: its message is acknowledged and the job is lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.core_apps import AppModule, app_module

from celery_claim.testing import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

SOURCE = '''
import celery
import sqlalchemy as sa

FX = os.environ["CORE_TABLE"] + "_fx"
_engine = sa.create_engine(os.environ["CORE_DB"])


def _terminate(pid):
    """What a PostgreSQL restart does to the connection: the server ends it."""
    with _engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def _write(conn, n, first, raw):
    pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    if first:
        _terminate(pid)
    if raw:  # through the driver itself: psycopg's own OperationalError
        with conn.connection.dbapi_connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {FX} (n) VALUES (%s)", (n,))
    else:
        conn.execute(sa.text(f"INSERT INTO {FX} (n) VALUES (:n)"), {"n": n})


@app.task(base=ClaimTask, bind=True, name="lost.claimed", claim_key="w:{n}")
def claimed(self, n, raw):
    with self.claim.atomic() as conn:
        _write(conn, n, self.claim.attempt == 1, raw)
    return n


_seen = set()


@app.task(bind=True, name="lost.naive", acks_late=True, reject_on_worker_lost=True)
def naive(self, n, raw):
    first = n not in _seen
    _seen.add(n)
    with _engine.begin() as conn:
        _write(conn, n, first, raw)
    return n
'''


@pytest.fixture
def lost(tmp_path: Path, database_url: str, redis_url: str,
         table_name: str) -> Iterator[AppModule]:
    for module in app_module(tmp_path, SOURCE, redis_url=redis_url,
                             database_url=database_url, table=table_name):
        module.rows("CREATE TABLE {fx} (n integer NOT NULL)")
        yield module


def _effects(module: AppModule) -> dict[int, int]:
    return {row.n: row.c for row in module.rows("SELECT n, count(*) AS c FROM {fx} GROUP BY n")}


@pytest.mark.parametrize("raw", [False, True], ids=["sqlalchemy", "driver"])
def test_a_dead_atomic_connection_is_a_store_failure_and_the_job_runs_again(
        lost: AppModule, raw: bool) -> None:
    producer = lost.producer()
    jobs = range(3)
    with lost.worker() as worker:
        results = [lost.send(producer, "lost.claimed", n, raw) for n in jobs]
        wait_for(lambda: len(_effects(lost)) == len(jobs), 60, interval=0.2,
                 message=lambda: f"effects {_effects(lost)}\n{worker.logs()}")
        assert [r.get(timeout=30) for r in results] == list(jobs)
    assert _effects(lost) == dict.fromkeys(jobs, 1)  # none lost, none doubled
    rows = lost.rows("SELECT state, attempt FROM {table}")
    assert {(row.state, row.attempt) for row in rows} == {("succeeded", 2)}


@pytest.mark.parametrize("raw", [False, True], ids=["sqlalchemy", "driver"])
def test_naive_control_loses_the_job(lost: AppModule, raw: bool) -> None:
    producer = lost.producer()
    jobs = range(3)
    with lost.worker():
        results = [lost.send(producer, "lost.naive", n, raw) for n in jobs]
        for result in results:
            with pytest.raises(Exception, match=r"terminat|connection"):
                result.get(timeout=30)
    lost_jobs = [n for n in jobs if n not in _effects(lost)]
    print(f"naive control: {len(lost_jobs)} of {len(jobs)} jobs lost")
    assert lost_jobs == list(jobs)
