"""One proof run: publish every record several times, kill workers if asked, drain, count.

The demo and the soak are this loop with two presets. The soak publishes
batches while the queue has room, some copies back to back and some later,
some under the same task id, with both versions side by side and kills; the
demo publishes every copy at once under new ids, one version after the
other, without kills. A run is done ("drained") when every copy published has
settled (a delivery of it ended other than deferred or retried), nothing is
left in the broker where it can be read (Redis: the queue and the unacked
set), and no claim is running, for ``settle`` seconds in a row; where the
broker can be read, also when it stays empty with no claim running for
:data:`BROKER_GRACE` seconds more, though the counts fall short.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from celery import Celery

from celery_claim.proof import display
from celery_claim.proof.app import make_app
from celery_claim.proof.config import RunConfig
from celery_claim.proof.counting import (
    CLAIMED,
    DUPLICATE,
    NAIVE,
    REDELIVERED,
    Counts,
    ProofTables,
    Tally,
    percentiles,
)
from celery_claim.proof.harness import Harness
from celery_claim.testing.queues import queue_length, unacked_length

__all__ = ["LABELS", "RunOptions", "RunReport", "RunSetup", "SideReport", "config_fields", "run",
           "workers_text"]

LABELS = {CLAIMED: "ClaimTask", NAIVE: "check-then-act"}
#: Seconds a readable broker must stay empty, with no claim running, to end a run
#: whose counts fall short of the copies published.
BROKER_GRACE = 10.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSetup:
    """What every run is given: its services (``None``: the demo's embedded default),
    its workers, how often each record is published, whether to keep what it made."""

    database_url: str | None = None
    broker_url: str | None = None
    workers: int = 2
    concurrency: int = 2
    copies: int = 3
    keep: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions(RunSetup):
    """How a run publishes, kills and waits; the soak's defaults.

    ``late_share`` of the copies after the first are published with the next
    batch rather than at once, and ``same_id_share`` reuse the first copy's
    task id (the others are a producer that retried with a new id).
    ``in_turn`` runs the naive version to the end before the ClaimTask.
    ``backlog``: messages queued before publishing waits (Redis only).
    """

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
    race_seconds: float = 0.0
    late_share: float = 0.5
    same_id_share: float = 0.5
    in_turn: bool = False
    backlog: int = 2_000
    settle: float = 3.0
    drain_timeout: float = 600.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class SideReport(display.Side):
    """What one version of the job did with the same duplicated records.

    ``suppressed`` counts every duplicate the guard turned away, ``deferred``
    those of them the claim sent back to look again after the holder's lease.
    """

    records: int
    published: int
    records_doubled: int
    redelivered: int
    deferred: int = 0


@dataclasses.dataclass(frozen=True)
class RunReport:
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


def config_fields(options: RunOptions) -> dict[str, Any]:
    """A new run's :class:`RunConfig` fields, from its options."""
    if options.database_url is None or options.broker_url is None:
        raise ValueError("a run needs its database_url and broker_url")
    return {"name": uuid.uuid4().hex[:8], "database_url": options.database_url,
            "broker_url": options.broker_url, "lease": options.lease_seconds,
            "visibility_timeout": options.visibility_timeout,
            "body_seconds": options.body_seconds, "race_seconds": options.race_seconds}


def pools(options: RunOptions) -> list[str]:
    """The pool of each worker: ``mixed`` alternates prefork and threads."""
    return [("prefork" if n % 2 else "threads") if options.pool == "mixed" else options.pool
            for n in range(1, options.workers + 1)]


def workers_text(options: RunOptions) -> str:
    return f"{options.workers} x {options.concurrency} ({', '.join(sorted(set(pools(options))))})"


class _Publisher:
    """Publishes the records of the sides running now: every copy, some of them late."""

    def __init__(self, app: Celery, config: RunConfig, options: RunOptions,
                 sides: Sequence[str]) -> None:
        self.tasks = {side: app.tasks[f"{config.kind}.{side}"] for side in sides}
        self.app = app
        self.options = options
        self.rng = random.Random()
        self.records = 0
        self.late: list[tuple[str, int, str]] = []

    def publish(self, count: int) -> None:
        """Publish ``count`` new records (every copy of each, on each side) and the late copies."""
        rng, options = self.rng, self.options
        now, later = list(self.late), list[tuple[str, int, str]]()
        for record in range(self.records, self.records + count):
            for side in self.tasks:
                task_id = str(uuid.uuid4())
                now.append((side, record, task_id))
                for _ in range(options.copies - 1):
                    # The same message again, or a producer that retried with a new id;
                    # at once (racing the first) or a little later.
                    copy_id = task_id if rng.random() < options.same_id_share else str(uuid.uuid4())
                    (later if rng.random() < options.late_share else now).append(
                        (side, record, copy_id))
        self.records += count
        with self.app.producer_or_acquire() as producer:
            for side, record, task_id in now:
                self.tasks[side].apply_async((record,), task_id=task_id, producer=producer)
        self.late = later

    @property
    def published(self) -> int:
        """Copies published per version, once the late ones are out."""
        return self.records * self.options.copies


class _Run:
    """One run: the harness, the app, the counts; its phases publish and drain."""

    def __init__(self, options: RunOptions, config: RunConfig, harness: Harness,
                 tables: ProofTables) -> None:
        self.options = options
        self.config = config
        self.harness = harness
        self.tally = Tally(harness.store.engine, tables)
        self.app = make_app(config)
        self.sides = (CLAIMED, NAIVE) if options.control else (CLAIMED,)
        self.publishers: dict[str, _Publisher] = {}
        self.seconds: dict[str, float] = {}

    def phases(self) -> list[tuple[str, ...]]:
        if self.options.in_turn:
            return [(side,) for side in reversed(self.sides)]
        return [self.sides]

    def queued(self, *, unacked: bool = False) -> int:
        """Messages in the queue (and, if asked, delivered but not acknowledged), where
        the broker can be read; else 0."""
        if self.harness.redis is None:
            return 0
        url, prefix = self.config.broker_url, self.config.key_prefix
        return (queue_length(url, self.config.queue, key_prefix=prefix)
                + (unacked_length(url, key_prefix=prefix) if unacked else 0))

    def run_phase(self, sides: tuple[str, ...], deadline: float | None) -> None:
        options = self.options
        publisher = _Publisher(self.app, self.config, options, sides)
        for side in sides:
            self.publishers[side] = publisher
        started = time.monotonic()
        while publisher.records < options.records and (deadline is None
                                                       or time.monotonic() < deadline):
            if self.queued() < options.backlog:
                publisher.publish(min(200, options.records - publisher.records))
            else:
                time.sleep(0.2)
        publisher.publish(0)
        self.drain(sides, publisher)
        for side in sides:
            self.seconds[side] = time.monotonic() - started

    def idle(self) -> bool:
        """Nothing in the broker where it can be read, and no claim running."""
        return (self.queued(unacked=True) == 0
                and not self.harness.store.list_claims(state="running", limit=1))

    def settled(self, sides: tuple[str, ...], publisher: _Publisher) -> bool:
        counts = self.tally.counts()
        return all(counts.settled(side) >= publisher.published for side in sides)

    def drain(self, sides: tuple[str, ...], publisher: _Publisher) -> None:
        """Wait until the run is idle and every copy settled, for ``settle`` seconds;
        or, where the broker can be read, idle for ``BROKER_GRACE`` seconds more
        (a whole worker killed at the wrong moment takes a message with it)."""
        options = self.options
        started = time.monotonic()
        since: float | None = None
        while True:
            if not options.kill_rate:
                self.harness.check_workers()
            now = time.monotonic()
            if self.idle():
                since = now if since is None else since
                quiet = now - since
                if quiet >= options.settle and self.settled(sides, publisher):
                    return
                if self.harness.redis is not None and quiet >= options.settle + BROKER_GRACE:
                    return
            else:
                since = None
            if now - started > options.drain_timeout:
                counts = self.tally.counts()
                settled = ", ".join(f"{LABELS[s]} {counts.settled(s):,}" for s in sides)
                raise self.harness.error(
                    f"the workers did not finish in {options.drain_timeout:g}s: of "
                    f"{publisher.published:,} copies per version, settled: {settled}")
            time.sleep(0.25)

    def side_report(self, side: str, counts: Counts) -> SideReport:
        done, extra, doubled = self.tally.effects(side)
        publisher = self.publishers[side]
        return SideReport(
            label=LABELS[side], records=publisher.records,
            published=publisher.published,
            deliveries=counts.total(side, "delivery"),
            suppressed=counts.total(side, DUPLICATE),
            deferred=counts.field(side, DUPLICATE, "running-deferred"),
            double_effects=extra, records_doubled=doubled, lost=publisher.records - done,
            redelivered=counts.total(side, REDELIVERED), seconds=round(self.seconds[side], 2))

    def unfinished_claims(self) -> int:
        store = self.harness.store
        return len(store.list_claims(state="running", limit=1000)) + len(
            store.list_claims(state="failed", limit=1000))


@contextlib.contextmanager
def _progress(run: _Run, console: Any, quiet: bool) -> Iterator[None]:
    """Progress bars refreshed from the counts by a background thread."""
    options = run.options
    bars = display.progress(console, quiet=quiet)
    target = None if options.duration else options.records
    published = bars.add_task("published", total=target, info="records")
    sides = {side: bars.add_task(LABELS[side], total=None, start=False, info="")
             for phase in run.phases() for side in phase}
    started: set[str] = set()
    stopped: set[str] = set()

    def update() -> None:
        kills = run.harness.kills
        records = max((p.records for p in run.publishers.values()), default=0)
        bars.update(published, completed=records, info="records" + (
            f"; killed {kills['pool process']} pool processes, {kills['worker']} workers"
            if options.kill_rate else ""))
        counts = run.tally.counts()
        for side, bar in sides.items():
            publisher = run.publishers.get(side)
            if publisher is not None and side not in started:
                started.add(side)
                bars.start_task(bar)  # a side's clock runs while it does
            if side in run.seconds and side not in stopped:
                stopped.add(side)
                bars.stop_task(bar)
            total = max(publisher.published if publisher else 0, 1)
            bars.update(bar, total=total, completed=min(counts.settled(side), total),
                        info=f"copies settled; {counts.total(side, 'delivery'):,} deliveries")

    with display.refreshing(bars, update):
        yield
        with contextlib.suppress(Exception):
            update()  # the bars as the run ends


def run(options: RunOptions, config: RunConfig, stack: ExitStack, console: Any, *,
        app_module: str, error: type[Exception], quiet: bool = False,
        command: str = "", log_dir: Path | None = None) -> RunReport:
    """Set up the run's harness on ``stack``, run it, and return its report.

    ``app_module`` is the worker module that builds :func:`make_app` from
    ``config``; the run's failures raise ``error``. Everything it starts or
    creates is removed when ``stack`` unwinds (unless ``options.keep``).
    """
    tables = ProofTables(config)
    harness = Harness(config, tables, stack, app_module=app_module, keep=options.keep,
                      error=error)
    proof = _Run(options, config, harness, tables)
    with console.status("starting workers...", spinner="dots"):
        harness.start_workers(pools(options), options.concurrency, timeout=120,
                              log_dir=log_dir)
    started = time.monotonic()
    deadline = started + options.duration if options.duration else None
    with _progress(proof, console, quiet), harness.killing(options.kill_rate):
        for phase in proof.phases():
            proof.run_phase(phase, deadline)
    seconds = time.monotonic() - started
    counts = proof.tally.counts()
    return RunReport(
        command=command, seconds=round(seconds, 1), workers=workers_text(options),
        claimed=proof.side_report(CLAIMED, counts),
        naive=proof.side_report(NAIVE, counts) if options.control else None,
        latency_ms=percentiles(proof.tally.latency()), kills=dict(harness.kills),
        events=counts.events(), unfinished_claims=proof.unfinished_claims())
