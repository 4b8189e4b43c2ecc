"""The connection budget the suite's processes share (tests/support/connection_budget.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from support.connection_budget import ConnectionBudget


def _hold_then_exit(path: str, count: int, held: Any) -> None:
    assert ConnectionBudget(Path(path), 10).take(count)
    held.set()
    time.sleep(0.5)
    os._exit(0)  # dies holding its share


def _try_take(path: str, count: int, answer: Any) -> None:
    answer.put(ConnectionBudget(Path(path), 10).take(count))


def test_a_share_that_does_not_fit_waits_its_turn_until_it_is_given_back(
        tmp_path: Path) -> None:
    budget = ConnectionBudget(tmp_path / "budget.json", 10)
    ctx = multiprocessing.get_context("fork")
    held, answer = ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=_hold_then_exit, args=(str(budget.path), 8, held))
    holder.start()
    assert held.wait(10)
    assert not budget.take(5), "8 + 5 fit in a budget of 10"
    # 2 would fit, but this process came first: the newcomer waits behind it.
    late = ctx.Process(target=_try_take, args=(str(budget.path), 2, answer))
    late.start()
    assert answer.get(timeout=10) is False
    late.join(10)
    holder.join(10)
    # The holder died holding 8, the newcomer is gone: the first waiter takes 5.
    assert budget.take(5)
    budget.give_back()
    budget.remove_if_unused()
    assert not budget.path.exists()


def test_a_share_larger_than_the_budget_runs_alone(tmp_path: Path) -> None:
    budget = ConnectionBudget(tmp_path / "budget.json", 10)
    with budget.hold(50) as waited:
        assert waited < 1
        assert json.loads(budget.path.read_text())["held"] == {str(os.getpid()): 10}
    assert json.loads(budget.path.read_text()) == {"held": {}, "waiting": []}


def test_a_torn_file_starts_again(tmp_path: Path) -> None:
    budget = ConnectionBudget(tmp_path / "budget.json", 10)
    budget.path.write_text('{"held": {"1')
    assert budget.take(10)
    budget.give_back()
