"""The example project under duplicate delivery and SIGKILL, with two real prefork
workers: ClaimTask charges every order once; the same body on a plain
celery.Task (the control) charges twice."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from example_project import ExampleProject

from celery_claim.testing import wait_for

# Two or three workers, a connection per pool thread or greenlet, each kept open.
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.connections(20)]

CLAIMED, PLAIN = "shop.tasks.charge", "shop.tasks.charge_plain"
#: The plain task is the control: it must charge twice where the claimed one charges once.
TASKS = [CLAIMED, pytest.param(PLAIN, marks=pytest.mark.control)]
ORDERS = range(1, 21)


@pytest.fixture
def project(database_url: str, redis_url: str) -> Iterator[ExampleProject]:
    project = ExampleProject(database_url, redis_url)
    try:
        project.manage("migrate", "-v0")
        yield project
    finally:
        project.close()


@pytest.mark.parametrize("task", TASKS)
def test_business_key_duplicates_charge_every_order_once(project: ExampleProject,
                                                         task: str) -> None:
    project.start_workers(2)
    project.publish(task, [(order, 100 * order) for order in ORDERS], copies=3)
    project.drain(claimed=task == CLAIMED)

    per_order = project.charges_per_order()
    print(f"{task}: {sum(per_order.values())} charges for {len(ORDERS)} orders "
          f"published 3 times each; orders charged more than once: "
          f"{sum(1 for n in per_order.values() if n > 1)}")
    assert set(per_order) == set(ORDERS), "an order was never charged"
    if task == CLAIMED:
        assert all(n == 1 for n in per_order.values()), per_order
        project.assert_one_receipt_each(ORDERS)
    else:
        assert any(n > 1 for n in per_order.values()), "the control did not double"


@pytest.mark.parametrize("task", TASKS)
def test_pool_children_killed_mid_body_leave_one_charge_per_order(project: ExampleProject,
                                                                   task: str) -> None:
    project.start_workers(2)
    held_orders, others = [101, 102], range(1, 9)
    project.publish(task, [(order, 100, True) for order in held_orders], copies=1)
    project.publish(task, [(order, 100) for order in others], copies=2)
    held = wait_for(lambda: len(project.held()) == 2 and project.held(), timeout=60,
                    message=lambda: f"holders: {project.held()}\n{project.logs()}")
    for pid in held.values():  # a pool child dies after its ORM write: no task hook runs
        project.worker_of(pid).kill(pid)
    project.drain(claimed=task == CLAIMED)

    per_order = project.charges_per_order()
    rows = project.charges()
    killed_rows = [r for r in rows if r.pid in held.values()]
    print(f"{task}: charges for the killed holders' orders: "
          f"{ {o: per_order[o] for o in held_orders} }; rows of the killed holders: "
          f"{len(killed_rows)}; other orders charged more than once: "
          f"{sum(1 for o in others if per_order[o] > 1)}")
    assert set(per_order) == {*held_orders, *others}, "an order was never charged"
    if task == CLAIMED:
        assert all(per_order[o] == 1 for o in [*held_orders, *others]), per_order
        assert killed_rows == [], "the killed holder's rows are there"
        assert sorted(r.token for r in rows if r.order_id in held_orders) == [2, 2]
        project.assert_one_receipt_each([*held_orders, *others])
    else:
        assert all(per_order[o] == 2 for o in held_orders), per_order
        assert len(killed_rows) == 2


@pytest.mark.parametrize(("pool", "concurrency"), [("threads", 4), ("gevent", 8)])
def test_thread_and_gevent_pools_on_persistent_connections_charge_once(
        project: ExampleProject, pool: str, concurrency: int) -> None:
    # Each pool thread (greenlet) has its own Django connection, kept open
    # between tasks (CONN_MAX_AGE=60), and so does the heartbeat thread.
    project.start_workers(2, pool=pool, concurrency=concurrency, DJANGO_CONN_MAX_AGE="60")
    project.publish(CLAIMED, [(order, 100) for order in ORDERS], copies=3)
    project.drain(claimed=True)

    per_order = project.charges_per_order()
    print(f"{pool}: {sum(per_order.values())} charges for {len(ORDERS)} orders published 3 "
          f"times each")
    assert per_order == {order: 1 for order in ORDERS}
    project.assert_one_receipt_each(ORDERS)
