"""The examples on real PostgreSQL and Redis, with real worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from examples_loader import ROOT, load

from celery_claim import ClaimStore
from celery_claim.testing import WorkerProcess


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """A database of its own, for examples that use fixed table names."""
    name = f"example_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(database_url).set(database=name).render_as_string(
        hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_billing_charges_every_order_once_under_duplicates(fresh_database: str,
                                                           redis_url: str) -> None:
    queue = f"billing-{uuid.uuid4().hex[:8]}"
    env = {"CELERY_BROKER_URL": redis_url, "CELERY_CLAIM_DATABASE_URL": fresh_database,
           "BILLING_QUEUE": queue}
    worker = WorkerProcess("examples.billing.app", concurrency=4, queues=[queue], env=env,
                           cwd=ROOT, pythonpath=[ROOT])
    try:
        with worker:
            result = subprocess.run(
                [sys.executable, "-m", "examples.billing.producer", "--orders", "30",
                 "--copies", "3"], capture_output=True, text=True, cwd=ROOT,
                env={**os.environ, **env}, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr + worker.log_tail()
        assert "30 orders, 90 jobs published, 30 charges made, 30 orders charged" \
            in result.stdout
        engine = sa.create_engine(fresh_database)
        with engine.connect() as conn:
            keys = conn.execute(sa.text("SELECT idempotency_key FROM charges")).scalars().all()
            statuses = conn.execute(sa.text("SELECT DISTINCT status FROM orders")).scalars()
            assert list(statuses) == ["charged"]
            duplicates = conn.execute(sa.text(
                "SELECT sum(duplicates) FROM celery_claims")).scalar_one()
        engine.dispose()
        assert sorted(keys) == sorted(f"charge:{n}" for n in range(1, 31))
        assert duplicates >= 60
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"*{queue}*"):  # the queue and its bindings
            client.delete(key)
        client.close()


def test_quickstart_on_postgresql(fresh_database: str) -> None:
    mod = load("quickstart/tasks.py", fresh_database)
    mod.metadata.create_all(mod.charge.claim_store.engine)
    assert mod.charge.apply((1, 500)).get() == {"charged": 500}
    assert mod.charge.apply((1, 500)).get() == {"charged": 500}
    with mod.charge.claim_store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM charges")).scalar_one() == 1
    mod.charge.claim_store.dispose()


def test_own_engines_for_direct_connections_and_pgbouncer(fresh_database: str) -> None:
    mod = load("operations/pgbouncer.py")
    direct = mod.direct_engine(fresh_database)
    with direct.connect() as conn:
        assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar_one() == \
            "force_custom_plan"
    bouncer = mod.pgbouncer_engine(fresh_database)
    with bouncer.connect() as conn:
        assert conn.connection.dbapi_connection.prepare_threshold is None

    def prepared_after_claims(engine: sa.Engine, app: Celery) -> int:
        """Prepared statements on the claim connections after claims past the threshold."""
        opened: list[Any] = []
        engine.dispose()  # every claim connection is a new one, seen connecting
        sa.event.listen(engine, "connect", lambda dbapi, _record: opened.append(dbapi))
        app.conf.claim_engine = engine

        @app.task(base=__import__("celery_claim").ClaimTask, bind=True, shared=False,
                  claim_key="job:{n}", name="proj.job")
        def job(self: object, n: int) -> int:
            return n

        for n in range(8):  # past psycopg's prepare threshold
            assert job.apply((n,)).get() == n
        assert opened, "the claims opened no connection of this engine"
        found = 0
        for dbapi in opened:
            if not dbapi.closed:
                row = dbapi.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
                found += row[0]
                dbapi.rollback()
        job.claim_store.dispose()
        return found

    # The control: straight to PostgreSQL the claim statements are prepared.
    assert prepared_after_claims(direct, Celery("direct", set_as_current=False)) > 0
    assert prepared_after_claims(bouncer, mod.app) == 0
    direct.dispose()
    bouncer.dispose()


def test_stuck_claims_query_finds_lapsed_leases(pg_store: ClaimStore) -> None:
    for key, lease in (("live", 60.0), ("stuck-1", -5.0), ("stuck-2", -1.0)):
        pg_store.acquire(key, task_name="t", task_id=key, owner="host/1",
                         payload_digest=None, lease_seconds=lease)
    query = (ROOT / "examples/operations/stuck_claims.sql").read_text()
    query = query.replace("FROM celery_claims", f"FROM {pg_store.table_name}")
    with pg_store.engine.connect() as conn:
        rows = conn.execute(sa.text(query)).all()
    assert [row.key for row in rows] == ["stuck-1", "stuck-2"]
