"""``celery-claim demo``: the duplicate charge, told in one command.

It starts real ``celery worker`` processes, publishes every order several
times at once (a producer that retried), and runs the same charge job twice
over: as a naive check-then-act task, then as a :class:`ClaimTask`. Then it
counts the charges each version made.

With nothing configured it runs on an embedded default: a SQLite file for the
claim store and kombu's filesystem transport as the broker, both in a fresh
temporary directory. With a database URL and a broker URL it runs on
PostgreSQL and Redis, in tables, a queue and keys of its own that it removes
afterwards.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from celery_claim import _demo_app
from celery_claim.store import ClaimStore
from celery_claim.testing import WorkerProcess

__all__ = ["DemoError", "DemoOptions", "DemoReport", "SideResult", "run"]

SIDES = ((_demo_app.NAIVE, "check-then-act", "demo.naive_charge"),
         (_demo_app.CLAIM, "ClaimTask", "demo.claim_charge"))


class DemoError(RuntimeError):
    """The demo could not run (a worker failed to start, or it timed out)."""


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    database_url: str | None = None
    broker_url: str | None = None
    jobs: int = 100
    copies: int = 3
    workers: int = 2
    concurrency: int = 2
    timeout: float = 180.0
    keep: bool = False


@dataclasses.dataclass(frozen=True)
class SideResult:
    """What one version of the task did with the same duplicated jobs."""

    label: str
    jobs: int
    deliveries: int
    charges: int
    double_effects: int
    suppressed: int
    lost: int
    seconds: float

    @property
    def throughput(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "throughput": round(self.throughput, 1)}


@dataclasses.dataclass(frozen=True)
class DemoReport:
    name: str
    claim_store: str
    broker: str
    processes: int
    naive: SideResult
    claim: SideResult

    @property
    def ok(self) -> bool:
        """ClaimTask charged every order exactly once."""
        return self.claim.double_effects == 0 and self.claim.lost == 0

    def failure_reason(self) -> str:
        return (f"made {self.claim.double_effects} double charge(s) and lost "
                f"{self.claim.lost} job(s)")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "claim_store": self.claim_store, "broker": self.broker,
                "processes": self.processes, "naive": self.naive.as_dict(),
                "claim": self.claim.as_dict(), "ok": self.ok}


def _hide_password(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


class _DemoWorker(WorkerProcess):
    def environment(self) -> dict[str, str]:
        # The demo's settings are explicit; the user's CELERY_CLAIM_* must not leak in.
        return {k: v for k, v in super().environment().items()
                if not k.startswith("CELERY_CLAIM_")}


class _Run:
    """One demo run: its config, tables, store and workers."""

    def __init__(self, options: DemoOptions, stack: ExitStack) -> None:
        self.options = options
        self.workers: list[_DemoWorker] = []
        name = uuid.uuid4().hex[:8]
        self.tmp = Path(tempfile.mkdtemp(prefix="celery-claim-demo-"))
        if not options.keep:
            stack.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        database_url = options.database_url or f"sqlite:///{self.tmp / 'claims.db'}"
        broker_url = options.broker_url or "filesystem://"
        self.config = _demo_app.DemoConfig(name=name, database_url=database_url,
                                           broker_url=broker_url, broker_dir=str(self.tmp))
        self.store_text = (_hide_password(database_url) if options.database_url else
                           f"SQLite in {self.tmp} (embedded default: no database configured)")
        self.broker_text = (_hide_password(broker_url) if options.broker_url else
                            "kombu filesystem transport (embedded default: no broker "
                            "configured)")
        for folder in ("queue", "processed", "control"):
            (self.tmp / folder).mkdir()
        self.tables = _demo_app.DemoTables(name)
        self.store = ClaimStore(database_url, table=self.config.claims_table)
        stack.callback(self.store.dispose)
        self.store.create_schema()
        self.tables.metadata.create_all(self.store.engine)
        if not options.keep:
            stack.callback(self.store.drop_schema)
            stack.callback(self.tables.metadata.drop_all, self.store.engine)
        if broker_url.startswith("redis"):
            stack.callback(_delete_redis_keys, broker_url, f"{self.config.queue}:")
        self.app = _demo_app.make_app(self.config)

    def seed(self) -> None:
        rows = [{"side": side, "id": i, "amount_cents": 1000 + i, "charged": False}
                for side, _, _ in SIDES for i in range(self.options.jobs)]
        with self.store.engine.begin() as conn:
            conn.execute(self.tables.orders.insert(), rows)

    def start_workers(self, stack: ExitStack) -> None:
        workers = [_DemoWorker("celery_claim._demo_app", pool="prefork",
                               concurrency=self.options.concurrency,
                               queues=[self.config.queue], loglevel="WARNING",
                               env=self.config.env(),
                               log_path=self.tmp / f"worker{n}.log" if self.options.keep
                               else None,
                               hostname=f"demo{n}-{self.config.name}@%h")
                   for n in range(1, self.options.workers + 1)]
        self.workers = workers
        for worker in workers:
            stack.callback(worker.close)
            stack.callback(worker.kill)
            worker.start()
        for worker in workers:
            worker.ready(timeout=60)

    def check_workers(self) -> None:
        """Fail fast, with the log's last line, if a worker process exited."""
        for worker in self.workers:
            if not worker.running:
                tail = [line for line in worker.log_tail(20).splitlines() if line.strip()]
                raise DemoError(f"worker {worker.name} exited: {tail[-1] if tail else '?'}")

    def publish(self, task_name: str) -> None:
        task = self.app.tasks[task_name]
        with self.app.connection_for_write(self.config.broker_url) as conn:
            producer = self.app.amqp.Producer(conn)
            for order_id in range(self.options.jobs):
                for _ in range(self.options.copies):
                    # A producer that retried: same job, new task id each time.
                    task.apply_async((order_id, 1000 + order_id), producer=producer)

    def done(self, side: str) -> int:
        runs = self.tables.runs
        with self.store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(runs)
                                    .where(runs.c.side == side)).scalar_one())

    def result(self, side: str, label: str, seconds: float) -> SideResult:
        t = self.tables
        with self.store.engine.connect() as conn:
            per_order = conn.execute(
                sa.select(t.charges.c.order_id, sa.func.count())
                .where(t.charges.c.side == side).group_by(t.charges.c.order_id)).all()
            suppressed = conn.execute(
                sa.select(sa.func.count()).select_from(t.runs)
                .where(t.runs.c.side == side, t.runs.c.outcome != "charged")).scalar_one()
        charges = sum(count for _, count in per_order)
        return SideResult(label=label, jobs=self.options.jobs,
                          deliveries=self.options.jobs * self.options.copies,
                          charges=charges, double_effects=charges - len(per_order),
                          suppressed=int(suppressed), lost=self.options.jobs - len(per_order),
                          seconds=round(seconds, 2))


