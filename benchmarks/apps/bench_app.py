"""The Celery app every worker benchmark runs: one task per variant.

A worker imports this module with its configuration in ``BENCH_*``
environment variables (see :func:`config_from_env`); the benchmark runner
builds the same app in-process with :func:`make_app` to publish messages.

Every body is the same: sleep ``BENCH_BODY_MS`` (0: return at once) and,
when ``BENCH_COUNT`` is set, count the execution in Redis so the runner can
tell how many duplicates ran their body.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery

from celery_claim import ClaimTask

#: Every variant: (task name, what it is).
VARIANTS: dict[str, str] = {
    "plain": "plain Celery task, Celery's defaults (acks on receipt)",
    "plain_late": "plain Celery task with acks_late=True (ClaimTask's acking)",
    "plain_write": "plain task (acks_late) that inserts one row in its own transaction",
    "claim": "ClaimTask, default key {task_name}:{task_id} (acks_late by default)",
    "claim_early": "ClaimTask with acks_late=False (like the plain task's default)",
    "claim_key": "ClaimTask with a business key 'order:{n}'",
    "claim_atomic": "ClaimTask inserting one row in self.claim.atomic()",
    "claim_conflict": "ClaimTask on a table without the settle function: the claim statement "
                      "of the release before (INSERT .. ON CONFLICT DO UPDATE and the "
                      "duplicate's branch)",
    "claim_signal": "ClaimTask in a worker with a receiver of claim_duplicate: every "
                    "duplicate builds the whole record of its row",
    "claim_metrics": "ClaimTask in a worker with the Prometheus metrics installed "
                     "(celery_claim.metrics.install())",
    "claim_cursor": "ClaimTask with its claim statements on psycopg's cursor instead of "
                    "psycopg.pq (the path before the libpq session)",
    "claim_alone": "ClaimTask with claim_coalesce=False: one statement per call, whatever "
                   "the pool",
    "handwritten": "plain task (acks_late) with a hand-written two-statement psycopg claim",
    "floor": "plain task (acks_late) with the smallest correct claim: three columns, two "
             "autocommit statements on one psycopg connection per process",
    "floor_twin": "the floor's task again under another name: an A/A control, whose ratio "
                  "to the floor is the harness's own spread",
    "once": "celery-once QueueOnce (lock at publish, unlock after the body)",
    "dedup": "plain task, acks_late, worker_deduplicate_successful_tasks + Redis results",
}


def config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith("BENCH_")}


class _PerProcess:
    """Clients made lazily once per process (prefork children must not share them)."""

    def __init__(self) -> None:
        self._pid = -1
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str, factory: Callable[[], Any]) -> Any:
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._clients = os.getpid(), {}
            client = self._clients.get(name)
            if client is None:
                client = self._clients[name] = factory()
            return client


_process = _PerProcess()


def handwritten_sql(table: str) -> tuple[str, str, str]:
    """The hand-written two-statement claim the benchmarks compare with, on
    ``table``: create the table, claim a key, mark it done (psycopg's ``%s``)."""
    return (f"CREATE TABLE {table} (key text PRIMARY KEY, state text NOT NULL)",
            f"INSERT INTO {table} (key, state) VALUES (%s, 'running') "  # noqa: S608
            "ON CONFLICT (key) DO NOTHING RETURNING key",
            f"UPDATE {table} SET state = 'done' WHERE key = %s")  # noqa: S608


def floor_sql(table: str) -> tuple[str, str, str]:
    """The floor: the smallest correct claim with a fencing token, on ``table``.

    Three columns; the acquire takes any row not yet succeeded (so a crashed
    holder's row is taken over with token + 1) and the completion is fenced
    by the token. No lease, no payload check, no stored result: what any
    correct claim must cost at least (psycopg's ``%s``)."""
    return (f"CREATE TABLE {table} (key text PRIMARY KEY, state text NOT NULL, "
            "token bigint NOT NULL)",
            f"INSERT INTO {table} AS t (key, state, token) VALUES (%s, 'running', 1) "  # noqa: S608
            "ON CONFLICT (key) DO UPDATE SET state = 'running', token = t.token + 1 "
            "WHERE t.state <> 'succeeded' RETURNING token",
            f"UPDATE {table} SET state = 'succeeded' WHERE key = %s AND token = %s")  # noqa: S608


def _received(sender: Any = None, **kwargs: Any) -> None:
    """A receiver of ``claim_duplicate`` that keeps nothing."""


def make_app(conf: Mapping[str, str]) -> Celery:
    """The benchmark app for one run's configuration (``BENCH_*`` keys)."""
    broker = conf["BENCH_BROKER"]
    variant = conf.get("BENCH_VARIANT", "plain")
    body_seconds = float(conf.get("BENCH_BODY_MS", "0")) / 1000.0
    count_key = conf.get("BENCH_COUNT", "")
    marks_key = conf["BENCH_MARKS"]
    side_table = conf.get("BENCH_SIDE_TABLE", "bench_side")
    database_url = conf["BENCH_DATABASE_URL"]

    app = Celery("bench", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": conf["BENCH_KEYPREFIX"]},
        task_default_queue=conf["BENCH_QUEUE"],
        worker_hijack_root_logger=True,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        claim_database_url=database_url,
        claim_table=conf.get("BENCH_TABLE", "bench_claims"),
    )
    if variant == "dedup":
        app.conf.update(
            result_backend=conf["BENCH_RESULT_BACKEND"],
            result_backend_transport_options={"global_keyprefix": conf["BENCH_KEYPREFIX"]},
            task_ignore_result=False,
            worker_deduplicate_successful_tasks=True,
            result_expires=3600,
        )
    if variant == "once":
        app.conf.ONCE = {
            "backend": "celery_once.backends.Redis",
            "settings": {"url": conf["BENCH_RESULT_BACKEND"], "default_timeout": 3600},
        }
    insert = sa.text(f"INSERT INTO {side_table} (n) VALUES (:n)")  # noqa: S608 - our own name

    def _redis() -> redis.Redis:
        return _process.get("redis", lambda: redis.Redis.from_url(broker))  # type: ignore[no-any-return]

    def _engine() -> sa.Engine:
        return _process.get("engine", lambda: sa.create_engine(database_url))  # type: ignore[no-any-return]

    def _psycopg() -> Any:
        import psycopg

        url = sa.engine.make_url(database_url).set(drivername="postgresql")
        return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)

    _, hand_claim, hand_done = handwritten_sql(conf.get("BENCH_HAND_TABLE", "bench_hand"))
    _, floor_claim, floor_done = floor_sql(conf.get("BENCH_FLOOR_TABLE", "bench_floor"))

    def body(n: int) -> int:
        if body_seconds:
            time.sleep(body_seconds)
        if count_key:
            _redis().incr(count_key)
        return n

    @app.task(shared=False, name="bench.mark", acks_late=False)
    def mark(name: str) -> None:
        _redis().hset(marks_key, name, repr(time.time()))

    @app.task(shared=False, name="bench.plain")
    def plain(n: int) -> int:
        return body(n)

    @app.task(shared=False, name="bench.plain_late", acks_late=True)
    def plain_late(n: int) -> int:
        return body(n)

    @app.task(shared=False, name="bench.dedup", acks_late=True)
    def dedup(n: int) -> int:
        return body(n)

    @app.task(shared=False, name="bench.plain_write", acks_late=True)
    def plain_write(n: int) -> int:
        with _engine().begin() as conn:
            conn.execute(insert, {"n": n})
        return body(n)

    @app.task(shared=False, name="bench.handwritten", acks_late=True, bind=True)
    def handwritten(self: Any, n: int) -> int | None:
        conn = _process.get("psycopg", _psycopg)
        key = f"{self.name}:{self.request.id}"
        if conn.execute(hand_claim, (key,)).fetchone() is None:
            return None  # a duplicate
        result = body(n)
        conn.execute(hand_done, (key,))
        return result

    def floor_body(task: Any, n: int) -> int | None:
        conn = _process.get("psycopg", _psycopg)
        key = f"{task.name}:{task.request.id}"
        won = conn.execute(floor_claim, (key,)).fetchone()
        if won is None:
            return None  # a duplicate of a finished claim
        result = body(n)
        conn.execute(floor_done, (key, won[0]))
        return result

    @app.task(shared=False, name="bench.floor", acks_late=True, bind=True)
    def floor(self: Any, n: int) -> int | None:
        return floor_body(self, n)

    @app.task(shared=False, name="bench.floor_twin", acks_late=True, bind=True)
    def floor_twin(self: Any, n: int) -> int | None:
        return floor_body(self, n)

    @app.task(shared=False, name="bench.claim", base=ClaimTask)
    def claim(n: int) -> int:
        return body(n)

    if variant == "claim_conflict":  # as if this worker's table had no settle function
        from celery_claim import upgrade

        upgrade.has_settle_function = lambda conn, table: False  # type: ignore[assignment]

    @app.task(shared=False, name="bench.claim_conflict", base=ClaimTask)
    def claim_conflict(n: int) -> int:
        return body(n)

    if variant == "claim_signal":  # something receives claim_duplicate in this worker
        from celery_claim import signals

        signals.claim_duplicate.connect(_received, weak=False)

    @app.task(shared=False, name="bench.claim_signal", base=ClaimTask)
    def claim_signal(n: int) -> int:
        return body(n)

    if variant == "claim_metrics":  # this worker exports the metrics (each process its own)
        from celery_claim import metrics

        metrics.install()

    @app.task(shared=False, name="bench.claim_metrics", base=ClaimTask)
    def claim_metrics(n: int) -> int:
        return body(n)

    if variant == "claim_cursor":  # this worker's claims go through psycopg's cursor
        from celery_claim.connectors._psycopg import ProcessConnection

        ProcessConnection.use_libpq = False

    @app.task(shared=False, name="bench.claim_cursor", base=ClaimTask)
    def claim_cursor(n: int) -> int:
        return body(n)

    @app.task(shared=False, name="bench.claim_alone", base=ClaimTask, claim_coalesce=False)
    def claim_alone(n: int) -> int:
        return body(n)

    @app.task(shared=False, name="bench.claim_early", base=ClaimTask, acks_late=False)
    def claim_early(n: int) -> int:
        return body(n)

    @app.task(shared=False, name="bench.claim_key", base=ClaimTask, claim_key="order:{n}")
    def claim_key(n: int) -> int:
        return body(n)

    @app.task(shared=False, name="bench.claim_atomic", base=ClaimTask, bind=True)
    def claim_atomic(self: Any, n: int) -> int:
        with self.claim.atomic() as conn:
            conn.execute(insert, {"n": n})
        return body(n)

    if variant == "once":
        from celery_once import QueueOnce

        @app.task(shared=False, name="bench.once", base=QueueOnce, once={"graceful": True})
        def once(n: int) -> int:
            return body(n)

    return app


app = make_app(config_from_env()) if "BENCH_BROKER" in os.environ else None
