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

import json
from typing import Any

import click
from click.core import ParameterSource

from celery_claim._soak_run import (
    SideReport,
    SoakError,
    SoakOptions,
    SoakReport,
    percentiles,
    run,
)
from celery_claim.proof import display
from celery_claim.proof.harness import hide_password

__all__ = ["SideReport", "SoakError", "SoakOptions", "SoakReport", "command", "percentiles",
           "print_report", "run", "soak"]


def print_report(report: SoakReport, console: Any = None) -> None:
    """The summary table and what it means."""
    from rich.console import Console

    if console is None:
        console = Console(highlight=False)
        if not console.is_terminal:
            console.width = 110  # the whole table, in logs and files
    rows = [[side.label, f"{side.records:,}", f"{side.published:,}", f"{side.deliveries:,}",
             f"{side.suppressed:,}", display.flagged(f"{side.double_effects:,}", side.failed),
             display.flagged(f"{side.lost:,}", side.failed), f"{side.throughput:,.0f}/s"]
            for side in (report.claimed, report.naive) if side is not None]
    table = display.results_table(
        f"soak: {report.seconds:g}s, {report.workers}",
        ["records", "published", "deliveries", "duplicates\nsuppressed", "double\neffects",
         "lost\nrecords", "throughput"], rows)
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
            words += [param.opts[0], hide_password(value)]
        else:
            words += [param.opts[0], f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(words)


#: The command ``celery-claim`` mounts.
command = soak

if __name__ == "__main__":  # pragma: no cover
    soak.main(prog_name="python -m celery_claim.soak")
