"""``celery-claim soak``: hundreds of thousands of duplicate deliveries, with kills.

It starts real ``celery worker`` processes (prefork and threads pools) on one
Redis queue with the claims in PostgreSQL, publishes every record several
times (some copies back to back, some later; some with the same task id,
some with a new one), SIGKILLs pool processes and whole workers at random
while they work (a killed worker is replaced, as a supervisor would), waits
until the queue is drained and no claim is left running, and counts the
effects per record in the database.

The naive check-then-act version of the same job runs side by side, on the
same workers and the same queue, unless ``--no-control``: it shows what the
same conditions do without the claim. The exit status is 1 if the
:class:`~celery_claim.ClaimTask` ran any record twice or lost one.

Run it as ``celery-claim soak`` or ``python -m celery_claim.soak``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import click
import sqlalchemy as sa
from click.core import ParameterSource

from celery_claim import _soak_app
from celery_claim._soak_app import CLAIMED, NAIVE, SoakConfig, SoakTables
from celery_claim.store import ClaimStore
from celery_claim.testing import WorkerProcess, queue_length, wait_until_drained

__all__ = ["SideReport", "SoakError", "SoakOptions", "SoakReport", "command", "percentiles",
           "print_report", "run", "soak"]

LABELS = {CLAIMED: "ClaimTask", NAIVE: "check-then-act"}
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


class SoakError(RuntimeError):
    """The soak could not run (bad settings, a service down, workers that never drained)."""


@dataclasses.dataclass(frozen=True)
class SoakOptions:
    database_url: str
    broker_url: str
    workers: int = 4
    pool: str = "mixed"
    concurrency: int = 2
    records: int = 10_000
    copies: int = 2
    kill_rate: float = 6.0
    duration: float | None = None
    control: bool = True
    lease_seconds: float = 5.0
    visibility_timeout: float = 20.0
    body_seconds: float = 0.002
    backlog: int = 2_000
    drain_timeout: float = 600.0
    keep: bool = False


@dataclasses.dataclass(frozen=True)
class SideReport:
    """What one version of the job did with the same duplicated records."""

    label: str
    records: int
    published: int
    deliveries: int
    suppressed: int
    double_effects: int
    records_doubled: int
    lost: int
    redelivered: int
    seconds: float

    @property
    def throughput(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "throughput": round(self.throughput, 1)}


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
    """One soak run: its tables, queue, workers, publisher and killer."""

    def __init__(self, options: SoakOptions, stack: ExitStack) -> None:
        import redis

        self.options = options
        self.stack = stack
        self.sides = (CLAIMED, NAIVE) if options.control else (CLAIMED,)
        self.config = SoakConfig(
            name=uuid.uuid4().hex[:8], database_url=options.database_url,
            broker_url=options.broker_url, lease=options.lease_seconds,
            visibility_timeout=options.visibility_timeout, body_seconds=options.body_seconds)
        self.redis = redis.Redis.from_url(options.broker_url)
        stack.callback(self.redis.close)
        self.redis.ping()
        if not options.keep:
            stack.callback(self._delete_keys)
        self.tables = SoakTables(self.config.name)
        self.store = ClaimStore(options.database_url, table=self.config.claims_table)
        stack.callback(self.store.dispose)
        self.store.create_schema()
        self.tables.metadata.create_all(self.store.engine)
        if not options.keep:
            stack.callback(self.store.drop_schema)
            stack.callback(self.tables.metadata.drop_all, self.store.engine)
        self.app = _soak_app.make_app(self.config)
        self.workers: list[WorkerProcess] = []
        self.started_at: dict[str, float] = {}
        self.kills = {"pool process": 0, "worker": 0}
        self.published = 0
        self.records = 0
        self._numbers = iter(range(1, 1_000_000))

    # --- workers --------------------------------------------------------------------

    def _pool(self, n: int) -> str:
        pool = self.options.pool
        return ("prefork" if n % 2 else "threads") if pool == "mixed" else pool

    def start_worker(self, pool: str) -> WorkerProcess:
        worker = WorkerProcess("celery_claim._soak_app", pool=pool,
                               concurrency=self.options.concurrency, queues=[self.config.queue],
                               loglevel="WARNING", env=self.config.env(),
                               hostname=f"soak{next(self._numbers)}-{self.config.name}@%h")
        self.stack.callback(worker.close)
        worker.start()
        self.started_at[worker.hostname] = time.monotonic()
        self.workers.append(worker)
        return worker

    def start_workers(self) -> None:
        for n in range(1, self.options.workers + 1):
            self.start_worker(self._pool(n))
        for worker in self.workers:
            worker.ready(timeout=120)

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a pool process (7 times in 10), or a whole worker, then start its replacement."""
        settled = [w for w in self.workers
                   if w.running and time.monotonic() - self.started_at[w.hostname] > 5]
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
        self.start_worker(worker.pool)

    # --- publishing -----------------------------------------------------------------------

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

    # --- counting -----------------------------------------------------------------------

    def counters(self, name: str) -> dict[str, int]:
        found: dict[bytes, bytes] = self.redis.hgetall(self.config.counter(name))  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in found.items()}

    def side_report(self, side: str, seconds: float) -> SideReport:
        effects = self.tables.effects
        per_record = (sa.select(effects.c.record_id, sa.func.count().label("n"))
                      .where(effects.c.side == side).group_by(effects.c.record_id).subquery())
        with self.store.engine.connect() as conn:
            done, extra, doubled = conn.execute(sa.select(
                sa.func.count(), sa.func.coalesce(sa.func.sum(per_record.c.n - 1), 0),
                sa.func.count().filter(per_record.c.n > 1))).one()
        deliveries = self.counters("deliveries")
        suppressed = self.counters("suppressed")
        return SideReport(
            label=LABELS[side], records=self.records,
            published=self.records * self.options.copies,
            deliveries=sum(n for k, n in deliveries.items() if k.startswith(f"{side}:")),
            suppressed=sum(n for k, n in suppressed.items() if k.partition(":")[0] == side),
            double_effects=int(extra), records_doubled=int(doubled),
            lost=self.records - int(done),
            redelivered=self.counters("redelivered").get(side, 0), seconds=round(seconds, 1))

    def latency_ms(self) -> dict[str, float]:
        return percentiles({int(k): n for k, n in self.counters("latency").items()})

    def unfinished_claims(self) -> int:
        return len(self.store.list_claims(state="running", limit=1000)) + len(
            self.store.list_claims(state="failed", limit=1000))

    def _delete_keys(self) -> None:
        keys = list(self.redis.scan_iter(match=f"{self.config.key_prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            self.redis.delete(*keys[start:start + 1000])


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
def _progress(soak: _Soak, quiet: bool) -> Iterator[None]:
    """Progress bars refreshed from the counters by a background thread."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(TextColumn("{task.description:<15}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=quiet)
    target = None if soak.options.duration else soak.options.records
    published = progress.add_task("published", total=target, info="records")
    bars = {side: progress.add_task(LABELS[side], total=None, info="") for side in soak.sides}
    stop = threading.Event()

    def refresh() -> None:
        # A copy is settled when a delivery of it ends in SUCCESS: it ran,
        # or it returned the stored result, or the naive guard skipped it.
        while not stop.wait(0.5):
            with contextlib.suppress(Exception):  # a display glitch must not end the run
                kills = soak.kills
                progress.update(published, completed=soak.records,
                                info=f"records; killed {kills['pool process']} pool processes, "
                                     f"{kills['worker']} workers")
                deliveries = soak.counters("deliveries")
                total = max(soak.records * soak.options.copies, 1)
                for side, bar in bars.items():
                    settled = deliveries.get(f"{side}:SUCCESS", 0)
                    count = sum(n for k, n in deliveries.items() if k.startswith(f"{side}:"))
                    progress.update(bar, total=total, completed=min(settled, total),
                                    info=f"copies settled; {count:,} deliveries")

    thread = threading.Thread(target=refresh, name="soak-progress", daemon=True)
    with progress:
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def run(options: SoakOptions, *, quiet: bool = False, command: str = "") -> SoakReport:
    """Run a soak and return its report; prints progress (to stderr) unless ``quiet``."""
    from rich.console import Console

    _check(options)
    console = Console(stderr=True, quiet=quiet, highlight=False)
    rng = random.Random()
    with ExitStack() as stack:
        try:
            soak = _Soak(options, stack)
        except Exception as exc:
            raise SoakError(f"cannot set up the soak: {exc}".splitlines()[0]) from exc
        pools = ", ".join(sorted({soak._pool(n) for n in range(1, options.workers + 1)}))
        workers = f"{options.workers} x {options.concurrency} ({pools})"
        console.print(f"[bold]celery-claim soak[/]: {workers}, every record published "
                      f"{options.copies} times, {options.kill_rate:g} kills/min"
                      + ("" if options.control else ", no control"))
        with console.status("starting workers...", spinner="dots"):
            try:
                soak.start_workers()
            except Exception as exc:
                raise SoakError(f"a soak worker did not start: {exc}".splitlines()[0]) from exc
        started = time.monotonic()
        deadline = started + options.duration if options.duration else None
        next_kill = started + _kill_gap(options, rng)
        late: list[tuple[str, int, str]] = []
        with _progress(soak, quiet):
            while soak.records < options.records and (deadline is None
                                                      or time.monotonic() < deadline):
                if soak.queued() < options.backlog:
                    soak.publish(min(200, options.records - soak.records), late, rng)
                else:
                    time.sleep(0.2)
                if time.monotonic() >= next_kill:
                    soak.kill_one(rng)
                    next_kill = time.monotonic() + _kill_gap(options, rng)
            soak.publish(0, late, rng)
            try:
                wait_until_drained(options.broker_url, soak.config.queue,
                                   key_prefix=soak.config.key_prefix, store=soak.store,
                                   settle=3.0, timeout=options.drain_timeout, interval=0.5)
            except AssertionError as exc:
                raise SoakError(f"the workers did not finish: {exc}") from exc
        seconds = time.monotonic() - started
        report = SoakReport(
            command=command, seconds=round(seconds, 1), workers=workers,
            claimed=soak.side_report(CLAIMED, seconds),
            naive=soak.side_report(NAIVE, seconds) if options.control else None,
            latency_ms=soak.latency_ms(), kills=dict(soak.kills),
            events=soak.counters("events"), unfinished_claims=soak.unfinished_claims())
    return report


def _kill_gap(options: SoakOptions, rng: random.Random) -> float:
    if options.kill_rate <= 0:
        return float("inf")
    return rng.expovariate(options.kill_rate / 60.0)


def _check(options: SoakOptions) -> None:
    if not sa.engine.make_url(options.database_url).get_backend_name() == "postgresql":
        raise SoakError("the soak needs PostgreSQL: --database-url postgresql+psycopg://...")
    if not options.broker_url.startswith(("redis://", "rediss://")):
        raise SoakError("the soak needs a Redis broker: --broker-url redis://...")


def print_report(report: SoakReport, console: Any = None) -> None:
    """The summary table and what it means."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console(highlight=False)
        if not console.is_terminal:
            console.width = 110  # the whole table, in logs and files
    table = Table(title=f"soak: {report.seconds:g}s, {report.workers}", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    table.add_column("task", no_wrap=True)
    for column in ("records", "published", "deliveries", "duplicates\nsuppressed",
                   "double\neffects", "lost\nrecords", "throughput"):
        table.add_column(column, justify="right", no_wrap=True)
    for side in (report.claimed, report.naive):
        if side is None:
            continue
        style = "red" if side.double_effects or side.lost else "green"
        table.add_row(side.label, f"{side.records:,}", f"{side.published:,}",
                      f"{side.deliveries:,}", f"{side.suppressed:,}",
                      f"[{style}]{side.double_effects:,}[/]", f"[{style}]{side.lost:,}[/]",
                      f"{side.throughput:,.0f}/s")
    if report.command:
        console.print(f"command: {report.command}")
    console.print(table)
    sides = [s for s in (report.claimed, report.naive) if s is not None]
    total = sum(s.deliveries for s in sides)
    rate = total / report.seconds if report.seconds else 0.0
    console.print(f"{total:,} deliveries in {report.seconds:g}s: {rate:,.0f}/s "
                  "on these workers, both tasks at once")
    latency = ", ".join(f"{k} {v:g}" for k, v in report.latency_ms.items())
    console.print(f"claim latency (ms): {latency or 'none measured'}")
    kills = report.kills
    console.print(f"killed: {kills['pool process']} pool processes, {kills['worker']} workers; "
                  f"Redis re-deliveries: {report.claimed.redelivered:,}"
                  + "".join(f"; {k.replace('_', ' ')}: {v:,}" for k, v in
                            sorted(report.events.items())))
    if report.naive is not None:
        console.print(f"check-then-act ran {report.naive.records_doubled:,} records more than "
                      f"once ({report.naive.double_effects:,} double effects) and lost "
                      f"{report.naive.lost:,}.")
        if not report.naive.double_effects:
            console.print("[yellow]the check-then-act control saw no duplicates: raise "
                          "--copies or --workers; without them this run shows little.[/]")
    if report.ok:
        console.print("[green]ClaimTask ran every record exactly once.[/]")
    else:
        c = report.claimed
        console.print(f"[red]ClaimTask ran {c.records_doubled} records more than once and "
                      f"lost {c.lost} ({report.unfinished_claims} claims unfinished).[/]")


@click.command(name="soak", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", metavar="URL", envvar="CELERY_CLAIM_DATABASE_URL",
              help="PostgreSQL for the claims and the effects (env CELERY_CLAIM_DATABASE_URL).")
@click.option("--broker-url", metavar="URL", envvar="CELERY_BROKER_URL",
              help="Redis broker (env CELERY_BROKER_URL).")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Worker processes (celery worker).")
@click.option("--pool", type=click.Choice(["mixed", "prefork", "threads"]), default="mixed",
              show_default=True, help="Pool of each worker; mixed alternates the two.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Pool processes or threads per worker.")
@click.option("--records", type=click.IntRange(1), default=10_000, show_default=True,
              help="Records (jobs) to publish, per version.")
@click.option("--copies", type=click.IntRange(1, 50), default=2, show_default=True,
              help="Times every record is published.")
@click.option("--kill-rate", type=click.FloatRange(0), default=6.0, show_default=True,
              help="SIGKILLs per minute: a pool process or a whole worker (replaced).")
@click.option("--duration", type=click.FloatRange(1), default=None,
              help="Stop publishing after this many seconds (default: when all records are).")
@click.option("--no-control", is_flag=True,
              help="Do not run the naive check-then-act version side by side.")
@click.option("--lease", "lease_seconds", type=click.FloatRange(0.5), default=5.0,
              show_default=True, help="claim_lease_seconds of the ClaimTask.")
@click.option("--visibility-timeout", type=click.FloatRange(1), default=20.0,
              show_default=True, help="Redis visibility_timeout: killed workers' messages "
                                      "come back after it.")
@click.option("--body-ms", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Each body works for a random time up to this.")
@click.option("--keep", is_flag=True, help="Keep the tables and Redis keys afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def soak(database_url: str | None, broker_url: str | None, workers: int, pool: str,
         concurrency: int, records: int, copies: int, kill_rate: float, duration: float | None,
         no_control: bool, lease_seconds: float, visibility_timeout: float, body_ms: float,
         keep: bool, as_json: bool) -> None:
    """Soak ClaimTask in duplicate deliveries and worker kills; exit 1 on any double or loss.

    Real worker processes, a Redis queue and PostgreSQL; every record is
    published --copies times; pool processes and workers are SIGKILLed at
    --kill-rate. The naive check-then-act version runs side by side unless
    --no-control. At the end: deliveries, duplicates suppressed, double
    effects, lost records, throughput and claim latency.
    """
    ctx = click.get_current_context()
    # Under `celery-claim --database-url URL soak`, the group's option counts too.
    database_url = database_url or ctx.meta.get("celery_claim.options", {}).get("database_url")
    if not database_url:
        raise click.UsageError("give --database-url (PostgreSQL) or set CELERY_CLAIM_DATABASE_URL")
    if not broker_url:
        raise click.UsageError("give --broker-url (Redis) or set CELERY_BROKER_URL")
    options = SoakOptions(
        database_url=database_url, broker_url=broker_url, workers=workers, pool=pool,
        concurrency=concurrency, records=records, copies=copies, kill_rate=kill_rate,
        duration=duration, control=not no_control, lease_seconds=lease_seconds,
        visibility_timeout=visibility_timeout, body_seconds=body_ms / 1000, keep=keep)
    try:
        report = run(options, quiet=as_json, command=_command_line(ctx))
    except SoakError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(report)
    if not report.ok:
        ctx.exit(1)


def _command_line(ctx: click.Context) -> str:
    """The command as given, URLs without passwords: for the report."""
    words = ["celery-claim", "soak"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        source = ctx.get_parameter_source(param.name or "")
        if not isinstance(param, click.Option) or source is not ParameterSource.COMMANDLINE:
            continue
        if param.is_flag:
            words.append(param.opts[0])
        elif isinstance(value, str) and "://" in value:
            words += [param.opts[0], sa.engine.make_url(value).render_as_string(hide_password=True)]
        else:
            words += [param.opts[0], f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(words)


#: The command ``celery-claim`` mounts.
command = soak

if __name__ == "__main__":  # pragma: no cover
    soak.main(prog_name="python -m celery_claim.soak")
