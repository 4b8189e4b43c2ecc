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
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from celery_claim import _demo_app
from celery_claim.proof import display
from celery_claim.proof.harness import Harness, RunOptions, exit_on_sigterm, hide_password

__all__ = ["DemoError", "DemoOptions", "DemoReport", "SideResult", "run"]

SIDES = ((_demo_app.NAIVE, "check-then-act", "demo.naive_charge"),
         (_demo_app.CLAIM, "ClaimTask", "demo.claim_charge"))


class DemoError(RuntimeError):
    """The demo could not run (a worker failed to start, or it timed out)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SideResult(display.Side):
    """What one version of the task did with the same duplicated jobs."""

    jobs: int
    charges: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoOptions(RunOptions):
    """``celery-claim demo``'s options; without URLs, the embedded default."""

    database_url: str | None = None
    broker_url: str | None = None
    jobs: int = 100
    timeout: float = 180.0


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


class _Demo:
    """One demo run: the harness on its own temporary directory, the orders, the counts."""

    def __init__(self, options: DemoOptions, stack: ExitStack) -> None:
        self.options = options
        self.tmp = Path(tempfile.mkdtemp(prefix="celery-claim-demo-"))
        if not options.keep:
            stack.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        database_url = options.database_url or f"sqlite:///{self.tmp / 'claims.db'}"
        broker_url = options.broker_url or "filesystem://"
        self.config = _demo_app.DemoConfig(name=uuid.uuid4().hex[:8], database_url=database_url,
                                           broker_url=broker_url, broker_dir=str(self.tmp))
        self.store_text = (hide_password(database_url) if options.database_url else
                           f"SQLite in {self.tmp} (embedded default: no database configured)")
        self.broker_text = (hide_password(broker_url) if options.broker_url else
                            "kombu filesystem transport (embedded default: no broker "
                            "configured)")
        for folder in ("queue", "processed", "control"):
            (self.tmp / folder).mkdir()
        self.tables = _demo_app.DemoTables(self.config)
        self.harness = Harness(self.config, self.tables, stack, app_module="celery_claim._demo_app",
                               keep=options.keep, error=DemoError)
        self.app = _demo_app.make_app(self.config)

    def seed(self) -> None:
        rows = [{"side": side, "id": i, "amount_cents": 1000 + i, "charged": False}
                for side, _, _ in SIDES for i in range(self.options.jobs)]
        with self.harness.store.engine.begin() as conn:
            conn.execute(self.tables.orders.insert(), rows)

    def start_workers(self) -> None:
        options = self.options
        self.harness.start_workers(["prefork"] * options.workers, options.concurrency, timeout=60,
                                   log_dir=self.tmp if options.keep else None)

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
        with self.harness.store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(runs)
                                    .where(runs.c.side == side)).scalar_one())

    def result(self, side: str, label: str, seconds: float) -> SideResult:
        runs = self.tables.runs
        charged, extra, _ = self.harness.effects(self.tables.charges, "order_id", side)
        with self.harness.store.engine.connect() as conn:
            suppressed = conn.execute(
                sa.select(sa.func.count()).select_from(runs)
                .where(runs.c.side == side, runs.c.outcome != "charged")).scalar_one()
        return SideResult(label=label, jobs=self.options.jobs,
                          deliveries=self.options.jobs * self.options.copies,
                          charges=charged + extra, double_effects=extra,
                          suppressed=int(suppressed), lost=self.options.jobs - charged,
                          seconds=round(seconds, 2))


def run(options: DemoOptions, *, quiet: bool = False) -> DemoReport:
    """Run the demo and return what each version did; prints progress and the table.

    Worker processes, temporary files, tables and Redis keys are removed when
    it ends, also on Ctrl-C and SIGTERM.
    """
    with exit_on_sigterm():
        return _run(options, quiet)


def _run(options: DemoOptions, quiet: bool) -> DemoReport:
    from rich.console import Console

    console = Console(stderr=quiet, quiet=quiet, highlight=False)
    deliveries = options.jobs * options.copies
    with ExitStack() as stack:
        demo = _Demo(options, stack)
        console.print(f"[bold]celery-claim demo[/]: {options.jobs} orders, each published "
                      f"{options.copies} times at once, {options.workers} workers x "
                      f"{options.concurrency} processes")
        console.print(f"  claim store: {demo.store_text}")
        console.print(f"  broker:      {demo.broker_text}")
        demo.seed()
        with console.status("starting workers...", spinner="dots"):
            demo.start_workers()
        results = {}
        with display.progress(console, quiet=quiet) as bars:
            tasks = {side: bars.add_task(label, total=deliveries, start=False, info="deliveries")
                     for side, label, _ in SIDES}
            for side, label, task_name in SIDES:
                bars.start_task(tasks[side])
                started = time.monotonic()
                demo.publish(task_name)
                while (count := demo.done(side)) < deliveries:
                    bars.update(tasks[side], completed=count)
                    demo.harness.check_workers()
                    if time.monotonic() - started > options.timeout:
                        raise DemoError(f"{label}: only {count} of {deliveries} deliveries "
                                        f"were processed in {options.timeout:g}s")
                    time.sleep(0.1)
                bars.update(tasks[side], completed=deliveries)
                bars.stop_task(tasks[side])
                results[side] = demo.result(side, label, time.monotonic() - started)
    report = DemoReport(name=demo.config.name, claim_store=demo.store_text, broker=demo.broker_text,
                        processes=options.workers * options.concurrency,
                        naive=results[_demo_app.NAIVE], claim=results[_demo_app.CLAIM])
    if not quiet:
        print_report(report, console)
    return report


def print_report(report: DemoReport, console: Any = None) -> None:
    """The results table and what it means."""
    from rich.console import Console

    console = console or Console(highlight=False)
    rows = [[side.label, str(side.jobs), str(side.deliveries),
             display.flagged(str(side.double_effects), side.failed),
             str(side.suppressed), display.flagged(str(side.lost), side.failed),
             f"{side.throughput:.0f}/s"] for side in (report.naive, report.claim)]
    console.print(display.results_table(
        "duplicate delivery: the same jobs, two ways",
        ["jobs", "deliveries", "double\neffects", "suppressed\nduplicates", "lost\njobs",
         "throughput"], rows))
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
