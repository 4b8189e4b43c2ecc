"""A shared application engine, completion failures, and the log line per event."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from celery import Celery

from celery_claim import ClaimStoreError, ClaimTask
from celery_claim.testing import TcpProxy


@pytest.fixture
def app_engine(database_url: str, table_name: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(database_url)
    yield engine
    with engine.begin() as conn:
        for name in (table_name, f"{table_name}_orders"):
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    engine.dispose()


def test_claim_engine_shares_the_applications_database(app_engine: sa.Engine,
                                                       table_name: str) -> None:
    orders = sa.Table(f"{table_name}_orders", sa.MetaData(),
                      sa.Column("id", sa.Integer, primary_key=True),
                      sa.Column("charged", sa.Integer))
    orders.create(app_engine)
    app = Celery(f"app_{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    app.conf.update(claim_engine=app_engine, claim_table=table_name)

    @app.task(base=ClaimTask, bind=True, claim_key="order:{order_id}", shared=False)
    def charge(self: ClaimTask, order_id: int) -> int:
        with self.claim.atomic() as conn:
            conn.execute(orders.insert().values(id=order_id, charged=100))
        return order_id

    assert charge.apply((1,)).get() == 1
    assert charge.apply((1,)).get() == 1
    assert charge.claim_store.engine is app_engine
    with app_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar() == 1
        state = conn.execute(sa.text(f'SELECT state FROM "{table_name}"')).scalar()
    assert state == "succeeded"


def test_completion_failure_leaves_the_claim_to_lapse_and_the_work_reruns(
        database_url: str, table_name: str) -> None:
    proxy = TcpProxy.for_url(database_url).start()
    app = Celery(f"app_{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    app.conf.update(claim_database_url=proxy.url(database_url), claim_table=table_name,
                    claim_lease_seconds=1)
    runs: list[int] = []

    @app.task(base=ClaimTask, bind=True, claim_key="c:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> int:
        runs.append(self.claim.token)
        if len(runs) == 1:
            proxy.cut()  # the store goes away while the body runs
        return n

    try:
        with pytest.raises(ClaimStoreError, match="complete"):
            job.apply((1,)).get()
        proxy.restore()
        record = job.claim_store.get("c:1")
        assert record is not None
        assert (record.state, record.token) == ("running", 1)  # never marked done
        time.sleep(1.2)  # the lease lapses
        assert job.apply((1,)).get() == 1
        assert runs == [1, 2]
    finally:
        proxy.close()
        job.claim_store.dispose()
        engine = sa.create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table_name}"'))
        engine.dispose()


def test_one_log_line_per_claim_event(database_url: str, table_name: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    app = Celery(f"app_{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    app.conf.update(claim_database_url=database_url, claim_table=table_name)

    @app.task(base=ClaimTask, bind=True, claim_key="l:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> int:
        return n

    try:
        with caplog.at_level(logging.DEBUG, logger="celery_claim"):
            job.apply((1,), task_id="t-1").get()
            job.apply((1,), task_id="t-2").get()
        lines = [r.getMessage() for r in caplog.records if r.name == "celery_claim"]
        assert lines[0].startswith("claim acquired key=l:1 task_id=t-1 token=1")
        assert lines[1].startswith("claim completed key=l:1 task_id=t-1 token=1")
        assert "state=succeeded" in lines[1]
        assert "duration_ms=" in lines[1]
        assert lines[2].startswith("claim duplicate key=l:1 task_id=t-2 outcome=succeeded")
        assert len(lines) == 3
        completed = next(r for r in caplog.records if "completed" in r.getMessage())
        assert completed.claim_key == "l:1"  # type: ignore[attr-defined]
    finally:
        job.claim_store.drop_schema()
        job.claim_store.dispose()
