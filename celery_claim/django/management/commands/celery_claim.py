"""``manage.py celery_claim <status|list|release|purge|stats>``: the CLI, on Django's settings.

The subcommands are the ``celery-claim`` command line's own (same options,
output and exit codes: 1 error, 2 usage, 3 no such claim, 4 refused); the
store is the claim's Django database (``CELERY_CLAIM_DJANGO_DATABASE``) and
table (``CELERY_CLAIM_TABLE``).
"""

from __future__ import annotations

import argparse
import types
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError

from celery_claim import _cli_operations, cli
from celery_claim.django import conf

SUBCOMMANDS = (cli.status, cli.list_, _cli_operations.release, _cli_operations.purge,
               _cli_operations.stats)


@click.group(name="celery_claim", context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def group(ctx: click.Context) -> None:
    """Inspect and operate the claims in this project's claim database."""
    ctx.meta["celery_claim.options"] = {"database_url": None, "table": None}


for _command in SUBCOMMANDS:
    group.add_command(_command)


def _root_object() -> Any:
    """What ``celery -A proj claim`` passes: an object with the app's ``conf``."""
    settings = {"claim_django_database": conf.database_alias(), "claim_table": conf.table_name()}
    return types.SimpleNamespace(app=types.SimpleNamespace(conf=settings))


class Command(BaseCommand):  # type: ignore[misc]
    help = "Inspect and operate celery-claim's claims: status, list, release, purge, stats."

    def run_from_argv(self, argv: list[str]) -> None:
        group.main(args=argv[2:], prog_name=f"{argv[0]} {argv[1]}", obj=_root_object())

    def print_help(self, prog_name: str, subcommand: str) -> None:
        self.run_from_argv([prog_name, subcommand, "--help"])

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="a subcommand and its options")

    def handle(self, *args: str, **options: Any) -> None:
        """For ``call_command("celery_claim", "list", "--json")``."""
        try:
            group.main(args=list(args), prog_name="celery_claim", obj=_root_object(),
                       standalone_mode=False)
        except click.ClickException as exc:
            raise CommandError(exc.format_message(), returncode=exc.exit_code) from exc
        except click.exceptions.Exit as exc:
            if exc.exit_code:
                raise CommandError(f"exit {exc.exit_code}", returncode=exc.exit_code) from exc
