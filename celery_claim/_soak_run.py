"""The soak's run: its options, its report, and the loop that publishes, kills and counts.

:mod:`celery_claim.soak` is the command on top of it; the harness it runs on
is :mod:`celery_claim.proof`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import sqlalchemy as sa

from celery_claim import _soak_app
from celery_claim._soak_app import CLAIMED, NAIVE, SoakConfig, SoakTables
from celery_claim.proof import display
from celery_claim.proof.harness import Harness, RunOptions, exit_on_sigterm
from celery_claim.testing.queues import queue_length, wait_until_drained

__all__ = ["LABELS", "SideReport", "SoakError", "SoakOptions", "SoakReport", "percentiles", "run"]

LABELS = {CLAIMED: "ClaimTask", NAIVE: "check-then-act"}
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


class SoakError(RuntimeError):
    """The soak could not run (bad settings, a service down, workers that never drained)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoakOptions(RunOptions):
    """``celery-claim soak``'s options (``backlog``: messages queued before it waits)."""

    database_url: str
    broker_url: str
    workers: int = 4
    copies: int = 2
    pool: str = "mixed"
    records: int = 10_000
    kill_rate: float = 6.0
    duration: float | None = None
    control: bool = True
    lease_seconds: float = 5.0
    visibility_timeout: float = 20.0
    body_seconds: float = 0.002
    backlog: int = 2_000
    drain_timeout: float = 600.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class SideReport(display.Side):
    """What one version of the job did with the same duplicated records."""

    records: int
    published: int
    records_doubled: int
    redelivered: int


@dataclasses.dataclass(frozen=True)
class SoakReport:
    command: str
    seconds: float
    workers: str
    claimed: SideReport
    naive: SideReport | None
    latency_ms: dict[str, float]
    kills: dict[str, int]
    events: dict[str, int]
    unfinished_claims: int

    @property
    def ok(self) -> bool:
        """The ClaimTask ran every record exactly once."""
        c = self.claimed
        return c.double_effects == 0 and c.lost == 0 and self.unfinished_claims == 0

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "seconds": self.seconds, "workers": self.workers,
                "claimed": self.claimed.as_dict(),
                "naive": self.naive.as_dict() if self.naive else None,
                "latency_ms": self.latency_ms, "kills": self.kills, "events": self.events,
                "unfinished_claims": self.unfinished_claims, "ok": self.ok}


class _Soak:
    """One soak run: the harness, its publisher and its counts."""

    def __init__(self, options: SoakOptions, stack: ExitStack) -> None:
        self.options = options
        self.sides = (CLAIMED, NAIVE) if options.control else (CLAIMED,)
        self.config = SoakConfig(
            name=uuid.uuid4().hex[:8], database_url=options.database_url,
            broker_url=options.broker_url, lease=options.lease_seconds,
            visibility_timeout=options.visibility_timeout, body_seconds=options.body_seconds)
        self.tables = SoakTables(self.config)
        self.harness = Harness(self.config, self.tables, stack, app_module="celery_claim._soak_app",
                               keep=options.keep, error=SoakError)
        self.app = _soak_app.make_app(self.config)
        self.published = 0
        self.records = 0

    def pools(self) -> list[str]:
        """The pool of each worker: ``mixed`` alternates prefork and threads."""
        pool = self.options.pool
        return [("prefork" if n % 2 else "threads") if pool == "mixed" else pool
                for n in range(1, self.options.workers + 1)]

    def publish(self, count: int, late: list[tuple[str, int, str]],
                rng: random.Random) -> None:
        """Publish ``count`` new records (every copy of each, on each side) and the late copies."""
        tasks = {CLAIMED: self.app.tasks["soak.claimed"], NAIVE: self.app.tasks["soak.naive"]}
        now, later = list(late), list[tuple[str, int, str]]()
        late.clear()
        for record in range(self.records, self.records + count):
            for side in self.sides:
                task_id = str(uuid.uuid4())
                now.append((side, record, task_id))
                for _ in range(self.options.copies - 1):
                    # The same message again, or a producer that retried with a new id;
                    # at once (racing the first) or a little later.
                    copy_id = task_id if rng.random() < 0.5 else str(uuid.uuid4())
                    (now if rng.random() < 0.5 else later).append((side, record, copy_id))
        self.records += count
        with self.app.producer_or_acquire() as producer:
            for side, record, task_id in now:
                tasks[side].apply_async((record,), task_id=task_id, producer=producer)
        self.published += len(now)
        late.extend(later)

    def queued(self) -> int:
        return queue_length(self.options.broker_url, self.config.queue,
                            key_prefix=self.config.key_prefix)

    def side_report(self, side: str, seconds: float) -> SideReport:
        done, extra, doubled = self.harness.effects(self.tables.effects, "record_id", side)
        deliveries = self.harness.counters("deliveries")
        suppressed = self.harness.counters("suppressed")
        return SideReport(
            label=LABELS[side], records=self.records,
            published=self.records * self.options.copies,
            deliveries=sum(n for k, n in deliveries.items() if k.startswith(f"{side}:")),
            suppressed=sum(n for k, n in suppressed.items() if k.partition(":")[0] == side),
            double_effects=extra, records_doubled=doubled, lost=self.records - done,
            redelivered=self.harness.counters("redelivered").get(side, 0),
            seconds=round(seconds, 1))

    def latency_ms(self) -> dict[str, float]:
        return percentiles({int(k): n for k, n in self.harness.counters("latency").items()})

    def unfinished_claims(self) -> int:
        store = self.harness.store
        return len(store.list_claims(state="running", limit=1000)) + len(
            store.list_claims(state="failed", limit=1000))


