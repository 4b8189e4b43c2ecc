"""RabbitMQ as the broker: classic and quorum queues, real workers.

Each test has a vhost of its own (made and deleted with ``rabbitmqctl``).
RabbitMQ puts a message back in its queue as soon as the consumer that
holds it is gone (a killed pool process is rejected with requeue; a killed
worker or a cut connection is requeued by the broker), so a duplicate comes
while the first delivery may still be running. Quorum queues re-deliver with
a delivery count (``x-delivery-count``). Each scenario runs as its naive
control too, which must double or lose some.
"""

from __future__ import annotations

import time

import pytest
from support.scenario import Scenario

from celery_claim.testing import TcpProxy, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]

LEASE = "2"
#: Each scenario with the ClaimTasks on classic and quorum queues, and as its
#: naive control (on classic queues: the control shows that the scenario can
#: see the failure; the queue type does not change what the naive guard does).
#: The claimed run on quorum queues also runs at the lowest releases (Celery
#: 5.5 brought their native delayed delivery).
cases = pytest.mark.parametrize(("scenario", "queue_type"), [
    ("claim", "classic"), ("naive", "classic"),
    pytest.param("claim", "quorum", marks=pytest.mark.floor),
], indirect=["scenario"])


@pytest.fixture
def rabbit(scenario: Scenario, amqp_url: str, queue_type: str) -> Scenario:
    scenario.use_rabbitmq(amqp_url, queue_type)
    return scenario


def start_workers(scenario: Scenario, **env: str) -> None:
    scenario.worker("prefork", 2, **env)
    scenario.worker("threads", 3, **env)
    scenario.ready()


@cases
def test_the_same_message_many_times_runs_once(rabbit: Scenario) -> None:
    rabbit.prepare(CLAIM_TEST_LEASE=LEASE)
    start_workers(rabbit)
    job, records = rabbit.job("process"), rabbit.sized(40, 8)

    rabbit.publish(job, [(n,) for n in records], copies=4)
    rabbit.drain()

    rabbit.assert_outcome(job, records)
    if rabbit.claimed:
        assert rabbit.body_starts(job) == {n: 1 for n in records}
        assert rabbit.observed(job, "SUCCESS") == 4 * len(records)


@cases
def test_a_killed_worker_is_taken_over(rabbit: Scenario) -> None:
    # A pool process and a whole worker die holding a body, its effect
    # written: RabbitMQ requeues their messages at once, and the lease
    # decides who may run them.
    child_queue, machine_queue = rabbit.queue("child"), rabbit.queue("machine")
    env = {"CLAIM_TEST_LEASE": LEASE, "CLAIM_TEST_EXTRA_QUEUES": f"{child_queue},{machine_queue}"}
    rabbit.prepare(**env)
    prefork = rabbit.worker("prefork", 2, queues=[child_queue], **env)
    machine = rabbit.worker("threads", 3, queues=[machine_queue], **env)
    rabbit.ready()
    job, load, in_child, in_machine = rabbit.job("process"), rabbit.sized(30, 4), 1000, 1001

    rabbit.publish(job, [{"record_id": in_child, "hold": True}], queue=child_queue)
    rabbit.publish(job, [{"record_id": in_machine, "hold": True}], queue=machine_queue)
    rabbit.publish(job, [{"record_id": n, "sleep": 0.05} for n in load], copies=2)
    held = wait_for(lambda: len(rabbit.held(job)) == 2 and rabbit.held(job), timeout=60,
                    message=lambda: f"holders: {rabbit.held(job)}\n{rabbit.logs()}")

    prefork.kill(held[in_child])
    machine.kill()
    rabbit.worker("threads", 3, queues=[machine_queue], **env).ready()
    rabbit.drain()

    rabbit.assert_outcome(job, [*load, in_child, in_machine])
    for record, pid in held.items():
        effects = rabbit.effect_rows(job, record)
        if rabbit.claimed:
            assert pid not in {row.pid for row in effects}, "the killed holder's write is there"
            assert [row.token for row in effects] == [2]
            assert rabbit.body_starts(job)[record] == 2
        else:
            # The control keeps the dead holder's write and runs the record
            # again: twice at least (one run of the suite saw a third start).
            assert pid in {row.pid for row in effects}, "the naive control lost the write"
            assert rabbit.body_starts(job)[record] >= 2


@cases
def test_the_consumer_connection_lost_mid_body_runs_each_once(rabbit: Scenario) -> None:
    # The workers reach RabbitMQ through a proxy, which resets their
    # connections while bodies run: RabbitMQ requeues what they held and
    # delivers it again (to them once they reconnect, or to the other worker)
    # while the first deliveries are still running.
    proxy = TcpProxy.for_url(rabbit.broker_url).start()
    try:
        env = {"CLAIM_TEST_LEASE": LEASE, "CLAIM_TEST_BROKER": proxy.url(rabbit.broker_url)}
        rabbit.prepare(CLAIM_TEST_LEASE=LEASE)
        start_workers(rabbit, **env)
        job, records = rabbit.job("process"), rabbit.sized(40, 16)
        rabbit.publish(job, [(n, 0.5) for n in records], copies=2)
        wait_for(lambda: len(rabbit.effects_per_record(job)) >= 4, timeout=60,
                 message=lambda: f"no progress\n{rabbit.logs()}")
        for _ in range(2):
            proxy.drop_connections()
            time.sleep(1.0)
        rabbit.drain(timeout=180)

        redelivered = rabbit.observed(job, redelivered=True)
        print(f"{redelivered} deliveries were RabbitMQ re-deliveries")
        assert redelivered > 0, "RabbitMQ never re-delivered: the scenario did not happen"
        rabbit.assert_outcome(job, records)
    finally:
        rabbit.stop_workers()
        proxy.close()
