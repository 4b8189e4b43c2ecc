"""The process harness in celery_claim.testing, proven on real processes.

Real ``celery worker`` processes, the shared test Redis (and PostgreSQL for
the proxy), throwaway ``redis-server`` processes. Each test has its own
namespace (queue and kombu key prefix, see ``harness_app``) and deletes its
keys afterwards; every worker is stopped and its process group checked empty.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness_app
import psycopg
import pytest
import redis
from celery import Celery

from celery_claim.testing import (
    RedisServer,
    TcpProxy,
    WaitTimeout,
    WorkerFailed,
    WorkerProcess,
    local_worker_node,
    process_alive,
    publish_duplicates,
    queue_length,
    stop_all,
    wait_for,
)

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

HERE = Path(__file__).parent

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture(scope="session")
def effects_redis(redis_url: str) -> Iterator[redis.Redis]:
    assert redis_url == harness_app.REDIS_URL
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def namespace(effects_redis: redis.Redis) -> Iterator[str]:
    name = f"harness-{uuid.uuid4().hex[:10]}"
    yield name
    keys = list(effects_redis.scan_iter(f"{name}:*", count=1000))
    if keys:
        effects_redis.delete(*keys)


@pytest.fixture
def app(namespace: str) -> Iterator[Celery]:
    app = harness_app.create_app(namespace)
    yield app
    app.close()


@pytest.fixture
def start_worker(namespace: str) -> Iterator[StartWorker]:
    """Start harness_app workers on the test's queue; all are stopped afterwards."""
    workers: list[WorkerProcess] = []

    def start(**options: Any) -> WorkerProcess:
        env = {"HARNESS_NAMESPACE": namespace, **options.pop("env", {})}
        worker = WorkerProcess(
            "harness_app", queues=[namespace], env=env, pythonpath=[HERE], **options
        )
        workers.append(worker)
        return worker.start()

    yield start
    stop_all(workers)
    for worker in workers:
        worker.close()