def _delete_redis_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextmanager
def _progress(quiet: bool) -> Iterator[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description:<16}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("deliveries"), TimeElapsedColumn(),
                        disable=quiet, transient=False)
    with progress:
        yield progress


@contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so the workers and temp files are cleaned up."""
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


def run(options: DemoOptions, *, quiet: bool = False) -> DemoReport:
    """Run the demo and return what each version did; prints progress and the table.

    Worker processes, temporary files, tables and Redis keys are removed when
    it ends, also on Ctrl-C and SIGTERM.
    """
    with _exit_on_sigterm():
        return _run(options, quiet)


def _run(options: DemoOptions, quiet: bool) -> DemoReport:
    from rich.console import Console

    console = Console(stderr=quiet, quiet=quiet, highlight=False)
    deliveries = options.jobs * options.copies
    processes = options.workers * options.concurrency
    with ExitStack() as stack:
        demo = _Run(options, stack)
        console.print(f"[bold]celery-claim demo[/]: {options.jobs} orders, each published "
                      f"{options.copies} times at once, {options.workers} workers x "
                      f"{options.concurrency} processes")
        console.print(f"  claim store: {demo.store_text}")
        console.print(f"  broker:      {demo.broker_text}")
        demo.seed()
        with console.status("starting workers...", spinner="dots"):
            try:
                demo.start_workers(stack)
            except Exception as exc:
                raise DemoError(f"a demo worker did not start: {exc}".splitlines()[0]) from exc
        results = {}
        with _progress(quiet) as progress:
            bars = {side: progress.add_task(label, total=deliveries, start=False)
                    for side, label, _ in SIDES}
            for side, label, task_name in SIDES:
                progress.start_task(bars[side])
                started = time.monotonic()
                demo.publish(task_name)
                while (count := demo.done(side)) < deliveries:
                    progress.update(bars[side], completed=count)
                    demo.check_workers()
                    if time.monotonic() - started > options.timeout:
                        raise DemoError(f"{label}: only {count} of {deliveries} deliveries "
                                        f"were processed in {options.timeout:g}s")
                    time.sleep(0.1)
                progress.update(bars[side], completed=deliveries)
                progress.stop_task(bars[side])
                results[side] = demo.result(side, label, time.monotonic() - started)
    report = DemoReport(name=demo.config.name, claim_store=demo.store_text, broker=demo.broker_text,
                        processes=processes, naive=results[_demo_app.NAIVE],
                        claim=results[_demo_app.CLAIM])
    if not quiet:
        print_report(report, console)
    return report


def print_report(report: DemoReport, console: Any = None) -> None:
    """The results table and what it means."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False)
    table = Table(title="duplicate delivery: the same jobs, two ways", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    table.add_column("task", no_wrap=True)
    for column in ("jobs", "deliveries", "double\neffects", "suppressed\nduplicates",
                   "lost\njobs", "throughput"):
        table.add_column(column, justify="right", no_wrap=True)
    for side in (report.naive, report.claim):
        style = "red" if side.double_effects or side.lost else "green"
        table.add_row(side.label, str(side.jobs), str(side.deliveries),
                      f"[{style}]{side.double_effects}[/]", str(side.suppressed),
                      f"[{style}]{side.lost}[/]", f"{side.throughput:.0f}/s")
    console.print(table)
    console.print(
        f"double effects = charges beyond one per order. check-then-act charged "
        f"{report.naive.charges} times for {report.naive.jobs} orders; ClaimTask "
        f"{report.claim.charges} times. ClaimTask's time includes duplicates deferred until "
        f"the holder's lease ends (claim_on_running='defer'; the demo's lease is "
        f"{_demo_app.LEASE_SECONDS:g}s).")
    if report.ok:
        console.print("[green]ClaimTask charged every order exactly once.[/]")
    else:
        console.print(f"[red]ClaimTask {report.failure_reason()}.[/]")
