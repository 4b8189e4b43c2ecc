"""The connection budget the suite's processes share (tests/support/connection_budget.py)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from support.connection_budget import ConnectionBudget


def _hold_then_exit(path: str, count: int, held: object) -> None:
    budget = ConnectionBudget(Path(path), 10)
    assert budget.take(count)
    held.set()  # type: ignore[attr-defined]
    time.sleep(0.5)
    os._exit(0)  # dies holding its share


def test_a_share_that_does_not_fit_waits_until_it_is_given_back(tmp_path: Path) -> None:
    budget = ConnectionBudget(tmp_path / "budget.json", 10)
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()
    other = ctx.Process(target=_hold_then_exit, args=(str(budget.path), 8, held))
    other.start()
    assert held.wait(10)
    assert not budget.take(5), "8 + 5 fit in a budget of 10"
    assert budget.take(2)
    budget.give_back()
    other.join(10)
    # The other process died holding 8: its share comes back.
    assert budget.take(10)
    budget.give_back()


def test_a_share_larger_than_the_budget_runs_alone(tmp_path: Path) -> None:
    budget = ConnectionBudget(tmp_path / "budget.json", 10)
    with budget.hold(50) as waited:
        assert waited < 1
        assert budget.path.read_text() == f'{{"{os.getpid()}": 10}}'
    assert budget.path.read_text() == "{}"
