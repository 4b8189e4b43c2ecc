"""The ``celery-claim`` operations: ``release``, ``purge``, ``stats`` and ``demo``.

Registered on the command group of :mod:`celery_claim.cli`, which imports this
module; like it, nothing heavy is imported at the top.
"""

from __future__ import annotations

import click

from celery_claim.cli import (
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    CommandError,
    _console,
    _errors,
    _open_store,
    _print_json,
    claim,
)
from celery_claim.states import State

__all__: list[str] = []


# --- release / purge -------------------------------------------------------------

@claim.command()
@click.argument("key")
@click.option("--token", type=int, default=None,
              help="The token you saw (default: the current one). The release only happens "
                   "if the claim still has this token.")
@click.option("--force", is_flag=True, help="Release even while the lease is live.")
@click.option("--reason", default="released by operator", show_default=True,
              help="Stored in the claim's error column.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
def release(ctx: click.Context, key: str, token: int | None, force: bool, reason: str,
            as_json: bool) -> None:
    """Give a claim back so the next delivery can run it (fenced by token).

    Refuses a live lease unless --force: the holder may still be working.
    """
    with _open_store(ctx) as store:
        before = store.get(key)
        if before is None:
            raise CommandError(f"no claim with key {key!r} in table {store.table_name}",
                               exit_code=EXIT_NOT_FOUND)
        token = before.token if token is None else token
        done = store.force_release(key, token, force=force, reason=reason)
        after = store.get(key) if not done else None
    if not done:
        if after is None:
            raise CommandError(f"claim {key!r} was purged meanwhile", exit_code=EXIT_NOT_FOUND)
        if after.token != token:
            raise CommandError(f"refused: claim {key!r} has token {after.token}, not {token}; "
                               "it was taken over: look again", exit_code=EXIT_REFUSED)
        raise CommandError(
            f"refused: claim {key!r} is running under a live lease ({after.lease_remaining:.1f}s "
            f"left, owner {after.owner}); wait for it to finish or lapse, or pass --force",
            exit_code=EXIT_REFUSED)
    if as_json:
        _print_json({"key": key, "token": token, "released": True, "previous_state":
                     before.state})
        return
    note = " (it had succeeded: the next delivery with this key runs the body again)" \
        if before.state == State.SUCCEEDED else ""
    click.echo(f"released {key} (token {token}, was {before.state}){note}")


@claim.command()
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Claims deleted per statement.")
@click.option("--max-batches", type=click.IntRange(1), default=None,
              help="Stop after this many batches (default: until none are left).")
@click.option("--pause", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Seconds to sleep between batches.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@click.pass_context
def purge(ctx: click.Context, batch_size: int, max_batches: int | None, pause: float,
          as_json: bool) -> None:
    """Delete finished claims past their retention time (claim_ttl_seconds), in batches.

    Running claims are never deleted. Each batch is one short statement that
    skips rows an acquire holds, so acquires never wait behind a purge.
    """
    from celery_claim._admin import purge_in_batches

    batches: list[int] = []
    with _open_store(ctx) as store:
        deleted = purge_in_batches(store, batch_size=batch_size, max_batches=max_batches,
                                   pause=pause, on_batch=batches.append)
    if as_json:
        _print_json({"deleted": deleted, "batches": len(batches), "table": store.table_name})
    else:
        click.echo(f"deleted {deleted} expired claim(s) from {store.table_name} "
                   f"in {len(batches)} batch(es)")


# --- stats ------------------------------------------------------------------------

@claim.command()
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Claims by task and state, duplicates suppressed, stale claims."""
    with _open_store(ctx) as store:
        rows = store.stats()
    totals = {name: sum(int(r[name]) for r in rows)
              for name in ("claims", "acquisitions", "duplicates", "stale")}
    if as_json:
        _print_json({"rows": rows, "totals": totals, "table": store.table_name})
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_footer=True)
    table.add_column("task", footer="total")
    table.add_column("state")
    for name, title in (("claims", "claims"), ("acquisitions", "acquisitions"),
                        ("duplicates", "duplicates suppressed"), ("stale", "stale")):
        table.add_column(title, justify="right", footer=str(totals[name]))
    for r in rows:
        table.add_row(r["task_name"], r["state"], str(r["claims"]), str(r["acquisitions"]),
                      str(r["duplicates"]), str(r["stale"]))
    _console().print(table)
    if totals["stale"]:
        click.echo(f"{totals['stale']} stale claim(s): see `celery-claim list --stale`")


# --- demo -------------------------------------------------------------------------

@claim.command()
@click.option("--database-url", "demo_database_url", metavar="URL",
              envvar="CELERY_CLAIM_DATABASE_URL",
              help="Claim store and demo tables (default: a SQLite file in a temp dir; "
                   "env CELERY_CLAIM_DATABASE_URL).")
@click.option("--broker-url", metavar="URL", envvar="CELERY_BROKER_URL",
              help="Broker (default: kombu's filesystem transport in a temp dir; "
                   "env CELERY_BROKER_URL).")
@click.option("--jobs", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Orders to charge.")
@click.option("--copies", type=click.IntRange(2, 20), default=3, show_default=True,
              help="Times each job is published.")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Worker processes (celery worker).")
@click.option("--concurrency", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Prefork pool processes per worker.")
@click.option("--timeout", type=click.FloatRange(5), default=180.0, show_default=True,
              help="Give up after this many seconds per side.")
@click.option("--keep", is_flag=True,
              help="Keep the demo's tables, temporary directory and worker logs.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def demo(ctx: click.Context, demo_database_url: str | None, broker_url: str | None, jobs: int,
         copies: int, workers: int, concurrency: int, timeout: float, keep: bool,
         as_json: bool) -> None:
    """Race a naive check-then-act task against ClaimTask under duplicate delivery.

    Starts worker processes, publishes every job several times at once, and
    counts the charges each version made. Exits 1 if ClaimTask double-charged
    or lost a job.
    """
    from celery_claim import demo as demo_module

    url = demo_database_url or ctx.meta["celery_claim.options"]["database_url"]
    options = demo_module.DemoOptions(
        database_url=url, broker_url=broker_url, jobs=jobs, copies=copies, workers=workers,
        concurrency=concurrency, timeout=timeout, keep=keep)
    with _errors():
        try:
            report = demo_module.run(options, quiet=as_json)
        except demo_module.DemoError as exc:
            raise CommandError(str(exc)) from exc
    if as_json:
        _print_json(report.as_dict())
    if not report.ok:
        raise CommandError("ClaimTask " + report.failure_reason())


