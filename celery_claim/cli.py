"""The ``celery-claim`` command, also ``celery -A proj claim`` (a Celery command plugin).

Every command finds the claim store the way a worker does: ``--database-url``
and ``--table``, then (under ``celery -A proj claim``) the app's ``claim_*``
configuration, then ``CELERY_CLAIM_DATABASE_URL`` / ``CELERY_CLAIM_TABLE``.

Errors print one line on standard error and exit non-zero:
1 (error: configuration, unreachable store), 2 (usage), 3 (no such claim),
4 (refused: the lease is live). ``--json`` prints what a machine reads.

This module is imported by every ``celery`` command (through the
``celery.commands`` entry point), so it imports nothing heavy at the top.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from celery_claim.states import State

if TYPE_CHECKING:
    from celery_claim._admin import StoreConfig
    from celery_claim.store import ClaimRecord, ClaimStore

__all__ = ["EXIT_ERROR", "EXIT_NOT_FOUND", "EXIT_REFUSED", "celery_command", "claim", "main"]

EXIT_ERROR = 1
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4
STATES = tuple(state.value for state in State)

class CommandError(click.ClickException):
    """A one-line error and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"celery-claim: error: {self.format_message()}", err=True)


def _store_error_hint(message: str, table: str) -> str:
    lowered = message.lower()
    if "result_content" in lowered or "is of type jsonb" in lowered:
        return (f"{message}; the table was created by an earlier release: upgrade it with "
                f"`celery-claim schema --upgrade` (table {table})")
    if "does not exist" in lowered or "no such table" in lowered:
        return f"{message}; create the table with `celery-claim schema --apply` (table {table})"
    if any(word in lowered for word in ("connect", "refused", "timeout", "resolve", "host")):
        from celery_claim._admin import URL_HINT

        return f"{message}; {URL_HINT}"
    return message


@contextlib.contextmanager
def _errors(table: str = "") -> Iterator[None]:
    """Turn celery-claim errors into one-line command errors."""
    from celery_claim import errors

    try:
        yield
    except errors.ClaimStoreError as exc:
        raise CommandError(_store_error_hint(str(exc), table)) from exc
    except errors.ClaimError as exc:
        raise CommandError(str(exc)) from exc


def _celery_app(ctx: click.Context) -> Any:
    """The Celery app when run as ``celery -A proj claim``, else None."""
    obj = ctx.find_root().obj
    return getattr(obj, "app", None)


def _config(ctx: click.Context, *, require_url: bool = True) -> StoreConfig:
    from celery_claim._admin import resolve

    options = ctx.meta["celery_claim.options"]
    app = _celery_app(ctx)
    with _errors():
        return resolve(app.conf if app is not None else None,
                       database_url=options["database_url"], table=options["table"],
                       require_url=require_url)


@contextlib.contextmanager
def _open_store(ctx: click.Context) -> Iterator[ClaimStore]:
    config = _config(ctx)
    with _errors(config.table):
        store = config.open()
    try:
        with _errors(config.table):
            yield store
    finally:
        store.dispose()


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _console() -> Any:
    from rich.console import Console

    return Console(soft_wrap=True, highlight=False)


# --- the group ----------------------------------------------------------------

