"""The example Django project run for real (the whole examples.django. project:
manage.py, proj/ and shop/): its own database,
``manage.py migrate``, real ``celery worker`` processes, a Redis queue and key
prefix of its own; everything is removed at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery

from celery_claim import ClaimStore
from celery_claim.testing import WorkerProcess, stop_all, wait_until_drained

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django"




class ExampleProject:
    def __init__(self, database_url: str, redis_url: str) -> None:
        self.name = f"dj{uuid.uuid4().hex[:10]}"
        self.server_url = sa.engine.make_url(database_url)
        self.url = self.server_url.set(database=self.name)
        self.redis_url = redis_url
        self.prefix = f"{self.name}:"
        server = sa.create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with server.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        server.dispose()
        self.engine = sa.create_engine(self.url)
        plain = self.url.set(drivername="postgresql")
        self.env = {
            "DJANGO_SETTINGS_MODULE": "proj.settings",
            "DATABASE_URL": plain.render_as_string(hide_password=False),
            "CELERY_BROKER_URL": redis_url,
            "EXAMPLE_QUEUE": self.name,
            "EXAMPLE_KEY_PREFIX": self.prefix,
            "EXAMPLE_HOLD_REDIS": redis_url,
            "EXAMPLE_LEASE_SECONDS": "3",
        }
        self.workers: list[WorkerProcess] = []
        self.producer = Celery(self.name, broker=redis_url, set_as_current=False)
        self.producer.conf.broker_transport_options = {"global_keyprefix": self.prefix}
        self.redis = redis.Redis.from_url(redis_url)

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``python manage.py ...`` in the example project."""
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=EXAMPLE,
                                env={**os.environ, **self.env}, capture_output=True,
                                text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def start_workers(self, count: int = 2, pool: str = "prefork", concurrency: int = 2,
                      **env: str) -> list[WorkerProcess]:
        started = [WorkerProcess("proj", pool=pool, concurrency=concurrency,
                                 queues=[self.name], env={**self.env, **env},
                                 pythonpath=[EXAMPLE], cwd=EXAMPLE)
                   for _ in range(count)]
        for worker in started:
            self.workers.append(worker.start())
        for worker in started:
            if not worker.ready(timeout=60):
                raise AssertionError(f"worker did not start:\n{worker.log_tail()}")
        return started

    def publish(self, task: str, calls: Iterable[Sequence[Any]], copies: int) -> None:
        """Every call ``copies`` times, each with a task id of its own (a producer's duplicates)."""
        with self.producer.producer_or_acquire() as producer:
            for call in calls:
                for _ in range(copies):
                    self.producer.send_task(task, args=tuple(call), queue=self.name,
                                            task_id=str(uuid.uuid4()), producer=producer)

    def held(self) -> dict[int, int]:
        """Orders whose first delivery is holding in its body, and the pid holding each."""
        return {int(k): int(v) for k, v in self.redis.hgetall(f"{self.prefix}held").items()}

    def worker_of(self, pid: int) -> WorkerProcess:
        return next(w for w in self.workers if pid in w.group_pids())

    def drain(self, claimed: bool, timeout: float = 90.0) -> None:
        store = ClaimStore(self.url.render_as_string(hide_password=False),
                           create_schema=False) if claimed else None
        try:
            wait_until_drained(self.redis_url, [self.name], key_prefix=self.prefix,
                               store=store, settle=1.5, timeout=timeout, interval=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        finally:
            if store is not None:
                store.dispose()

    def charges(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(
                "SELECT order_id, pid, token FROM shop_charge ORDER BY id")))

    def assert_one_receipt_each(self, orders: Iterable[int]) -> None:
        """The receipt of every order was published once (on_commit, after the claim
        committed): one claim each, never a duplicate delivery."""
        with self.engine.connect() as conn:
            receipts = {row.key: (row.state, row.duplicates) for row in conn.execute(sa.text(
                "SELECT key, state, duplicates FROM celery_claims "
                "WHERE task_name = 'shop.tasks.email_receipt'"))}
        assert receipts == {f"receipt:{o}": ("succeeded", 0) for o in orders}, receipts

    def charges_per_order(self) -> Counter[int]:
        return Counter(row.order_id for row in self.charges())

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_tail(60)}" for w in self.workers)

    def close(self) -> None:
        stop_all(self.workers)
        for worker in self.workers:
            worker.close()
        self.producer.close()
        keys = list(self.redis.scan_iter(f"{self.prefix}*"))
        if keys:
            self.redis.delete(*keys)
        self.redis.close()
        self.engine.dispose()
        server = sa.create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        server.dispose()
