"""Worker benchmarks: real ``celery worker`` processes drain pre-published messages.

One *run* is one variant on one pool with one body length:

1. publish (while no worker runs) to a staging queue: a few warm-up
   messages, a ``start`` mark, N messages, (for the duplicate workload: a
   ``mid`` mark and a redelivered copy of each of the N messages), an ``end``
   mark;
2. start the worker(s) on the run's queue and wait until they consume;
3. rename the staging list to the run's queue, so every worker sees the
   whole backlog at once;
4. throughput = N / (end mark - start mark). The marks are plain tasks that
   write the time they ran to Redis. The ``end`` mark is the last message,
   so when it runs every other message has started; the error is at most
   one body per run.

CPU per task is read from ``/proc`` for the worker processes, PostgreSQL and
Redis between step 3 and the end. Each run has its own queue, kombu key
prefix, claims table and side table, removed afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from celery_claim import ClaimStore
from celery_claim.testing import WorkerProcess, wait_for

APPS = Path(__file__).resolve().parent / "apps"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

#: name -> (pool, concurrency per worker, number of workers)
POOLS: dict[str, tuple[str, int, int]] = {
    "prefork-2": ("prefork", 2, 1),
    "threads-4": ("threads", 4, 1),
    "threads-8": ("threads", 8, 1),
    "solo": ("solo", 1, 1),
    "solo-x2": ("solo", 1, 2),
}

#: Variants whose duplicate workload (every message delivered twice) can be measured.
DUPLICATE_VARIANTS = ("plain_late", "floor", "claim", "claim_conflict", "claim_signal",
                      "claim_metrics", "once", "dedup")
#: Those measured unless ``--duplicates`` says otherwise: the floor's is the
#: baseline of the duplicate's target, ``plain_late``'s the harness's control
#: (a copy that runs its body costs what its first delivery did).
DEFAULT_DUPLICATES = ("plain_late", "floor", "claim", "once", "dedup")


@dataclasses.dataclass(frozen=True)
class Case:
    variant: str
    pool: str
    body_ms: float
    workload: str = "single"  # or "dup": every message delivered a second time

    @property
    def label(self) -> str:
        dup = " dup" if self.workload == "dup" else ""
        return f"{self.pool} {self.body_ms:g}ms {self.variant}{dup}"


@dataclasses.dataclass
class Services:
    database_url: str
    redis_url: str
    prefetch_multiplier: int = 4
    loglevel: str = "WARNING"


def _proc_cpu() -> dict[int, tuple[str, float, float, str]]:
    """pid -> (command name, CPU seconds, CPU seconds of its reaped children,
    command line) for every process."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry.name}/stat").read_text()
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        comm = data[data.index("(") + 1 : data.rindex(")")]
        fields = data[data.rindex(")") + 2 :].split()
        found[int(entry.name)] = (comm, (int(fields[11]) + int(fields[12])) / CLOCK_TICK,
                                  (int(fields[13]) + int(fields[14])) / CLOCK_TICK,
                                  cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


#: The PostgreSQL roles a reading tells apart: the backends (a client's
#: connection: its process title names the client's address), the server's
#: other processes (WAL writer, checkpointer, background writer, autovacuum),
#: and the processes that ended between two readings, autovacuum's workers
#: above all, read off the postmaster's account of its reaped children.
POSTGRES_ROLES = ("postgres_backends", "postgres_background", "postgres_ended")
_REAPED = -1  # the pseudo-pid of the postmaster's reaped children


def _postgres_role(cmdline: str) -> str:
    title = cmdline.split(": ", 2)[-1] if cmdline.startswith("postgres: ") else ""
    # "root test 127.0.0.1(40312) idle", "root test [local] idle"
    return "postgres_backends" if ("(" in title or "[local]" in title) else "postgres_background"


def _cpu_by_role(workers: Sequence[WorkerProcess]) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds) for the workers, PostgreSQL and Redis; and
    the postmaster's reaped children under :data:`_REAPED`."""
    pids = {pid for w in workers for pid in w.group_pids()}
    found = {}
    for pid, (comm, seconds, reaped, cmdline) in _proc_cpu().items():
        if pid in pids:
            found[pid] = ("worker", seconds)
        elif comm.startswith("postgres"):
            found[pid] = (_postgres_role(cmdline), seconds)
            if not cmdline.startswith("postgres: "):  # the postmaster
                found[_REAPED] = ("postgres_ended", reaped)
        elif comm.startswith("redis-server"):
            found[pid] = ("redis", seconds)
    return found


