"""Fixtures for tests with real ``celery worker`` processes.

Each test gets its own claim table, effects and observations tables, Redis
queue and kombu key prefix; everything is removed afterwards, and every
worker is stopped (its log is printed when the test failed).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from celery_claim.testing import WorkerProcess, stop_all

HERE = Path(__file__).parent


class Scenario:
    """One test's isolated world: names, environment, workers and queries."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.name = f"t{uuid.uuid4().hex[:10]}"
        self.database_url = database_url
        self.redis_url = redis_url
        self.table = f"claims_{self.name}"
        self.env: dict[str, str] = {
            "CLAIM_TEST_BROKER": redis_url,
            "CLAIM_TEST_DATABASE_URL": database_url,
            "CLAIM_TEST_DIRECT_DATABASE_URL": database_url,
            "CLAIM_TEST_TABLE": self.table,
            "CLAIM_TEST_QUEUE": self.name,
            "CLAIM_TEST_PREFIX": self.name,
        }
        self.workers: list[WorkerProcess] = []
        self.engine = sa.create_engine(database_url)
        self.redis = redis.Redis.from_url(redis_url)

    def app_module(self, module: str = "claim_app") -> Any:
        """Import the app module in the test process with this scenario's environment."""
        import importlib
        import sys

        os.environ.update(self.env)
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        if module in sys.modules:
            return importlib.reload(sys.modules[module])
        return importlib.import_module(module)

    def create_tables(self, module: Any) -> None:
        module.meta.create_all(self.engine)

    def worker(self, pool: str = "prefork", concurrency: int = 2, module: str = "claim_app",
               **env: str) -> WorkerProcess:
        worker = WorkerProcess(module, pool=pool,  # type: ignore[arg-type]
                               concurrency=concurrency, queues=[self.name],
                               env={**self.env, **env}, pythonpath=[HERE], loglevel="INFO")
        self.workers.append(worker)
        worker.start()
        return worker

    def ready(self) -> None:
        for worker in self.workers:
            worker.ready(timeout=60)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    def effects_per_record(self, kind: str) -> dict[int, int]:
        rows = self.rows(f'SELECT record_id, count(*) FROM "{self.table}_effects" '
                         "WHERE kind = :kind GROUP BY record_id", kind=kind)
        return {r[0]: r[1] for r in rows}

    def body_starts(self, kind: str) -> dict[int, int]:
        found = {}
        for key in self.redis.scan_iter(f"{self.name}:body:{kind}:*", count=1000):
            found[int(key.decode().rsplit(":", 1)[1])] = int(self.redis.get(key) or 0)
        return found

    def logs(self) -> str:
        return "\n".join(f"===== {w.name}\n{w.log_tail(80)}" for w in self.workers)

    def close(self, failed: bool) -> None:
        if failed:
            print(self.logs())
        stop_all(self.workers, timeout=10)
        for worker in self.workers:
            worker.close()
        with self.engine.begin() as conn:
            for suffix in ("_effects", "_observations", ""):
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{self.table}{suffix}"'))
        self.engine.dispose()
        keys = list(self.redis.scan_iter(f"{self.name}*", count=1000))
        keys += [k for k in self.redis.scan_iter("_kombu*", count=1000) if self.name.encode() in k]
        if keys:
            self.redis.delete(*keys)
        self.redis.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def scenario(database_url: str, redis_url: str,
             request: pytest.FixtureRequest) -> Iterator[Scenario]:
    world = Scenario(database_url, redis_url)
    yield world
    report = getattr(request.node, "rep_call", None)
    world.close(failed=bool(report and report.failed))


WaitFor = Callable[..., Any]
