"""The coalescer on its own: who runs alone, who shares a batch, who gets which error."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from celery_claim.coalesce import Coalescer

pytestmark = pytest.mark.unit


class Database:
    """Statements that answer ``key!`` and can be held in flight."""

    def __init__(self) -> None:
        self.singles: list[str] = []
        self.batches: list[list[str]] = []
        self.hold = threading.Event()
        self.held = threading.Event()
        self.refuse: set[str] = set()
        self.fail_batches = False

    def one(self, params: dict[str, Any]) -> str:
        key = params["key"]
        self.singles.append(key)
        if key == "first":
            self.held.set()
            assert self.hold.wait(10)
        if key in self.refuse:
            raise ValueError(f"refused {key}")
        return f"{key}!"

    def many(self, batch: Sequence[dict[str, Any]]) -> list[str]:
        keys = [params["key"] for params in batch]
        self.batches.append(keys)
        if self.fail_batches:
            raise ValueError("the batch failed")
        return [f"{key}!" for key in keys]


def _in_flight(coalescer: Coalescer, db: Database,
               calls: list[tuple[str, Any]]) -> dict[int, Any]:
    """Hold one statement in flight, queue ``calls`` behind it, let it go."""
    answers: dict[int, Any] = {}

    def call(n: int, key: str, group: Any) -> None:
        try:
            answers[n] = coalescer(key, {"key": key}, group)
        except BaseException as exc:  # an interrupted leader's, too
            answers[n] = exc

    first = threading.Thread(target=call, args=(-1, "first", None))
    first.start()
    assert db.held.wait(5)
    threads = [threading.Thread(target=call, args=(n, key, group))
               for n, (key, group) in enumerate(calls)]
    for thread in threads:
        thread.start()
    _until(lambda: len(coalescer._queue) == len(calls))
    db.hold.set()
    for thread in [first, *threads]:
        thread.join(10)
    return answers


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "the calls did not queue"
        time.sleep(0.001)


def test_a_call_with_nobody_in_flight_runs_alone_at_once() -> None:
    db = Database()
    coalescer = Coalescer(db.one, db.many, in_flight=1)
    db.hold.set()
    assert coalescer("a", {"key": "a"}) == "a!"
    assert coalescer("b", {"key": "b"}) == "b!"
    assert db.singles == ["a", "b"]
    assert db.batches == []


def test_calls_queued_behind_a_statement_share_the_next_one() -> None:
    db = Database()
    coalescer = Coalescer(db.one, db.many, in_flight=1)
    answers = _in_flight(coalescer, db, [(f"k{n}", None) for n in range(5)])
    assert answers == {-1: "first!", **{n: f"k{n}!" for n in range(5)}}
    assert db.singles == ["first"]
    assert [sorted(batch) for batch in db.batches] == [[f"k{n}" for n in range(5)]]
    assert (coalescer.batches, coalescer.batched_calls) == (1, 5)


def test_one_key_twice_never_shares_a_batch() -> None:
    db = Database()
    coalescer = Coalescer(db.one, db.many, in_flight=1)
    answers = _in_flight(coalescer, db, [("same", None), ("other", None), ("same", None)])
    assert answers == {-1: "first!", 0: "same!", 1: "other!", 2: "same!"}
    assert sorted(db.batches[0]) == ["other", "same"]
    assert db.singles == ["first", "same"]  # the second "same" came alone after the batch


def test_calls_with_other_options_never_share_a_batch() -> None:
    db = Database()
    coalescer = Coalescer(db.one, db.many, in_flight=1)
    _in_flight(coalescer, db, [("a", 1), ("b", 2), ("c", 1), ("d", 2)])
    assert sorted(sorted(batch) for batch in db.batches) == [["a", "c"], ["b", "d"]]


def test_a_failed_batch_is_each_call_on_its_own_with_its_own_error() -> None:
    db = Database()
    db.fail_batches = True
    db.refuse = {"bad"}
    coalescer = Coalescer(db.one, db.many, in_flight=1)
    answers = _in_flight(coalescer, db, [("ok1", None), ("bad", None), ("ok2", None)])
    assert answers[0] == "ok1!"
    assert answers[2] == "ok2!"
    assert isinstance(answers[1], ValueError)
    assert str(answers[1]) == "refused bad"
    assert sorted(db.singles) == ["bad", "first", "ok1", "ok2"]


def test_an_interrupted_leader_leaves_the_others_running() -> None:
    class Interrupted(BaseException):
        """What a soft time limit raises in the leader."""

    db = Database()
    leader_interrupted = threading.Event()

    def many(batch: Sequence[dict[str, Any]]) -> list[str]:
        leader_interrupted.set()
        raise Interrupted

    coalescer = Coalescer(db.one, many, in_flight=1)
    answers = _in_flight(coalescer, db, [("x", None), ("y", None)])
    assert leader_interrupted.is_set()
    # The leader's own call raised; the other ran on its own.
    assert sorted(type(a).__name__ if isinstance(a, BaseException) else a
                  for a in answers.values() if a != "first!") in (
        ["Interrupted", "y!"], ["Interrupted", "x!"])


def test_with_room_for_two_statements_the_third_call_queues() -> None:
    db = Database()
    second_held = threading.Event()
    release_second = threading.Event()

    def one(params: dict[str, Any]) -> str:
        if params["key"] == "second":
            second_held.set()
            assert release_second.wait(10)
        return db.one(params)

    coalescer = Coalescer(one, db.many, in_flight=2)
    threads = [threading.Thread(target=coalescer, args=("first", {"key": "first"})),
               threading.Thread(target=coalescer, args=("second", {"key": "second"}))]
    threads[0].start()
    assert db.held.wait(5)
    threads[1].start()
    assert second_held.wait(5), "the second call did not run at once"
    queued = [threading.Thread(target=coalescer, args=(k, {"key": k})) for k in ("a", "b")]
    for thread in queued:
        thread.start()
    _until(lambda: len(coalescer._queue) == 2)  # a third statement waits
    db.hold.set()
    release_second.set()
    for thread in [*threads, *queued]:
        thread.join(10)
    assert sorted(db.singles[:2]) == ["first", "second"]
    # Each queued call ran once: together, or alone when a slot came free for one.
    assert sorted([k for batch in db.batches for k in batch] + db.singles[2:]) == ["a", "b"]


def test_a_child_forked_mid_statement_starts_with_nothing_in_flight() -> None:
    db = Database()
    coalescer = Coalescer(db.one, db.many)
    first = threading.Thread(target=coalescer, args=("first", {"key": "first"}))
    first.start()
    assert db.held.wait(5)  # the parent has a statement in flight
    pid = os.fork()
    if pid == 0:  # the child: its own call runs at once, alone
        code = 0
        try:
            db.hold.set()
            code = 0 if coalescer("child", {"key": "child"}) == "child!" else 1
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child's call waited for the parent's statement")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        db.hold.set()
        first.join(10)
