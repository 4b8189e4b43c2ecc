"""``celery-claim demo``: the duplicate charge, told in one command.

It is a short soak without kills (:mod:`celery_claim.proof.run`): it starts
real ``celery worker`` processes, publishes every order several times at
once (a producer that retried, a new task id each time), and runs the same
charge job twice over, as a naive check-then-act task and then as a
:class:`ClaimTask`. Then it counts the charges each version made.

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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from celery_claim._demo_app import DemoConfig
from celery_claim.proof import display
from celery_claim.proof.harness import exit_on_sigterm, hide_password
from celery_claim.proof.run import RunOptions, RunSetup, SideReport, config_fields
from celery_claim.proof.run import run as run_proof

__all__ = ["DemoError", "DemoOptions", "DemoReport", "SideResult", "run"]

#: How long "charging the card" takes: the race window of the naive task.
PROVIDER_SECONDS = 0.03
#: A short lease, so duplicates deferred behind a running holder come back soon.
LEASE_SECONDS = 1.0


class DemoError(RuntimeError):
    """The demo could not run (a worker failed to start, or it timed out)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SideResult(display.Side):
    """What one version of the task did with the same duplicated jobs.

    ``deliveries`` are the copies published; ``suppressed`` the duplicates
    turned away for good (a deferral comes back and is counted then).
    """

    jobs: int
    charges: int

    @classmethod
    def of(cls, side: SideReport) -> SideResult:
        return cls(label=side.label, jobs=side.records, deliveries=side.published,
                   charges=side.records - side.lost + side.double_effects,
                   double_effects=side.double_effects, suppressed=side.suppressed - side.deferred,
                   lost=side.lost, seconds=side.seconds)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoOptions(RunSetup):
    """``celery-claim demo``'s options; without URLs, the embedded default.

    ``jobs`` are the orders to charge (the soak's records); ``timeout`` the
    seconds each version may take to drain.
    """

    jobs: int = 100
    timeout: float = 180.0

    def run_options(self, database_url: str, broker_url: str) -> RunOptions:
        """The demo's preset of the proof run: every copy at once, in turn, no kills."""
        setup = {f.name: getattr(self, f.name) for f in dataclasses.fields(RunSetup)}
        return RunOptions(
            **{**setup, "database_url": database_url, "broker_url": broker_url},
            pool="prefork", records=self.jobs, kill_rate=0.0, lease_seconds=LEASE_SECONDS,
            body_seconds=0.0, race_seconds=PROVIDER_SECONDS, late_share=0.0, same_id_share=0.0,
            in_turn=True, backlog=10 ** 9, settle=0.0, drain_timeout=self.timeout)


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
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="celery-claim-demo-"))
        if not options.keep:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        for folder in ("queue", "processed", "control"):
            (tmp / folder).mkdir()
        database_url = options.database_url or f"sqlite:///{tmp / 'claims.db'}"
        broker_url = options.broker_url or "filesystem://"
        run_options = options.run_options(database_url, broker_url)
        config = DemoConfig(**config_fields(run_options), broker_dir=str(tmp))
        store_text = (hide_password(database_url) if options.database_url else
                      f"SQLite in {tmp} (embedded default: no database configured)")
        broker_text = (hide_password(broker_url) if options.broker_url else
                       "kombu filesystem transport (embedded default: no broker configured)")
        console.print(f"[bold]celery-claim demo[/]: {options.jobs} orders, each published "
                      f"{options.copies} times at once, {options.workers} workers x "
                      f"{options.concurrency} processes")
        console.print(f"  claim store: {store_text}")
        console.print(f"  broker:      {broker_text}")
        result = run_proof(run_options, config, stack, console, app_module="celery_claim._demo_app",
                           error=DemoError, quiet=quiet, log_dir=tmp if options.keep else None)
    if result.naive is None:  # pragma: no cover - the demo always runs the control
        raise DemoError("the check-then-act control did not run")
    report = DemoReport(name=config.name, claim_store=store_text, broker=broker_text,
                        processes=options.workers * options.concurrency,
                        naive=SideResult.of(result.naive), claim=SideResult.of(result.claimed))
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
        f"{LEASE_SECONDS:g}s).")
    if report.ok:
        console.print("[green]ClaimTask charged every order exactly once.[/]")
    else:
        console.print(f"[red]ClaimTask {report.failure_reason()}.[/]")
