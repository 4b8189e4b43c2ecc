"""One proof run's resources in the parent process, each removed when the run ends.

A :class:`Harness` is built inside an ``ExitStack``: the claims table and
the run's own tables are created, Redis is reached (when it is the broker),
and every worker started is registered to be killed and its log removed when
the stack unwinds; the tables and the Redis keys are dropped too, unless the
run keeps them. :func:`exit_on_sigterm` makes SIGTERM unwind the stack like
Ctrl-C does. What a run counts is in :mod:`celery_claim.proof.counting`.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from celery_claim.proof import background
from celery_claim.proof.config import RunConfig, RunTables
from celery_claim.store import ClaimStore
from celery_claim.testing.workers import WorkerProcess

__all__ = ["Harness", "exit_on_sigterm", "hide_password"]

#: Workers younger than this are not killed: a kill then tests start-up, not the claim.
SETTLE_SECONDS = 5.0


def hide_password(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


class _RunWorker(WorkerProcess):
    def environment(self) -> dict[str, str]:
        # A run's settings are explicit; the user's CELERY_CLAIM_* must not leak in.
        return {k: v for k, v in super().environment().items()
                if not k.startswith("CELERY_CLAIM_")}


class Harness:
    """A run's store, tables, Redis keys and workers; ``error`` is what its failures raise."""

    def __init__(self, config: RunConfig, tables: RunTables, stack: ExitStack, *,
                 app_module: str, keep: bool = False,
                 error: type[Exception] = RuntimeError) -> None:
        self.config = config
        self.stack = stack
        self.app_module = app_module
        self.error = error
        self.redis: Any = None
        if config.broker_url.startswith("redis"):
            self._reach_redis(keep)
        self.store = ClaimStore(config.database_url, table=config.claims_table)
        stack.callback(self.store.dispose)
        self.store.create_schema()
        tables.metadata.create_all(self.store.engine)
        if not keep:
            stack.callback(self.store.drop_schema)
            stack.callback(tables.metadata.drop_all, self.store.engine)
        self.workers: list[WorkerProcess] = []
        self.started_at: dict[str, float] = {}
        self.kills = {"pool process": 0, "worker": 0}
        self._numbers = itertools.count(1)

    def _reach_redis(self, keep: bool) -> None:
        import redis

        self.redis = redis.Redis.from_url(self.config.broker_url)
        self.stack.callback(self.redis.close)
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            url = hide_password(self.config.broker_url)
            raise self.error(f"cannot reach Redis at {url}: {exc}") from exc
        if not keep:
            self.stack.callback(self.delete_keys)

    # --- workers ------------------------------------------------------------------

    def start_worker(self, pool: str, concurrency: int, *,
                     log_dir: Path | None = None) -> WorkerProcess:
        """Start one worker of the run's app on its queue (without waiting until it is ready)."""
        n = next(self._numbers)
        config = self.config
        worker = _RunWorker(self.app_module, pool=pool, concurrency=concurrency,
                            queues=[config.queue], loglevel="WARNING", env=config.env(),
                            log_path=log_dir / f"worker{n}.log" if log_dir else None,
                            hostname=f"{config.kind}{n}-{config.name}@%h")
        self.stack.callback(worker.close)
        self.stack.callback(worker.kill)
        worker.start()
        self.started_at[worker.hostname] = time.monotonic()
        self.workers.append(worker)
        return worker

    def start_workers(self, pools: Sequence[str], concurrency: int, *, timeout: float,
                      log_dir: Path | None = None) -> None:
        """Start a worker per pool and wait until they all consume."""
        try:
            for pool in pools:
                self.start_worker(pool, concurrency, log_dir=log_dir)
            for worker in self.workers:
                worker.ready(timeout=timeout)
        except Exception as exc:
            raise self.error(f"a {self.config.kind} worker did not start: {exc}"
                             .splitlines()[0]) from exc

    def check_workers(self) -> None:
        """Fail fast, with the log's last line, if a worker process exited."""
        for worker in self.workers:
            if not worker.running:
                tail = [line for line in worker.log_tail(20).splitlines() if line.strip()]
                raise self.error(f"worker {worker.name} exited: {tail[-1] if tail else '?'}")

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a pool process (7 times in 10), or a whole worker, then start its replacement."""
        settled = [w for w in self.workers
                   if w.running and time.monotonic() - self.started_at[w.hostname]
                   > SETTLE_SECONDS]
        children = [(w, pid) for w in settled if w.pool == "prefork" for pid in w.child_pids()]
        if children and rng.random() < 0.7:
            worker, pid = rng.choice(children)
            with contextlib.suppress(Exception):  # it may have just exited
                worker.kill(pid)
                self.kills["pool process"] += 1
            return
        if not settled:
            return
        worker = rng.choice(settled)
        worker.kill()
        self.kills["worker"] += 1
        self.workers.remove(worker)
        self.start_worker(worker.pool, worker.concurrency)

    @contextlib.contextmanager
    def killing(self, per_minute: float) -> Iterator[None]:
        """Call :meth:`kill_one` ``per_minute`` times a minute on average until the block ends.

        The kills come from a background thread at random (exponential) gaps,
        while the run publishes and while it drains. A kill that fails ends
        the block with the run's error.
        """
        if per_minute <= 0:
            yield
            return
        rng = random.Random()
        failed: list[Exception] = []

        def kill() -> None:
            if not failed:
                try:
                    self.kill_one(rng)
                except Exception as exc:
                    failed.append(exc)

        with background.repeating(kill, lambda: rng.expovariate(per_minute / 60.0),
                                  name="proof-killer"):
            yield
        if failed:
            raise self.error(f"a kill failed: {failed[0]}".splitlines()[0]) from failed[0]

    # --- Redis ---------------------------------------------------------------------

    def delete_keys(self) -> None:
        """Remove every Redis key of the run: its queue and kombu's bookkeeping."""
        keys = list(self.redis.scan_iter(match=f"{self.config.key_prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            self.redis.delete(*keys[start:start + 1000])


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so the workers, tables and temp files are cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
