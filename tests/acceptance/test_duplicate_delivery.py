"""Real workers, real Redis, real PostgreSQL: duplicates run each body once.

Two worker processes (prefork -c 2 and threads -c 4) consume one queue.
"""

from __future__ import annotations

import json
import time
import uuid

from support.scenario import Scenario

from celery_claim.testing import TcpProxy, publish_duplicates, wait_for

RECORDS = 200


def observed(scenario: Scenario, task: str, state: str = "SUCCESS") -> int:
    return int(scenario.scalar(
        f'SELECT count(*) FROM "{scenario.table}_observations" '
        "WHERE task_name = :task AND state = :state", task=task, state=state))


def test_same_message_published_five_times_runs_each_body_once(scenario: Scenario) -> None:
    app_module = scenario.app_module()
    scenario.create_tables(app_module)
    scenario.worker("prefork", 2)
    scenario.worker("threads", 4)
    scenario.ready()

    task_ids = publish_duplicates(app_module.process, [(n,) for n in range(RECORDS)], copies=5)
    wait_for(lambda: observed(scenario, "process") == RECORDS * 5, timeout=180, interval=0.5,
             message=lambda: f"{observed(scenario, 'process')} of {RECORDS * 5} deliveries "
                             f"finished\n{scenario.logs()}")

    assert scenario.effects_per_record("process") == {n: 1 for n in range(RECORDS)}
    assert scenario.body_starts("process") == {n: 1 for n in range(RECORDS)}
    deferred = observed(scenario, "process", "IGNORED")
    print(f"{deferred} copies arrived while their twin ran and were deferred")
    # Every copy finished with the stored result of the one that ran.
    rows = scenario.rows(f'SELECT o.task_id, o.retval, '
                         "convert_from(c.result, 'UTF8') FROM "
                         f'"{scenario.table}_observations" o JOIN "{scenario.table}" c '
                         f"ON c.task_id = o.task_id WHERE o.state = 'SUCCESS'")
    assert len(rows) == RECORDS * 5
    assert all(json.loads(retval) == json.loads(stored) for _, retval, stored in rows)
    assert {task_id for task_id, _, _ in rows} == set(task_ids)
    assert scenario.scalar(f'SELECT count(*) FROM "{scenario.table}" '
                           "WHERE state <> 'succeeded'") == 0
    assert scenario.scalar(f'SELECT sum(duplicates) FROM "{scenario.table}"') >= RECORDS * 4


def test_producer_duplicates_with_different_task_ids_run_once_by_business_key(
        scenario: Scenario) -> None:
    app_module = scenario.app_module()
    scenario.create_tables(app_module)
    scenario.worker("prefork", 2)
    scenario.worker("threads", 4)
    scenario.ready()

    with app_module.app.producer_or_acquire() as producer:
        for order in range(RECORDS):
            for _ in range(3):  # three task ids for one order
                app_module.charge.apply_async((order, 100 + order), task_id=str(uuid.uuid4()),
                                              producer=producer)
    wait_for(lambda: observed(scenario, "charge") == RECORDS * 3, timeout=180, interval=0.5,
             message=lambda: f"{observed(scenario, 'charge')} of {RECORDS * 3} finished\n"
                             f"{scenario.logs()}")

    assert scenario.effects_per_record("charge") == {n: 1 for n in range(RECORDS)}
    assert scenario.body_starts("charge") == {n: 1 for n in range(RECORDS)}
    results = scenario.rows(f'SELECT record_id, retval FROM "{scenario.table}_observations" '
                            "WHERE state = 'SUCCESS'")
    assert len(results) == RECORDS * 3
    for order, retval in results:
        assert json.loads(retval) == {"order_id": order, "charged": 100 + order}


def test_nothing_runs_while_postgresql_is_unreachable_then_everything_runs_once(
        scenario: Scenario) -> None:
    app_module = scenario.app_module()
    scenario.create_tables(app_module)
    proxy = TcpProxy.for_url(scenario.database_url).start()
    try:
        proxied = proxy.url(scenario.database_url)
        scenario.worker("prefork", 2, CLAIM_TEST_DATABASE_URL=proxied)
        scenario.worker("threads", 4, CLAIM_TEST_DATABASE_URL=proxied)
        scenario.ready()
        proxy.cut()
        records = 20
        publish_duplicates(app_module.charge, [(n, n) for n in range(records)], copies=2)
        time.sleep(6)  # acquires fail closed and the messages are re-published with back-off
        assert scenario.body_starts("charge") == {}
        assert scenario.effects_per_record("charge") == {}
        assert observed(scenario, "charge", "RETRY") > 0
        proxy.restore()
        wait_for(lambda: observed(scenario, "charge") == records * 2, timeout=120,
                 interval=0.5, message=lambda: f"{observed(scenario, 'charge')} finished\n"
                                               f"{scenario.logs()}")
        assert scenario.effects_per_record("charge") == {n: 1 for n in range(records)}
        assert scenario.body_starts("charge") == {n: 1 for n in range(records)}
    finally:
        proxy.close()
