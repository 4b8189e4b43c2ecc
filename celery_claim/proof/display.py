"""What the demo and the soak show: the results table, the progress bars, a side's results.

rich is imported only when something is shown.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from celery_claim.proof import background

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

__all__ = ["Side", "flagged", "progress", "refreshing", "results_table"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Side:
    """What one version of the job did; the demo and the soak each add their own counts."""

    label: str
    deliveries: int
    suppressed: int
    double_effects: int
    lost: int
    seconds: float

    @property
    def failed(self) -> bool:
        """Some job ran twice or never."""
        return bool(self.double_effects or self.lost)

    @property
    def throughput(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "throughput": round(self.throughput, 1)}


def flagged(text: str, bad: bool) -> str:
    """``text`` in red where it shows a failure, else in green."""
    return f"[{'red' if bad else 'green'}]{text}[/]"


def results_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A row per version of the job: its label, then right-aligned numbers."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("task", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def progress(console: Console, *, quiet: bool) -> Progress:
    """Bars of ``description``, done out of total, the task's ``info`` field and the time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                    disable=quiet)


@contextlib.contextmanager
def refreshing(bars: Progress, update: Callable[[], None], every: float = 0.5) -> Iterator[None]:
    """Show ``bars`` and call ``update`` from a background thread every ``every`` seconds."""

    def refresh() -> None:
        with contextlib.suppress(Exception):  # a display glitch must not end the run
            update()

    with bars, background.repeating(refresh, lambda: every, name="proof-progress"):
        yield
