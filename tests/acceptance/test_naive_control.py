"""The control: the naive check-then-act guard must show duplicates in this harness.

The classic guard (``claim_app``'s check-then-act: read the record, decide,
then save it as held), and the ClaimTask run side by side in one run: the
same workers, the same queue, every job's copies published back to back, the
naive task's next to the claimed one's.
Nothing widens the race window: the naive task reads, then writes, with no
pause between. It must double some records, and the ClaimTask none. If the
naive task ever stops doubling, the harness has gone blind to the race, and
every passing scenario proves nothing: this test fails then. (Each fault
scenario also runs its own naive control.)
"""

from __future__ import annotations

import pytest
from support.scenario import Scenario

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.floor]

RECORDS = 100
COPIES = 4


def test_naive_guard_doubles_records_where_the_claim_runs_each_once(
        scenario: Scenario) -> None:
    # Not even a pause between the naive check and its act: the bare race.
    module = scenario.prepare(CLAIM_TEST_LEASE="2", CLAIM_TEST_LOAD_SECONDS="0")
    scenario.worker("prefork", 2)
    scenario.worker("threads", 3)
    scenario.ready()

    with module.app.producer_or_acquire() as producer:
        for record in range(RECORDS):
            for task in (module.naive_process, module.process):
                task_id = f"{task.name}-{record}-{scenario.name}"
                for _ in range(COPIES):
                    task.apply_async((record,), task_id=task_id, queue=scenario.name,
                                     producer=producer)
    scenario.drain(claims=True)

    naive = scenario.effects_per_record("naive_process")
    doubled = sum(1 for count in naive.values() if count > 1)
    extra = sum(count - 1 for count in naive.values())
    print(f"check-then-act: {doubled} of {RECORDS} records ran more than once "
          f"({extra} extra effects); ClaimTask: "
          f"{sum(scenario.effects_per_record('process').values())} effects")
    assert doubled > 0, "the naive guard showed no duplicates: the harness is blind to the race"
    scenario.assert_each_once("process", range(RECORDS))
