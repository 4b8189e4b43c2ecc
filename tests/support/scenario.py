"""The acceptance tier's world: a test with real ``celery worker`` processes.

Each test gets its own claim table, effects and observations tables, Redis
queue and kombu key prefix; everything is removed afterwards, and every
worker is stopped (its log is printed when the test failed).

A fault scenario runs twice (``both_guards``): with the ClaimTasks, and with
the naive check-then-act tasks in their place (``scenario.job("process")`` is
then ``"naive_process"``), on fewer jobs. :meth:`Scenario.assert_outcome`
asserts each record ran once under the claim, and that the naive control
doubled or lost some: a scenario whose control shows nothing cannot see the
failure it is there to rule out. ``CLAIM_SCENARIO_GUARD=naive`` runs every
other scenario with the naive tasks too (they must fail).

Before kombu 5.7 the Redis transport sweeps for messages past their
visibility timeout on a fixed schedule (about every 100 s): there the
scenario runs kombu's own sweep (``QoS.restore_visible``) every second from
the test process, the interval the app configures for kombu 5.7.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from kombu.transport import redis as kombu_redis

from celery_claim import ClaimStore
from celery_claim.testing import (
    WorkerProcess,
    local_worker_node,
    publish_duplicates,
    stop_all,
    wait_for,
    wait_until_drained,
)

#: The acceptance tier's directory: the apps the workers import live there.
HERE = Path(__file__).resolve().parents[1] / "acceptance"
GUARD = os.environ.get("CLAIM_SCENARIO_GUARD", "claim")
if GUARD not in ("claim", "naive"):
    raise pytest.UsageError(f"CLAIM_SCENARIO_GUARD must be 'claim' or 'naive', not {GUARD!r}")

AMQP_URL = os.environ.get("CELERY_CLAIM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

#: Run a scenario with the ClaimTasks and as its naive control. The claimed
#: run also runs at the lowest supported releases (marker ``floor``): it is
#: what depends on Celery's and kombu's acking and re-delivery.
both_guards = pytest.mark.parametrize(
    "scenario", [pytest.param("claim", marks=pytest.mark.floor), "naive"], indirect=True)

#: kombu 5.7 sweeps for unacknowledged Redis messages as often as configured.
KOMBU_SWEEPS_AS_CONFIGURED = hasattr(kombu_redis.Channel, "unacked_restore_interval")


class Scenario:
    """One test's isolated world: names, environment, workers and queries."""

    def __init__(self, database_url: str, redis_url: str, guard: str = GUARD) -> None:
        self.name = f"t{uuid.uuid4().hex[:10]}"
        self.guard = guard
        self.database_url = database_url
        self.redis_url = redis_url
        self.broker_url = redis_url
        self.table = f"claims_{self.name}"
        self.queues = [self.name]
        self.env: dict[str, str] = {
            "CLAIM_TEST_BROKER": redis_url,
            "CLAIM_TEST_MARKER_REDIS": redis_url,
            "CLAIM_TEST_DATABASE_URL": database_url,
            "CLAIM_TEST_DIRECT_DATABASE_URL": database_url,
            "CLAIM_TEST_TABLE": self.table,
            "CLAIM_TEST_QUEUE": self.name,
            "CLAIM_TEST_PREFIX": self.name,
        }
        self.workers: list[WorkerProcess] = []
        self.engine = sa.create_engine(database_url)
        self.redis = redis.Redis.from_url(redis_url)
        self.module: Any = None
        self._store: ClaimStore | None = None
        #: The task ids of the last :meth:`publish`, one per call.
        self.published: list[str] = []
        self._sweeping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.vhost: str | None = None

    def use_rabbitmq(self, amqp_url: str, queue_type: str = "classic") -> None:
        """RabbitMQ as the broker: a vhost of this scenario's own, deleted afterwards."""
        parts = urllib.parse.urlsplit(amqp_url)
        rabbitmqctl("add_vhost", self.name)
        self.vhost = self.name
        rabbitmqctl("set_permissions", "-p", self.name, parts.username or "guest",
                    ".*", ".*", ".*")
        self.broker_url = urllib.parse.urlunsplit(parts._replace(path=f"/{self.name}"))
        self.env.update(CLAIM_TEST_BROKER=self.broker_url, CLAIM_TEST_QUEUE_TYPE=queue_type)

    def amqp_messages(self) -> int:
        """Messages in the vhost's queues, ready or delivered and not acknowledged."""
        out = rabbitmqctl("list_queues", "-p", str(self.vhost), "name", "messages")
        return sum(int(line.split()[-1]) for line in out.splitlines()
                   if line.strip() and line.split()[-1].isdigit())

    def amqp_ready(self) -> int:
        """Messages ready in this scenario's queues and in Celery's delay queues (cheap:
        passive declares; messages delivered and not acknowledged are not counted)."""
        from kombu import Connection

        names = [*self.queues, *(f"celery_delayed_{n}" for n in range(28))]
        ready = 0
        with Connection(self.broker_url, connect_timeout=5) as conn:
            channel = conn.channel()
            for name in names:
                try:
                    ready += channel.queue_declare(queue=name, passive=True).message_count
                except conn.channel_errors:  # no such queue: the channel is closed
                    channel = conn.channel()
        return ready

    # --- setting up --------------------------------------------------------------------

    @property
    def claimed(self) -> bool:
        """True when the scenario runs the ClaimTasks (not the naive control)."""
        return self.guard == "claim"

    def job(self, name: str) -> str:
        """The task that does job ``name`` under this scenario's guard."""
        return name if self.claimed else f"naive_{name}"

    def app_module(self, module: str = "claim_app", **env: str) -> Any:
        """Import the app module in the test process with this scenario's environment.

        ``env`` overrides go to the workers started afterwards too.
        """
        self.env.update(env)
        _clear_test_environment()  # another test's settings must not leak into this one
        os.environ.update(self.env)
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        if module in sys.modules:
            self.module = importlib.reload(sys.modules[module])
        else:
            self.module = importlib.import_module(module)
        return self.module

    def create_tables(self, module: Any) -> None:
        module.meta.create_all(self.engine)

    def prepare(self, **env: str) -> Any:
        """:meth:`app_module` and :meth:`create_tables` in one."""
        module = self.app_module(**env)
        self.create_tables(module)
        return module

    def worker(self, pool: str = "prefork", concurrency: int = 2, module: str = "claim_app",
               queues: Sequence[str] = (), **env: str) -> WorkerProcess:
        """Start a worker on this scenario's queue (and ``queues``); see :meth:`ready`."""
        for queue in queues:
            if queue not in self.queues:
                self.queues.append(queue)
        worker = WorkerProcess(module, pool=pool,
                               concurrency=concurrency, queues=[self.name, *queues],
                               env={**self.env, **env}, pythonpath=[HERE], cwd=HERE,
                               loglevel="INFO")
        self.workers.append(worker)
        worker.start()
        if self.broker_url.startswith("redis") and not KOMBU_SWEEPS_AS_CONFIGURED:
            self._start_sweeping()
        return worker

    def sized(self, claimed: int, naive: int) -> range:
        """Records ``0..n``: more under the claim, a handful for the naive control."""
        return range(claimed if self.claimed else naive)

    def _start_sweeping(self) -> None:
        """kombu's own sweep for messages past their visibility timeout, every second."""
        if self._sweeper is not None:
            return
        app = self.module.app

        def sweep() -> None:
            while not self._sweeping.wait(1.0):
                try:
                    with app.connection_for_read(self.broker_url) as conn:
                        conn.default_channel.qos.restore_visible(num=1000, interval=1)
                except Exception:  # the broker may be restarting: sweep again
                    continue

        self._sweeper = threading.Thread(target=sweep, name="kombu-sweep", daemon=True)
        self._sweeper.start()

    def ready(self) -> None:
        for worker in self.workers:
            worker.ready(timeout=60)

    def node(self, worker: WorkerProcess) -> Any:
        """The worker as a pytest-celery node (``wait_for_log``, ``assert_log_exists``...)."""
        return local_worker_node(worker, self.module.app)

    def queue(self, suffix: str) -> str:
        """A further queue of this scenario (give it to :meth:`worker`)."""
        return f"{self.name}.{suffix}"

    # --- delivering ---------------------------------------------------------------------

    def publish(self, task_name: str, calls: Iterable[Sequence[Any] | dict[str, Any]],
                copies: int = 2, *, same_id: bool = True, **options: Any) -> list[str]:
        """Publish every call ``copies`` times, back to back.

        With one task id per call (the same message again), or with
        ``same_id=False`` a new task id for every copy (a producer that retried).
        """
        options.setdefault("queue", self.name)
        task = getattr(self.module, task_name)
        if same_id:
            self.published = publish_duplicates(task, calls, copies, **options)
            return self.published
        ids = self.published = []
        with task.app.producer_or_acquire() as producer:
            for call in calls:
                for _ in range(copies):
                    ids.append(str(uuid.uuid4()))
                    task.apply_async(tuple(call), task_id=ids[-1], producer=producer, **options)
        return ids

    def claim_store(self) -> ClaimStore:
        if self._store is None:
            self._store = ClaimStore(self.database_url, table=self.table, create_schema=False)
        return self._store

    def drain(self, timeout: float = 120.0, settle: float = 2.0,
              claims: bool | None = None) -> None:
        """Wait until nothing is queued or unacknowledged and no claim is running."""
        store = self.claim_store() if (self.claimed if claims is None else claims) else None
        if store is not None and not sa.inspect(self.engine).has_table(self.table):
            store = None  # no worker got as far as creating it
        if self.vhost is not None:
            self._drain_amqp(store, timeout, settle)
            return
        try:
            wait_until_drained(self.broker_url, self.queues, key_prefix=f"{self.name}:",
                               store=store, settle=settle, timeout=timeout, interval=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def _drain_amqp(self, store: ClaimStore | None, timeout: float, settle: float) -> None:
        quiet_since: list[float] = []
        last: dict[str, int] = {}

        def drained() -> bool:
            last["running claims"] = (
                len(store.list_claims(state="running", limit=100)) if store else 0)
            last["ready messages"] = self.amqp_ready()
            if any(last.values()):
                quiet_since.clear()
                return False
            quiet_since.append(time.monotonic())
            if quiet_since[-1] - quiet_since[0] < settle:
                return False
            # Quiet for a while: now the (slow) count of unacknowledged messages too.
            last["messages"] = self.amqp_messages()
            if last.pop("messages"):
                quiet_since.clear()
                return False
            return True

        wait_for(drained, timeout, interval=0.5,
                 message=lambda: f"work still in progress: {last}\n{self.logs()}")

    # --- holding bodies -------------------------------------------------------------------

    def held(self, kind: str) -> dict[int, int]:
        """Records whose first body is holding, and the pid holding each."""
        found = self.redis.hgetall(f"{self.name}:held:{kind}")
        return {int(k): int(v) for k, v in found.items()}

    def go(self, kind: str, record_id: int) -> None:
        """Let the held body of ``record_id`` finish."""
        self.redis.set(f"{self.name}:go:{kind}:{record_id}", 1)

    def worker_of(self, pid: int) -> WorkerProcess:
        """The worker a process belongs to (its main process or a pool child)."""
        for worker in self.workers:
            if pid in worker.group_pids():
                return worker
        raise LookupError(f"pid {pid} belongs to no worker of this scenario")

    # --- counting -------------------------------------------------------------------------

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

    def effect_rows(self, kind: str, record_id: int) -> list[Any]:
        """(token, pid, task_id) of each effect of one record."""
        return self.rows(f'SELECT token, pid, task_id FROM "{self.table}_effects" '
                         "WHERE kind = :kind AND record_id = :record ORDER BY id",
                         kind=kind, record=record_id)

    def body_starts(self, kind: str) -> dict[int, int]:
        found = {}
        for key in self.redis.scan_iter(f"{self.name}:body:{kind}:*", count=1000):
            found[int(key.decode().rsplit(":", 1)[1])] = int(self.redis.get(key) or 0)
        return found

    def marker(self, name: str) -> int:
        return int(self.redis.get(f"{self.name}:{name}") or 0)

    def observed(self, task: str, state: str | None = None, *,
                 redelivered: bool | None = None, retval_like: str | None = None) -> int:
        """Deliveries of ``task`` that ended in ``state`` (every state if None)."""
        sql = f'SELECT count(*) FROM "{self.table}_observations" WHERE task_name = :task'
        params: dict[str, Any] = {"task": task}
        if state is not None:
            sql += " AND state = :state"
            params["state"] = state
        if redelivered is not None:
            sql += " AND redelivered = :redelivered"
            params["redelivered"] = redelivered
        if retval_like is not None:
            sql += " AND retval LIKE :like"
            params["like"] = retval_like
        return int(self.scalar(sql, **params))

    def failures(self, kind: str, records: Iterable[int]) -> tuple[dict[int, int], list[int]]:
        """Records that ran more than once (with their effect counts), and records lost."""
        effects = self.effects_per_record(kind)
        doubled = {r: n for r, n in sorted(effects.items()) if n > 1}
        return doubled, sorted(set(records) - set(effects))

    def assert_outcome(self, kind: str, records: Iterable[int]) -> None:
        """The claim runs each record once; its naive control doubles or loses some."""
        expected = list(records)
        if self.claimed:
            self.assert_each_once(kind, expected)
            doubled, lost = self.failures(kind, expected)
        else:
            doubled, lost = self.failures(kind, expected)
            assert doubled or lost, (
                f"the naive control ran each of {len(expected)} records once: the scenario "
                "cannot see the failure it rules out")
        print(f"OUTCOME guard={self.guard} kind={kind} records={len(expected)} "
              f"doubled={len(doubled)} lost={len(lost)}")

    def never_claimed(self, kind: str, records: Sequence[int]) -> list[int]:
        """Records with no effect whose task id (from the last :meth:`publish`, one
        per record) no claim ever saw: their messages never reached a body."""
        effects = self.effects_per_record(kind)
        return [record for record, task_id in zip(records, self.published, strict=True)
                if record not in effects and not self.scalar(
                    f'SELECT count(*) FROM "{self.table}" WHERE task_id = :id', id=task_id)]

    def assert_each_once(self, kind: str, records: Iterable[int]) -> None:
        """Exactly one effect per record, none lost; under claims, each committed by its claim.

        A claimed effect must carry the token of the claim that completed
        (state ``succeeded``): nothing was written under a claim that was lost.
        """
        expected = set(records)
        effects = self.effects_per_record(kind)
        doubled = {r: n for r, n in sorted(effects.items()) if n > 1}
        lost = sorted(expected - set(effects))
        assert (doubled, lost) == ({}, []), (
            f"{kind}: {len(doubled)} of {len(expected)} records ran more than once "
            f"(record: effects {dict(list(doubled.items())[:10])}), {len(lost)} lost "
            f"{lost[:10]}")
        assert set(effects) == expected, sorted(set(effects) - expected)
        if not kind.startswith("naive_"):
            unfenced = self.scalar(
                f'SELECT count(*) FROM "{self.table}_effects" e WHERE e.kind = :kind AND NOT '
                f'EXISTS (SELECT 1 FROM "{self.table}" c WHERE c.task_id = e.task_id AND '
                "c.token = e.token AND c.state = 'succeeded')", kind=kind)
            assert unfenced == 0, f"{unfenced} effects were not committed by a completed claim"
            unfinished = self.rows(f'SELECT key, state, token FROM "{self.table}" '
                                   "WHERE state <> 'succeeded' LIMIT 10")
            assert not unfinished, f"claims left unfinished: {unfinished}"

    def terminate_backends(self, ports: set[int]) -> int:
        """End the PostgreSQL sessions whose client ports are ``ports``; return how many."""
        if not ports:
            return 0
        ended = self.rows("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE client_port = ANY(:ports) AND pid <> pg_backend_pid()",
                          ports=sorted(ports))
        return sum(1 for row in ended if row[0])

    # --- reporting and cleaning up --------------------------------------------------------------

    def logs(self) -> str:
        return "\n".join(f"===== {w.name}\n{w.log_tail(80)}" for w in self.workers)

    def close(self, failed: bool) -> None:
        if failed:
            print(self.logs())
        self._sweeping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        for key in self.redis.scan_iter(f"{self.name}:held:*", count=1000):
            kind = key.decode().rsplit(":", 1)[1]
            for record in self.redis.hkeys(key):
                self.go(kind, int(record))
        self.stop_workers()
        if self._store is not None:
            self._store.dispose()
        with self.engine.begin() as conn:
            for suffix in ("_effects", "_observations", "_records", ""):
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{self.table}{suffix}"'))
        self.engine.dispose()
        self.delete_keys(self.redis)
        self.redis.close()
        if self.vhost is not None:
            rabbitmqctl("delete_vhost", self.vhost)
        _clear_test_environment()

    def stop_workers(self) -> None:
        """Stop every worker (resumed first: a paused worker cannot shut down)."""
        for worker in self.workers:
            if worker.running:
                worker.resume()
        stop_all(self.workers, timeout=10)
        for worker in self.workers:
            worker.close()

    def delete_keys(self, client: redis.Redis) -> None:
        keys = list(client.scan_iter(f"{self.name}*", count=1000))
        keys += [k for k in client.scan_iter("_kombu*", count=1000) if self.name.encode() in k]
        if keys:
            client.delete(*keys)


def unavailable(what: str, exc: BaseException) -> None:
    """Skip locally, fail in CI (as tests/conftest.py's real-service fixtures do)."""
    message = f"{what} is not reachable: {exc}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (CI=true: real services are required)")
    pytest.skip(message)


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` (the management API may not be enabled)."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        unavailable("rabbitmqctl", FileNotFoundError("rabbitmqctl is not on PATH"))
    return subprocess.run([str(exe), "-q", *args], check=True, capture_output=True, text=True,
                          timeout=120).stdout


def _clear_test_environment() -> None:
    for name in [name for name in os.environ if name.startswith("CLAIM_TEST_")]:
        del os.environ[name]
