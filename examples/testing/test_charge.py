"""Testing your own ClaimTasks: eager mode on a SQLite file, no server needed.

Run with: python -m pytest examples/testing
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from celery_claim import ClaimInProgress, ClaimPayloadMismatch, ClaimTask


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Celery]:
    app = Celery("test", set_as_current=False)
    app.conf.claim_database_url = f"sqlite:///{tmp_path}/claims.db"
    yield app
    app.close()


def test_duplicates_return_the_first_result(app: Celery) -> None:
    calls = []

    @app.task(base=ClaimTask, bind=True, claim_key="charge:{order_id}")
    def charge(self: ClaimTask, order_id: int) -> dict[str, int]:
        calls.append(order_id)
        return {"order": order_id}

    # .apply() runs the task eagerly with the same claim semantics as a worker.
    assert charge.apply((7,)).get() == {"order": 7}
    assert charge.apply((7,)).get() == {"order": 7}
    assert calls == [7]


def test_a_different_payload_for_the_same_key_is_refused(app: Celery) -> None:
    @app.task(base=ClaimTask, bind=True, claim_key="charge:{order_id}")
    def charge(self: ClaimTask, order_id: int, amount: int) -> int:
        return amount

    charge.apply((7, 100))
    with pytest.raises(ClaimPayloadMismatch):
        charge.apply((7, 999), throw=True)


def test_a_duplicate_while_running_raises_in_eager_mode(app: Celery) -> None:
    @app.task(base=ClaimTask, bind=True, claim_key="job:{n}")
    def job(self: ClaimTask, n: int) -> None:
        # A worker would defer this duplicate; eager mode cannot, so it raises.
        with pytest.raises(ClaimInProgress):
            job.apply((n,), throw=True)

    job.apply((1,), throw=True)


def test_direct_calls_run_without_a_claim(app: Celery) -> None:
    @app.task(base=ClaimTask, bind=True, claim_key="job:{n}")
    def job(self: ClaimTask, n: int) -> bool:
        return self.claim.claimed

    assert job(1) is False  # a plain function call
    assert job.apply((1,)).get() is True


def test_skip_drops_the_duplicate(app: Celery) -> None:
    @app.task(base=ClaimTask, bind=True, claim_key="job:{n}", claim_on_running="skip")
    def job(self: ClaimTask, n: int) -> str:
        duplicate = job.apply((n,))
        return str(duplicate.state)

    # The duplicate was acknowledged and dropped: no result, no error.
    assert job.apply((1,), throw=True).get() == "IGNORED"