def server_cpu_reading() -> dict[int, tuple[str, float]]:
    """A reading of PostgreSQL's processes on this machine, for :func:`server_cpu_since`."""
    return {pid: entry for pid, entry in _cpu_by_role([]).items()
            if entry[0] in POSTGRES_ROLES}


def server_cpu_since(before: dict[int, tuple[str, float]]) -> float:
    """CPU seconds PostgreSQL's processes on this machine used since ``before``
    (0 if none is visible), process by process: the server's share of a
    claim, when it runs here. Other clients' work counts too."""
    return _cpu_used(before, server_cpu_reading())["postgres"]


def _cpu_used(before: dict[int, tuple[str, float]],
              after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds by role between two readings; ``postgres`` is the sum of
    :data:`POSTGRES_ROLES`. A PostgreSQL process that ended in between counts
    under ``postgres_ended`` (what the postmaster reaped, less what the
    process had used by the first reading); other processes that ended are
    not counted (their time is gone from /proc). New ones count from zero."""
    used = dict.fromkeys(("worker", "redis", *POSTGRES_ROLES), 0.0)
    for pid, (role, seconds) in after.items():
        used[role] += seconds - before.get(pid, (role, 0.0))[1]
    for pid, (role, seconds) in before.items():
        if role in POSTGRES_ROLES and pid != _REAPED and pid not in after:
            used["postgres_ended"] -= seconds
    used["postgres"] = sum(used[role] for role in POSTGRES_ROLES)
    return used


def _start_profiler(worker: WorkerProcess, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the process that runs the task bodies (solo: the main one).

    Only the thread holding the interpreter lock is sampled (``--gil``): a
    thread blocked in a ``select`` on libpq's or kombu's socket has let go of
    it, and such a sample is a wait, not work (without ``--gil`` py-spy shows
    it in the Python frame that called ``select``).
    """
    target = worker.child_pids()[0] if worker.pool == "prefork" else worker.pid
    spy = Path(sys.executable).with_name("py-spy")
    proc = subprocess.Popen([str(spy), "record", "--pid", str(target), "--rate", "250",
                             "--format", "raw", "--output", str(out), "--nonblocking",
                             "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    return proc


def _redelivered_copy(raw: bytes) -> bytes:
    """The message as kombu's Redis transport restores it after the visibility timeout."""
    payload = json.loads(raw)
    payload["headers"]["redelivered"] = True
    payload["properties"]["delivery_info"]["redelivered"] = True
    payload["properties"]["delivery_tag"] = str(uuid.uuid4())
    return json.dumps(payload).encode()


def run_case(case: Case, messages: int, services: Services,
             log: Callable[[str], None] = lambda _: None,
             profile: Path | None = None) -> dict[str, Any]:
    """Run one case; returns its measurements (or ``{"error": ...}``)."""
    sys.path.insert(0, str(APPS))
    import bench_app  # the worker imports the same module

    run_id = uuid.uuid4().hex[:10]
    prefix = f"bench-{run_id}:"
    queue = f"bench.{run_id}"
    conf = {
        "BENCH_BROKER": services.redis_url,
        "BENCH_RESULT_BACKEND": services.redis_url,
        "BENCH_DATABASE_URL": services.database_url,
        "BENCH_VARIANT": case.variant,
        "BENCH_BODY_MS": str(case.body_ms),
        "BENCH_QUEUE": queue,
        "BENCH_KEYPREFIX": prefix,
        "BENCH_MARKS": f"{prefix}marks",
        "BENCH_TABLE": f"bench_claims_{run_id}",
        "BENCH_SIDE_TABLE": f"bench_side_{run_id}",
        "BENCH_HAND_TABLE": f"bench_hand_{run_id}",
        "BENCH_FLOOR_TABLE": f"bench_floor_{run_id}",
    }
    if case.workload == "dup":
        conf["BENCH_COUNT"] = f"{prefix}count"
    pool, concurrency, n_workers = POOLS[case.pool]
    warmup = 2 * concurrency * n_workers + 2
    client = redis.Redis.from_url(services.redis_url)
    engine = sa.create_engine(services.database_url)
    store = ClaimStore(services.database_url, table=conf["BENCH_TABLE"])
    app = bench_app.make_app(conf)
    workers: list[WorkerProcess] = []
    try:
        store.create_schema()
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {conf['BENCH_SIDE_TABLE']} (n integer)"))
            conn.execute(sa.text(bench_app.handwritten_sql(conf["BENCH_HAND_TABLE"])[0]))
            conn.execute(sa.text(bench_app.floor_sql(conf["BENCH_FLOOR_TABLE"])[0]))
        task = app.tasks[f"bench.{case.variant}"]
        mark = app.tasks["bench.mark"]
        staging = f"staging.{run_id}"
        staging_key = f"{prefix}{staging}"
        with app.producer_or_acquire() as producer:
            def send(t: Any, *args: Any) -> None:
                t.apply_async(args, queue=staging, producer=producer)

            for n in range(warmup):
                send(task, -1 - n)
            send(mark, "start")
            for n in range(messages):
                send(task, n)
            if case.workload == "dup":
                send(mark, "mid")
                # Newest first: the N originals follow the mid mark.
                originals = client.lrange(staging_key, 1, messages)
                client.lpush(staging_key, *[_redelivered_copy(raw)
                                            for raw in reversed(originals)])
            send(mark, "end")
        expected = messages * (2 if case.workload == "dup" else 1) + warmup + 2 + (
            1 if case.workload == "dup" else 0)
        assert client.llen(staging_key) == expected, (client.llen(staging_key), expected)
        env = {k: v for k, v in conf.items()}
        for _ in range(n_workers):
            workers.append(WorkerProcess(
                "bench_app", pool=pool, concurrency=concurrency, queues=[queue],  # type: ignore[arg-type]
                loglevel=services.loglevel, prefetch_multiplier=services.prefetch_multiplier,
                env=env, pythonpath=[APPS]).start())
        for worker in workers:
            worker.ready(timeout=60)
        time.sleep(0.3)  # let every worker settle into its blocking read
        profiler = _start_profiler(workers[0], profile) if profile is not None else None
        cpu_before = _cpu_by_role(workers)
        client.rename(staging_key, f"{prefix}{queue}")
        budget = 60 + messages * (2 if case.workload == "dup" else 1) * (
            0.02 + case.body_ms / 1000)

        def finished() -> bool:
            for worker in workers:
                if not worker.running:
                    raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
            return bool(client.hexists(conf["BENCH_MARKS"], "end"))

        wait_for(finished, timeout=budget, interval=0.02,
                 message=lambda: f"{case.label}: not drained; log:\n{workers[0].log_tail()}")
        cpu_after = _cpu_by_role(workers)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=30)
        marks = {k.decode(): float(v) for k, v in client.hgetall(conf["BENCH_MARKS"]).items()}
        # Wait for the last bodies to finish and be acknowledged before killing.
        wait_for(lambda: client.hlen(f"{prefix}unacked") == 0, timeout=30, interval=0.02)
        result: dict[str, Any] = {
            "case": dataclasses.asdict(case), "messages": messages, "run_id": run_id,
        }
        total = messages * (2 if case.workload == "dup" else 1)
        elapsed = marks["end"] - marks["start"]
        result["throughput"] = total / elapsed
        result["cpu_ms_per_task"] = {
            role: 1000 * seconds / total
            for role, seconds in _cpu_used(cpu_before, cpu_after).items()}
        if case.workload == "dup":
            result["first_throughput"] = messages / (marks["mid"] - marks["start"])
            result["dup_throughput"] = messages / (marks["end"] - marks["mid"])
            time.sleep(0.2)
            ran = int(client.get(conf["BENCH_COUNT"]) or 0)
            result["duplicate_bodies_run"] = ran - messages - warmup
        if case.variant.startswith("claim"):
            with engine.connect() as conn:
                done = conn.execute(sa.text(
                    f"SELECT count(*) FROM {conf['BENCH_TABLE']} "  # noqa: S608
                    "WHERE state = 'succeeded'")).scalar_one()
            result["claims_succeeded"] = done - warmup
        log(f"{case.label}: {result['throughput']:.0f}/s")
        return result
    except Exception as exc:
        tail = workers[0].log_tail(15) if workers else ""
        log(f"{case.label}: FAILED {exc!r}\n{tail}")
        return {"case": dataclasses.asdict(case), "messages": messages, "error": repr(exc)}
    finally:
        for worker in workers:
            worker.kill()
            worker.close()
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)
        for key in client.scan_iter(f"qo_bench.{case.variant}*", count=1000):
            client.delete(key)
        client.close()
        store.drop_schema()
        store.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {conf['BENCH_SIDE_TABLE']}"))
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {conf['BENCH_HAND_TABLE']}"))
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {conf['BENCH_FLOOR_TABLE']}"))
        engine.dispose()
        app.close()