def percentiles(histogram: dict[int, int]) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max, in milliseconds, of a microseconds histogram."""
    buckets = sorted(histogram.items())
    total = sum(n for _, n in buckets)
    if not total:
        return {}
    found: dict[str, float] = {}
    for p in PERCENTILES:
        rank, seen = p / 100 * total, 0
        for micros, n in buckets:
            seen += n
            if seen >= rank:
                found[f"p{p:g}"] = micros / 1000
                break
    found["max"] = buckets[-1][0] / 1000
    return found


@contextlib.contextmanager
def _progress(soak: _Soak, console: Any, quiet: bool) -> Iterator[None]:
    """Progress bars refreshed from the counters by a background thread."""
    bars = display.progress(console, quiet=quiet)
    target = None if soak.options.duration else soak.options.records
    published = bars.add_task("published", total=target, info="records")
    sides = {side: bars.add_task(LABELS[side], total=None, info="") for side in soak.sides}

    def update() -> None:
        # A copy is settled when a delivery of it ends in SUCCESS: it ran,
        # or it returned the stored result, or the naive guard skipped it.
        kills = soak.harness.kills
        bars.update(published, completed=soak.records,
                    info=f"records; killed {kills['pool process']} pool processes, "
                         f"{kills['worker']} workers")
        deliveries = soak.harness.counters("deliveries")
        total = max(soak.records * soak.options.copies, 1)
        for side, bar in sides.items():
            settled = deliveries.get(f"{side}:SUCCESS", 0)
            count = sum(n for k, n in deliveries.items() if k.startswith(f"{side}:"))
            bars.update(bar, total=total, completed=min(settled, total),
                        info=f"copies settled; {count:,} deliveries")

    with display.refreshing(bars, update):
        yield


def run(options: SoakOptions, *, quiet: bool = False, command: str = "") -> SoakReport:
    """Run a soak and return its report; prints progress (to stderr) unless ``quiet``.

    Worker processes, tables and Redis keys are removed when it ends (unless
    ``keep``), also on Ctrl-C and SIGTERM.
    """
    _check(options)
    with exit_on_sigterm():
        return _run(options, quiet, command)


def _run(options: SoakOptions, quiet: bool, command: str) -> SoakReport:
    from rich.console import Console

    console = Console(stderr=True, quiet=quiet, highlight=False)
    rng = random.Random()
    with ExitStack() as stack:
        try:
            soak = _Soak(options, stack)
        except SoakError:
            raise
        except Exception as exc:
            raise SoakError(f"cannot set up the soak: {exc}".splitlines()[0]) from exc
        pools = soak.pools()
        workers = f"{options.workers} x {options.concurrency} ({', '.join(sorted(set(pools)))})"
        console.print(f"[bold]celery-claim soak[/]: {workers}, every record published "
                      f"{options.copies} times, {options.kill_rate:g} kills/min"
                      + ("" if options.control else ", no control"))
        with console.status("starting workers...", spinner="dots"):
            soak.harness.start_workers(pools, options.concurrency, timeout=120)
        started = time.monotonic()
        deadline = started + options.duration if options.duration else None
        late: list[tuple[str, int, str]] = []
        with _progress(soak, console, quiet), soak.harness.killing(options.kill_rate):
            while soak.records < options.records and (deadline is None
                                                      or time.monotonic() < deadline):
                if soak.queued() < options.backlog:
                    soak.publish(min(200, options.records - soak.records), late, rng)
                else:
                    time.sleep(0.2)
            soak.publish(0, late, rng)
            try:
                wait_until_drained(options.broker_url, soak.config.queue,
                                   key_prefix=soak.config.key_prefix, store=soak.harness.store,
                                   settle=3.0, timeout=options.drain_timeout, interval=0.5)
            except AssertionError as exc:
                raise SoakError(f"the workers did not finish: {exc}") from exc
        seconds = time.monotonic() - started
        report = SoakReport(
            command=command, seconds=round(seconds, 1), workers=workers,
            claimed=soak.side_report(CLAIMED, seconds),
            naive=soak.side_report(NAIVE, seconds) if options.control else None,
            latency_ms=soak.latency_ms(), kills=dict(soak.harness.kills),
            events=soak.harness.counters("events"), unfinished_claims=soak.unfinished_claims())
    return report


def _check(options: SoakOptions) -> None:
    if not sa.engine.make_url(options.database_url).get_backend_name() == "postgresql":
        raise SoakError("the soak needs PostgreSQL: --database-url postgresql+psycopg://...")
    if not options.broker_url.startswith(("redis://", "rediss://")):
        raise SoakError("the soak needs a Redis broker: --broker-url redis://...")
