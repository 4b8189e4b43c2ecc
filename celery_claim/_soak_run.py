"""The soak's run: its options and report, on the proof run (:mod:`celery_claim.proof.run`).

:mod:`celery_claim.soak` is the command on top of it. The soak is the proof
run with its own defaults: PostgreSQL and Redis, both versions side by side,
copies early and late, kills.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack

import sqlalchemy as sa

from celery_claim._soak_app import SoakConfig
from celery_claim.proof.counting import percentiles
from celery_claim.proof.harness import exit_on_sigterm
from celery_claim.proof.run import (
    LABELS,
    RunOptions,
    RunReport,
    SideReport,
    config_fields,
    workers_text,
)
from celery_claim.proof.run import run as run_proof

__all__ = ["LABELS", "SideReport", "SoakError", "SoakOptions", "SoakReport", "percentiles", "run"]

#: The soak's report: the proof run's.
SoakReport = RunReport


class SoakError(RuntimeError):
    """The soak could not run (bad settings, a service down, workers that never drained)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoakOptions(RunOptions):
    """``celery-claim soak``'s options: the proof run's, with its defaults."""


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
    console.print(f"[bold]celery-claim soak[/]: {workers_text(options)}, every record "
                  f"published {options.copies} times, {options.kill_rate:g} kills/min"
                  + ("" if options.control else ", no control"))
    with ExitStack() as stack:
        try:
            return run_proof(options, SoakConfig(**config_fields(options)), stack, console,
                             app_module="celery_claim._soak_app", error=SoakError, quiet=quiet,
                             command=command)
        except SoakError:
            raise
        except Exception as exc:
            raise SoakError(f"the soak failed: {exc}".splitlines()[0]) from exc


def _check(options: SoakOptions) -> None:
    url = options.database_url
    if not url or sa.engine.make_url(url).get_backend_name() != "postgresql":
        raise SoakError("the soak needs PostgreSQL: --database-url postgresql+psycopg://...")
    if not (options.broker_url or "").startswith(("redis://", "rediss://")):
        raise SoakError("the soak needs a Redis broker: --broker-url redis://...")