class ClaimGroup(click.Group):
    """The command group; ``soak`` appears when :mod:`celery_claim.soak` provides it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        if importlib.util.find_spec("celery_claim.soak") is not None:
            names.add("soak")
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name == "soak":
            if importlib.util.find_spec("celery_claim.soak") is None:
                return None
            module = importlib.import_module("celery_claim.soak")
            found = getattr(module, "command", None) or getattr(module, "soak", None)
            return found if isinstance(found, click.Command) else None
        return command


@click.group(cls=ClaimGroup, name="claim", context_settings={"help_option_names": ["-h",
                                                                                   "--help"]})
@click.option("--database-url", metavar="URL",
              help="SQLAlchemy URL of the claim store (default: the app's "
                   "claim_database_url, then CELERY_CLAIM_DATABASE_URL).")
@click.option("--table", metavar="NAME",
              help="Claims table (default: claim_table, CELERY_CLAIM_TABLE, celery_claims).")
@click.pass_context
def claim(ctx: click.Context, database_url: str | None, table: str | None) -> None:
    """Inspect and operate the claims of celery-claim tasks."""
    ctx.meta["celery_claim.options"] = {"database_url": database_url, "table": table}


#: Mounted as ``celery claim`` through the ``celery.commands`` entry point.
celery_command = claim


def main(argv: list[str] | None = None) -> None:
    """The ``celery-claim`` console script."""
    claim.main(args=argv, prog_name="celery-claim")


# --- schema --------------------------------------------------------------------

@claim.command()
@click.option("--apply", "apply_", is_flag=True, help="Create the table and indexes if missing.")
@click.option("--drop", is_flag=True, help="Drop the table (asks first unless --yes).")
@click.option("--upgrade", "upgrade_", is_flag=True,
              help="Upgrade a table created by an earlier release (idempotent).")
@click.option("--yes", is_flag=True, help="Do not ask before --drop.")
@click.option("--dialect", type=click.Choice(["postgresql", "sqlite"]), default=None,
              help="Print the DDL of this dialect without a database (default: postgresql).")
@click.pass_context
def schema(ctx: click.Context, apply_: bool, drop: bool, upgrade_: bool, yes: bool,
           dialect: str | None) -> None:
    """Print the claims table's DDL, or apply it (--apply), upgrade it (--upgrade) or
    drop it (--drop)."""
    if apply_ + drop + upgrade_ > 1:
        raise CommandError("choose one of --apply, --upgrade and --drop", exit_code=2)
    config = _config(ctx, require_url=apply_ or drop or upgrade_)
    if not (apply_ or drop or upgrade_):
        from celery_claim._admin import StoreConfig

        if dialect is not None or (config.engine is None and config.database_url is None):
            url = "sqlite://" if dialect == "sqlite" else "postgresql+psycopg://"
            config = StoreConfig(database_url=url, engine=None, table=config.table)
        with _errors(config.table):
            store = config.open()
        click.echo(store.ddl(), nl=False)
        return
    if drop and not yes:
        click.confirm(f"Drop {config.describe()} and every claim in it?", abort=True)
    with _open_store(ctx) as store:
        if drop:
            store.drop_schema()
            click.echo(f"dropped {config.describe()}")
        elif upgrade_:
            from celery_claim import upgrade

            steps = upgrade.upgrade(store)
            click.echo(f"upgraded {config.describe()}: {'; '.join(steps)}" if steps
                       else f"{config.describe()} is up to date")
        else:
            store.create_schema()
            click.echo(f"created {config.describe()} (or it existed)")


# --- status / list --------------------------------------------------------------

def _record_dict(record: ClaimRecord) -> dict[str, Any]:
    values = record.as_dict()
    values.update(is_live=record.is_live, is_stale=record.is_stale,
                  is_expired=record.is_expired,
                  lease_remaining=round(record.lease_remaining, 3))
    return values


def _describe_state(record: ClaimRecord) -> str:
    if record.is_live:
        return f"running (live: lease {record.lease_remaining:.1f}s left)"
    if record.is_stale:
        return "running (STALE: the lease lapsed; the next delivery takes it over)"
    expired = " (expired: the next acquire treats it as new)" if record.is_expired else ""
    return record.state + expired


def _result_text(record: ClaimRecord) -> str:
    stored = record.stored_result
    if stored is None:
        return "-"
    if stored.text is not None:
        return stored.text
    return f"<{len(stored.payload)} bytes of {stored.content_type}>"


@claim.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the row as JSON.")
@click.pass_context
def status(ctx: click.Context, key: str, as_json: bool) -> None:
    """Show one claim, by its KEY."""
    with _open_store(ctx) as store:
        record = store.get(key)
    if record is None:
        raise CommandError(f"no claim with key {key!r} in table {store.table_name}",
                           exit_code=EXIT_NOT_FOUND)
    if as_json:
        _print_json(_record_dict(record))
        return
    rows = [
        ("key", record.key), ("state", _describe_state(record)), ("token", record.token),
        ("task", record.task_name), ("task id", record.task_id),
        ("acquisitions", record.attempt), ("duplicates suppressed", record.duplicates),
        ("owner", record.owner), ("payload digest", record.payload_digest or "-"),
        ("result", _result_text(record)),
        ("error", record.error or "-"), ("lease expires", record.lease_expires_at or "-"),
        ("created", record.created_at), ("updated", record.updated_at),
        ("finished", record.finished_at or "-"), ("expires", record.expires_at or "-"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


@claim.command(name="list")
@click.option("--state", type=click.Choice(STATES), help="Only claims in this state.")
@click.option("--task", "task_name", metavar="NAME", help="Only claims of this task.")
@click.option("--stale", is_flag=True, help="Only running claims whose lease has lapsed.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True,
              help="Claims per page.")
@click.option("--after", "after_key", metavar="KEY", default="",
              help="Start after this key (the last key of the previous page).")
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@click.pass_context
def list_(ctx: click.Context, state: str | None, task_name: str | None, stale: bool,
          limit: int, after_key: str, as_json: bool) -> None:
    """List claims by key, a page at a time."""
    with _open_store(ctx) as store:
        records = store.list_claims(state=state, task_name=task_name, stale=stale,
                                    limit=limit, after_key=after_key)
    next_after = records[-1].key if len(records) == limit else None
    if as_json:
        _print_json({"claims": [_record_dict(r) for r in records], "next_after": next_after})
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("key", "state", "task", "token", "dups", "lease left", "updated"):
        table.add_column(column, no_wrap=column != "key")
    for r in records:
        lease = f"{r.lease_remaining:.1f}s" if r.is_live else ("stale" if r.is_stale else "-")
        table.add_row(r.key, r.state, r.task_name, str(r.token), str(r.duplicates), lease,
                      r.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
    console = _console()
    if records:
        console.print(table)
    else:
        click.echo("no claims match")
    if next_after is not None:
        click.echo(f"more: add --after {next_after!r}")


# The operations (release, purge, stats, demo) live beside this module; they
# register themselves on the group when imported.
from celery_claim import _cli_operations  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
