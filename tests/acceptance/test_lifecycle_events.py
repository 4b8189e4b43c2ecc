"""What happens to a claimed task at each life-cycle event Celery has, with real workers.

Each test drives one event against a :class:`ClaimTask` body running in a
real ``celery worker`` (Redis broker, Redis result backend) and asserts the
outcome the guarantees page documents (docs/guarantees.md, "Life-cycle
events"): nothing lost unless the user asked for it, nothing doubled.

* ``revoke()`` of a running task: the body runs to its end (Celery does not
  stop a running body without ``terminate``); later copies of the message
  are discarded as revoked.
* ``revoke(terminate=True)``: the pool process is signalled, the body stops,
  the message is acknowledged (the user asked) and the claim is released, so
  a delivery the user sends again may run the job.
* warm shutdown (SIGTERM to the worker) mid-body: the body finishes and its
  claim completes before the worker exits; what it had not started stays
  queued for the next worker.
* a soft time limit: ``SoftTimeLimitExceeded`` is the body's failure; the
  claim is marked ``failed`` and the result is FAILURE, once.
* an ETA/countdown longer than the Redis ``visibility_timeout``: kombu puts
  the waiting message back and it is delivered again; the body runs once
  (a plain task runs it twice: the control).
* ``expires``: a message past its expiry is not run, and no claim is made;
  the result is REVOKED. A copy of a message that already succeeded, arriving
  after its expiry, is discarded and leaves the SUCCESS result as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import canvas_world
import pytest
from canvas_world import Canvas
from support.scenario import Scenario

from celery_claim.testing import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.lifecycle]


def restore_unacked(module: Any) -> None:
    """Put messages older than the visibility timeout back, as kombu's Redis transport does.

    Workers do it themselves every second with kombu 5.7 (the app's
    ``unacked_restore_interval``); kombu before 5.7 sweeps about every 100 s
    whatever the options, so the test sweeps too, with the same code.
    """
    with module.app.connection_for_write() as conn:
        conn.default_channel.qos.restore_visible(num=1000, interval=1)


@pytest.fixture
def canvas(scenario: Scenario) -> Iterator[Canvas]:
    yield from canvas_world.world(scenario)


def start(canvas: Canvas, concurrency: int = 2, **env: str) -> Any:
    """One prefork worker running ``canvas_app`` (no duplication); the app module."""
    module = canvas.prepare("redis", duplicate=False, **env)
    canvas.worker("prefork", concurrency)
    canvas.scenario.ready()
    return module


def holding(canvas: Canvas, record: int) -> int:
    """Wait until the body of ``record`` holds; return its pid."""
    scenario = canvas.scenario
    found = wait_for(lambda: scenario.redis.get(f"{scenario.name}:holding:{record}"),
                     timeout=60, message=lambda: f"record {record} never held\n{scenario.logs()}")
    return int(found)


def go(canvas: Canvas, record: int) -> None:
    canvas.scenario.redis.set(f"{canvas.scenario.name}:go:{record}", 1)


def claim_of(canvas: Canvas, task_id: str) -> Any:
    rows = canvas.scenario.rows(
        f'SELECT state, token FROM "{canvas.scenario.table}" '
        "WHERE task_id = :id", id=task_id)
    assert len(rows) == 1, rows
    return rows[0]


def state_of(result: Any, timeout: float = 30.0, *, among: tuple[str, ...]) -> str:
    """Wait until the result backend holds one of the states ``among``."""
    wait_for(lambda: result.state in among, timeout=timeout,
             message=lambda: f"{result.id} is {result.state}, not one of {among}")
    return str(result.state)


def test_revoke_of_a_running_task_lets_the_body_finish_once(canvas: Canvas) -> None:
    module = start(canvas)

    result = module.hold.apply_async((1,), {"seconds": 30})
    holding(canvas, 1)
    result.revoke()
    time.sleep(1)  # the broadcast reaches the worker
    go(canvas, 1)
    wait_for(lambda: claim_of(canvas, result.id).state == "succeeded", timeout=30,
             message=lambda: f"the body did not finish\n{canvas.scenario.logs()}")
    # The same message again: the worker discards it as revoked.
    module.hold.apply_async((1,), {"seconds": 30}, task_id=result.id)
    canvas.drain()

    assert canvas.runs("hold") == {1: 1}
    canvas.scenario.node(canvas.scenario.workers[0]).assert_log_exists(
        f"Discarding revoked task: canvas_app.hold[{result.id}]")
    # Celery 5.6 stores REVOKED for a revoked task while it runs (5.5 and 5.7
    # leave a running task's state to it); the body's SUCCESS replaces it.
    assert result.state == "SUCCESS"


def test_revoke_with_terminate_stops_the_body_and_its_message_is_not_run_again(
        canvas: Canvas) -> None:
    module = start(canvas, CLAIM_TEST_LEASE="2")

    result = module.hold.apply_async((2,), {"seconds": 30})
    holding(canvas, 2)
    result.revoke(terminate=True)
    assert state_of(result, among=("SUCCESS", "FAILURE", "REVOKED")) == "REVOKED"
    canvas.drain()
    time.sleep(2.5)  # past the lease: nothing came back for it

    assert canvas.runs("hold") == {2: 1}
    # The signal ends the body with an exception that is not an Exception:
    # the claim is given back, so a later delivery (sent again by the user)
    # may run the job.
    claim = claim_of(canvas, result.id)
    assert (claim.state, claim.token) == ("released", 1)


def test_warm_shutdown_mid_body_finishes_the_body_and_keeps_the_queue(
        canvas: Canvas) -> None:
    module = start(canvas, 1)
    [first] = canvas.scenario.workers
    queued = range(10, 15)

    held = module.hold.apply_async((3,), {"seconds": 30})
    holding(canvas, 3)
    for n in queued:
        module.quick.apply_async((n,))
    first.terminate()  # SIGTERM: warm shutdown
    time.sleep(1.5)
    assert first.running, "the worker did not wait for its running body"
    go(canvas, 3)
    assert first.stop(timeout=30) == 0
    assert held.state == "SUCCESS"
    canvas.worker("prefork", 1).ready()
    canvas.drain()

    assert canvas.runs("hold") == {3: 1}
    canvas.assert_once("quick", queued)
    assert claim_of(canvas, held.id).state == "succeeded"


def test_a_soft_time_limit_fails_the_body_once(canvas: Canvas) -> None:
    module = start(canvas)

    result = module.hold.apply_async((4,), {"seconds": 30}, soft_time_limit=1)
    assert state_of(result, among=("SUCCESS", "FAILURE")) == "FAILURE"
    canvas.drain()

    assert type(result.result).__name__ == "SoftTimeLimitExceeded"
    assert canvas.scenario.marker("soft-limit:4") == 1
    assert canvas.runs("hold") == {4: 1}
    assert claim_of(canvas, result.id).state == "failed"


def test_a_countdown_longer_than_the_visibility_timeout_runs_once(canvas: Canvas) -> None:
    # kombu's Redis transport puts a message a worker holds for its ETA back
    # in the queue once it is older than visibility_timeout: it is delivered
    # again, and both copies come due together. The plain task is the control.
    module = canvas.prepare("redis", duplicate=False, CLAIM_TEST_VISIBILITY_TIMEOUT="1")
    canvas.worker("prefork", 2)
    canvas.worker("threads", 2)
    canvas.scenario.ready()
    records = range(20, 24)

    for n in records:
        module.quick.apply_async((n,), countdown=3)
        module.plain.apply_async((n,), countdown=3)
    for _ in range(2):
        time.sleep(1.2)
        restore_unacked(module)
    canvas.drain()

    print(f"deliveries: quick {canvas.deliveries('quick')}, plain {canvas.deliveries('plain')}; "
          f"plain runs {dict(canvas.runs('plain'))}")
    assert canvas.deliveries("quick") > len(records), "no message was delivered twice"
    assert sum(canvas.runs("plain").values()) > len(records), "the control ran each once"
    canvas.assert_once("quick", records)


def test_a_message_past_its_expiry_is_not_run(canvas: Canvas) -> None:
    module = start(canvas, 1)

    busy = module.hold.apply_async((5,), {"seconds": 30})
    holding(canvas, 5)
    expired = module.quick.apply_async((6,), expires=1)
    time.sleep(1.5)
    go(canvas, 5)
    assert state_of(expired, among=("SUCCESS", "REVOKED")) == "REVOKED"
    canvas.drain()

    assert busy.state == "SUCCESS"
    assert canvas.runs("quick") == {}
    assert canvas.scenario.scalar(
        f'SELECT count(*) FROM "{canvas.scenario.table}" WHERE task_id = :id',
        id=expired.id) == 0


def test_a_copy_arriving_after_expiry_leaves_the_first_result(canvas: Canvas) -> None:
    # The first delivery ran and succeeded; a copy of the same message comes
    # after its expiry (the producer sent it again, Redis re-delivered it).
    module = start(canvas, 1)
    expires = datetime.now(timezone.utc) + timedelta(seconds=2)

    first = module.quick.apply_async((7,), expires=expires)
    assert state_of(first, among=("SUCCESS", "REVOKED")) == "SUCCESS"
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.5)
    module.quick.apply_async((7,), expires=expires, task_id=first.id)
    canvas.drain()

    assert canvas.runs("quick") == {7: 1}
    assert module.quick.AsyncResult(first.id).state == "SUCCESS"
