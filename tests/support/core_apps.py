"""A throwaway Celery app module for one test, run by real ``celery worker`` processes.

The test gives the module's source; the app reads its broker, claim database,
table and queue from ``CORE_*`` environment variables, which :class:`AppModule`
sets for the worker and for the producer. Everything it made (the queue and
its bindings, result keys, the claims table and ``<table>_fx``, the
effects table a test may create) is removed afterwards.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery

from celery_claim.testing import WorkerProcess

#: The start of every app module: the app, configured from the environment.
PREAMBLE = '''
import os
from celery import Celery
from celery_claim import ClaimTask

app = Celery(os.environ["CORE_APP"], broker=os.environ["CORE_REDIS"],
             backend=os.environ["CORE_REDIS"])
app.conf.update(claim_database_url=os.environ["CORE_DB"],
                claim_table=os.environ["CORE_TABLE"],
                task_default_queue=os.environ["CORE_QUEUE"],
                worker_prefetch_multiplier=1)
'''


class AppModule:
    """One app module written to ``directory``, its queue, table and environment."""

    def __init__(self, directory: Path, source: str, *, redis_url: str, database_url: str,
                 table: str, **env: str) -> None:
        self.name = f"core_app_{uuid.uuid4().hex[:8]}"
        self.directory = directory
        self.queue = f"{self.name}-q"
        self.table = table
        self.redis_url = redis_url
        self.database_url = database_url
        (directory / f"{self.name}.py").write_text(
            textwrap.dedent(PREAMBLE) + textwrap.dedent(source))
        self.env = {"CORE_APP": self.name, "CORE_REDIS": redis_url, "CORE_DB": database_url,
                    "CORE_TABLE": table, "CORE_QUEUE": self.queue, **env}
        self._producers: list[Celery] = []
        self._task_ids: list[str] = []

    def worker(self, pool: str = "solo", concurrency: int = 1, **options: Any) -> WorkerProcess:
        return WorkerProcess(self.name, env=self.env, pythonpath=[self.directory],
                             queues=[self.queue], pool=pool, concurrency=concurrency,
                             **options)

    def producer(self, **conf: Any) -> Celery:
        """A client app on the same broker and result backend."""
        app = Celery(f"{self.name}_producer", broker=self.redis_url, backend=self.redis_url,
                     set_as_current=False)
        app.conf.update(task_default_queue=self.queue, **conf)
        self._producers.append(app)
        return app

    def send(self, producer: Celery, name: str, *args: Any, **options: Any) -> Any:
        result = producer.send_task(name, args, queue=self.queue, **options)
        self._task_ids.append(result.id)
        return result

    def rows(self, sql: str) -> list[Any]:
        """The rows of ``sql``; ``{table}`` is the claims table, ``{fx}`` the effects table."""
        engine = sa.create_engine(self.database_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(sql.format(table=f'"{self.table}"',
                                                         fx=f'"{self.table}_fx"')))
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()

    def close(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        for key in client.scan_iter(match=f"*{self.queue}*"):  # the queue and its bindings
            client.delete(key)
        for task_id in self._task_ids:
            client.delete(f"celery-task-meta-{task_id}")
        client.close()
        for app in self._producers:
            app.close()
        engine = sa.create_engine(self.database_url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{self.table}"'))
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{self.table}_fx"'))
        engine.dispose()


def app_module(directory: Path, source: str, *, redis_url: str, database_url: str,
               table: str, **env: str) -> Iterator[AppModule]:
    """A fixture body: yield the module, clean up after the test."""
    module = AppModule(directory, source, redis_url=redis_url, database_url=database_url,
                       table=table, **env)
    try:
        yield module
    finally:
        module.close()