@pytest.fixture
def redis_server_binary() -> None:
    """Skip without redis-server locally; fail in CI, where it must be installed."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")


def effects(client: redis.Redis, namespace: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in client.hgetall(f"{namespace}:effects").items()}


def pid_of(client: redis.Redis, namespace: str, what: str, token: str) -> int | None:
    value = client.hget(f"{namespace}:{what}", token)
    return None if value is None else int(value)


def test_two_workers_share_a_queue_and_run_every_message(
    start_worker: StartWorker, app: Celery, namespace: str, effects_redis: redis.Redis
) -> None:
    started = time.monotonic()
    workers = [
        start_worker(pool="prefork", concurrency=2),
        start_worker(pool="threads", concurrency=4),
    ]
    for worker in workers:
        worker.ready()
    print(f"two workers ready in {time.monotonic() - started:.2f}s")

    record = app.tasks["harness.record"]
    tokens = [f"t{i}" for i in range(200)]
    with app.producer_or_acquire() as producer:
        for token in tokens:
            record.apply_async((token,), producer=producer)

    wait_for(
        lambda: sum(effects(effects_redis, namespace).values()) == 200,
        timeout=30,
        message=lambda: f"ran {sum(effects(effects_redis, namespace).values())} of 200",
    )
    assert effects(effects_redis, namespace) == dict.fromkeys(tokens, 1)
    hosts = {str(k) for k in effects_redis.hkeys(f"{namespace}:hosts")}
    assert hosts == {w.hostname for w in workers}
    assert queue_length(harness_app.REDIS_URL, namespace, key_prefix=f"{namespace}:") == 0


def test_duplicate_publishes_all_run_without_a_guard(
    start_worker: StartWorker, app: Celery, namespace: str, effects_redis: redis.Redis
) -> None:
    start_worker(pool="threads", concurrency=4, loglevel="ERROR").ready()

    ids = publish_duplicates(app.tasks["harness.record"], [[f"d{i}"] for i in range(20)], 3)

    assert len(set(ids)) == 20
    wait_for(
        lambda: sum(effects(effects_redis, namespace).values()) == 60,
        message=lambda: f"effects so far: {effects(effects_redis, namespace)}",
    )
    assert set(effects(effects_redis, namespace).values()) == {3}


def test_ready_reports_a_worker_that_cannot_start() -> None:
    worker = WorkerProcess("no_such_module_for_harness")
    worker.start()
    try:
        with pytest.raises(WorkerFailed, match="no_such_module_for_harness"):
            worker.ready(timeout=20)
    finally:
        worker.close()
    assert worker.returncode not in (None, 0)


def test_kill_takes_the_whole_process_group(
    start_worker: StartWorker, app: Celery, namespace: str, effects_redis: redis.Redis
) -> None:
    worker = start_worker(pool="prefork", concurrency=2)
    worker.ready()
    children = worker.child_pids()
    assert len(children) == 2
    assert worker.group_pids() == sorted([worker.pid, *children])
    app.tasks["harness.slow"].delay("busy", 30)
    busy = wait_for(lambda: pid_of(effects_redis, namespace, "started", "busy"))
    assert busy in children

    worker.kill()

    assert not worker.running
    assert worker.returncode == -9
    assert not any(process_alive(pid) for pid in [worker.pid, *children])
    assert "ready." in worker.logs()


def test_kill_of_one_pool_child_leaves_the_worker_running(
    start_worker: StartWorker, app: Celery, namespace: str, effects_redis: redis.Redis
) -> None:
    worker = start_worker(pool="prefork", concurrency=2)
    worker.ready()
    app.tasks["harness.slow"].delay("doomed", 30)
    busy = wait_for(lambda: pid_of(effects_redis, namespace, "started", "doomed"))

    worker.kill(busy)

    assert worker.running
    worker.wait_for_log("WorkerLostError")
    wait_for(lambda: len(worker.child_pids()) == 2 and busy not in worker.child_pids())


def test_pause_and_resume_a_pool_child_and_the_whole_worker(
    start_worker: StartWorker, app: Celery, namespace: str, effects_redis: redis.Redis
) -> None:
    worker = start_worker(pool="prefork", concurrency=1)
    worker.ready()

    app.tasks["harness.slow"].delay("held", 0.2)
    child = wait_for(lambda: pid_of(effects_redis, namespace, "started", "held"))
    assert worker.child_pids() == [child]
    worker.pause(child)
    time.sleep(0.6)
    assert pid_of(effects_redis, namespace, "done", "held") is None
    worker.resume(child)
    wait_for(lambda: pid_of(effects_redis, namespace, "done", "held"))

    worker.pause()
    app.tasks["harness.record"].delay("while-paused")
    time.sleep(0.6)
    assert effects(effects_redis, namespace) == {}
    worker.resume()
    wait_for(lambda: effects(effects_redis, namespace) == {"while-paused": 1})


def test_stop_is_a_warm_shutdown(
    start_worker: StartWorker, app: Celery, namespace: str, effects_redis: redis.Redis
) -> None:
    worker = start_worker(pool="threads", concurrency=1)
    worker.ready()
    app.tasks["harness.slow"].delay("finishing", 0.5)
    wait_for(lambda: pid_of(effects_redis, namespace, "started", "finishing"))

    assert worker.stop() == 0

    assert pid_of(effects_redis, namespace, "done", "finishing") == worker.pid
    assert "Warm shutdown" in worker.logs()


@pytest.mark.postgres
def test_proxy_cut_refuses_postgres_until_restored(database_url: str) -> None:
    libpq_url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with TcpProxy.for_url(libpq_url) as proxy:
        url = proxy.url(libpq_url)
        with psycopg.connect(url, connect_timeout=3) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            proxy.cut()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError, match="refused"):
            psycopg.connect(url, connect_timeout=3)

        proxy.restore()
        with psycopg.connect(url, connect_timeout=3) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
            proxy.drop_connections()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        with psycopg.connect(url, connect_timeout=3) as conn:
            assert conn.execute("SELECT 3").fetchone() == (3,)


def ping(sock: socket.socket) -> bytes:
    sock.sendall(b"PING\r\n")
    return sock.recv(64)


def reset(sock: socket.socket) -> bool:
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


def test_proxy_blackhole_holds_connections_silent(effects_redis: redis.Redis) -> None:
    port = effects_redis.connection_pool.connection_kwargs["port"]
    with TcpProxy("127.0.0.1", port) as proxy:
        before = socket.create_connection(("127.0.0.1", proxy.port), timeout=0.3)
        assert ping(before) == b"+PONG\r\n"

        proxy.cut("blackhole")
        during = socket.create_connection(("127.0.0.1", proxy.port), timeout=0.3)
        for sock in (before, during):
            with pytest.raises(TimeoutError):
                ping(sock)

        proxy.restore()
        for sock in (before, during):
            assert reset(sock)
            sock.close()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=1) as after:
            assert ping(after) == b"+PONG\r\n"
        assert proxy.active_connections <= 1


@pytest.mark.usefixtures("redis_server_binary")
@pytest.mark.parametrize("persistent", [False, True])
def test_redis_server_restart_keeps_data_only_when_persistent(persistent: bool) -> None:
    with RedisServer(persistent=persistent) as server:
        client = redis.Redis.from_url(server.url())
        client.set("key", "value")
        client.close()

        server.restart()

        client = redis.Redis.from_url(server.url())
        assert client.get("key") == (b"value" if persistent else None)
        client.close()
    assert not server.running
    assert not server.directory.exists()


@pytest.mark.usefixtures("redis_server_binary")
def test_worker_reconnects_after_its_broker_restarts(
    start_worker: StartWorker, namespace: str, effects_redis: redis.Redis
) -> None:
    with RedisServer() as server:
        app = harness_app.create_app(namespace, broker_url=server.url())
        worker = start_worker(
            pool="threads", concurrency=2, env={"HARNESS_BROKER_URL": server.url()}
        )
        try:
            worker.ready()
            app.tasks["harness.record"].delay("before")
            wait_for(lambda: effects(effects_redis, namespace) == {"before": 1})

            server.restart()

            wait_for(lambda: worker.logs().count("Connected to") >= 2, timeout=20)
            app.tasks["harness.record"].delay("after")
            wait_for(lambda: effects(effects_redis, namespace) == {"before": 1, "after": 1})
        finally:
            app.close()
            worker.stop()


def test_pytest_celery_nodes_drive_a_local_worker(
    start_worker: StartWorker, app: Celery, namespace: str, effects_redis: redis.Redis
) -> None:
    from pytest_celery import CeleryTestSetup, CeleryWorkerCluster

    worker = start_worker(pool="solo")
    node = local_worker_node(worker, app)
    setup = CeleryTestSetup(CeleryWorkerCluster(node), None, None, app)

    assert setup.ready(control=True)
    assert node.hostname() == worker.hostname
    assert node.worker_queue == namespace
    assert [p["pid"] for p in node.get_running_processes_info(["pid"])] == [worker.pid]
    app.tasks["harness.record"].delay("via-node")
    node.wait_for_log("succeeded", timeout=10)
    node.kill()
    assert node.container.status == "exited"
    node.restart()
    assert node.container.status == "running"
    app.tasks["harness.record"].delay("after-restart")
    wait_for(lambda: effects(effects_redis, namespace) == {"via-node": 1, "after-restart": 1})


def test_wait_for_returns_the_value_or_raises_with_the_message() -> None:
    assert wait_for(lambda: 42, timeout=0.1) == 42
    with pytest.raises(WaitTimeout, match="never true"):
        wait_for(lambda: 0, timeout=0.1, message="never true")
    with pytest.raises(WaitTimeout, match="computed late") as info:
        wait_for(lambda: None, timeout=0.05, message=lambda: "computed late")
    assert isinstance(info.value, AssertionError)
    assert isinstance(info.value, TimeoutError)
