"""Canvas under duplicate delivery: chains, groups, chords, link and link_error.

Real ``celery worker`` processes, a Redis broker, and both the Redis and the
database result backend. The broker pushes every message of the app's tasks
twice (``canvas_app.DuplicatingChannel``): the canvas the test publishes and
everything the workers publish for it (a chain's next step, a chord's
callback, callbacks, deferrals). Every body start is counted in PostgreSQL.

What must hold, on every Celery release the project supports (these tests
carry the ``canvas`` marker; ``.ci/canvas-matrix`` runs them on 5.5 and 5.6):

* each body runs once, however many times its message arrives;
* a chord's callback runs once, with each header result exactly once;
* a chain's next step does not run twice;
* a chord part whose first delivery died after its claim completed, before
  Celery stored the result and counted the part, is counted from the stored
  result when its message comes back, so the chord completes.

``link`` callbacks here are frozen signatures (their task id fixed before
the parent is sent), and in their own test not frozen: Celery would give
such a callback a new task id at each dispatch, and the duplicate of its
parent dispatches it again; the claim gives it an id made from the parent's
key, so it runs once too.

The naive control runs the same canvas with plain ``celery.Task``
check-then-act bodies and must show bodies run twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import canvas_world
import pytest
from canvas_world import Canvas
from celery import chain, chord, group
from support.scenario import Scenario

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.canvas]

BACKENDS = ["redis", "database"]


@pytest.fixture
def canvas(scenario: Scenario) -> Iterator[Canvas]:
    yield from canvas_world.world(scenario)


# --- the chord of the report: 30 dict results, each header delivered twice ------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_chord_of_dict_results_delivered_twice_gets_each_result_once(
        canvas: Canvas, backend: str) -> None:
    # One pool process: each header message's copy runs right after it, and
    # returns the stored result. On Celery before 5.7 the Redis backend counts
    # a chord part by its encoded bytes: a replayed result that encodes
    # differently (keys reordered) is a second part, and the chord fires
    # early, with doubled results and others missing.
    module = canvas.prepare(backend)
    canvas.worker("prefork", 1)
    canvas.scenario.ready()
    parts = range(1, 31)

    chord(module.part.s(n, kind="chord") for n in parts)(module.gather.s(kind="chord"))
    canvas.drain()

    assert canvas.deliveries("part") >= 60, "the header messages were not delivered twice"
    canvas.assert_once("chord", parts)
    canvas.assert_chord_once("chord", parts)


# --- every primitive at once, several workers ------------------------------------------------

CHAINS, STEPS = range(5), range(3)
GROUP = range(10)
CHORD = range(10)
LINKED = range(10)
FAILING = range(5)


def chain_record(chain_no: int, step_no: int) -> int:
    return chain_no * len(STEPS) + step_no


def launch_canvas(module: Any, naive: bool = False) -> None:
    """Chains, a group, a chord, link and link_error callbacks, all at once."""
    prefix = "naive_" if naive else ""

    def task(name: str) -> Any:
        return getattr(module, prefix + name)

    for c in CHAINS:
        chain(task("part").s(chain_record(c, 0), kind="chain"),
              *(task("link_step").s(chain_record(c, s), kind="chain") for s in STEPS[1:])
              ).apply_async()
    group(task("part").s(n, kind="group") for n in GROUP).apply_async()
    chord(task("part").s(n, kind="chord") for n in CHORD)(task("gather").s(kind="chord"))
    for n in LINKED:
        # A frozen callback: its task id is fixed before the parent is sent,
        # so every dispatch of it, the duplicate parent's too, is one message.
        callback = task("link_step").s(n, kind="link")
        callback.freeze()
        task("part").apply_async((n,), {"kind": "linked"}, link=callback)
    for n in FAILING:
        task("declined").apply_async((n,), link_error=task("errback").s(record_id=n))


def canvas_runs(canvas: Canvas) -> dict[str, Counter[int]]:
    kinds = ["chain", "group", "chord", "chord.callback", "linked", "link", "failed", "errback"]
    return {kind: canvas.runs(kind) for kind in kinds}


@pytest.mark.parametrize("backend", BACKENDS)
def test_chain_group_chord_and_callbacks_delivered_twice_run_each_body_once(
        canvas: Canvas, backend: str) -> None:
    module = canvas.prepare(backend)
    canvas.worker("prefork", 2)
    canvas.worker("threads", 3)
    canvas.scenario.ready()

    launch_canvas(module)
    canvas.drain()

    print({task: canvas.deliveries(task) for task in ("part", "link_step", "gather",
                                                      "declined", "errback")})
    assert canvas.deliveries("link_step") >= 2 * len(CHAINS) * (len(STEPS) - 1)
    canvas.assert_once("chain", [chain_record(c, s) for c in CHAINS for s in STEPS])
    canvas.assert_once("group", GROUP)
    canvas.assert_once("chord", CHORD)
    canvas.assert_chord_once("chord", CHORD)
    canvas.assert_once("linked", LINKED)
    canvas.assert_once("link", LINKED)
    canvas.assert_once("failed", FAILING)
    canvas.assert_once("errback", FAILING)


@pytest.mark.control
def test_the_naive_canvas_runs_bodies_twice(canvas: Canvas) -> None:
    # The control: the same canvas, the same duplicated messages and workers,
    # with plain celery.Task bodies behind a check-then-act guard.
    module = canvas.prepare("redis")
    canvas.worker("prefork", 2)
    canvas.worker("threads", 3)
    canvas.scenario.ready()

    launch_canvas(module, naive=True)
    canvas.drain(claims=False)

    runs = canvas_runs(canvas)
    doubled = {kind: sum(1 for n in counts.values() if n > 1) for kind, counts in runs.items()}
    extra = sum(n - 1 for counts in runs.values() for n in counts.values())
    print(f"check-then-act canvas: records run more than once per kind {doubled}, "
          f"{extra} extra body runs in all")
    assert extra > 0, "the naive canvas ran every body once: the harness is blind"


def test_a_link_callback_not_frozen_runs_once_when_its_parent_is_delivered_twice(
        canvas: Canvas) -> None:
    # One pool process: each parent's copy runs after it, as a duplicate.
    module = canvas.prepare("redis")
    canvas.worker("prefork", 1)
    canvas.scenario.ready()

    for n in LINKED:
        module.part.apply_async((n,), {"kind": "linked"},
                                link=module.link_step.s(n, kind="link"))
    canvas.drain()

    canvas.assert_once("linked", LINKED)
    canvas.assert_once("link", LINKED)


# --- a chord part killed after its claim completed -----------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_part_killed_after_completing_is_counted_and_the_chord_completes(
        canvas: Canvas, backend: str) -> None:
    # No duplicates here: the only copy of the killed parts' messages is the
    # one the worker puts back (reject_on_worker_lost). Its delivery finds the
    # claim succeeded and must report the stored result, or the chord never
    # completes; the chain's next step must be dispatched by it too.
    killed = [3, 7]
    chain_killed = 101
    module = canvas.prepare(
        backend, duplicate=False,
        CLAIM_TEST_KILL_AFTER_COMPLETE=",".join(map(str, [*killed, chain_killed])))
    worker = canvas.worker("prefork", 2)
    canvas.scenario.ready()
    parts = range(10)

    chord(module.part.s(n, kind="chord") for n in parts)(module.gather.s(kind="chord"))
    chain(module.part.s(chain_killed, kind="chain"),
          module.link_step.s(chain_killed + 1, kind="chain")).apply_async()
    canvas.drain()

    for record in [*killed, chain_killed]:
        assert canvas.scenario.marker(f"killed:{record}"), f"record {record} was not killed"
    assert worker.logs().count("signal 9 (SIGKILL)") >= 3, worker.log_tail(60)
    canvas.assert_once("chord", parts)
    canvas.assert_chord_once("chord", parts)
    canvas.assert_once("chain", [chain_killed, chain_killed + 1])
