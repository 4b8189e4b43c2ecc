"""Acking settings are explicit: the claim's defaults win over the app's
``task_acks_late``, a task's own attribute wins over both, and the worker says
so at start. A task that turns ``acks_late`` off is warned about."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from support.core_apps import AppModule, app_module

from celery_claim import ClaimTask, reporting, startup
from celery_claim.testing import wait_for


@pytest.fixture
def app() -> Iterator[Celery]:
    made = Celery("acking", broker="memory://", set_as_current=False)
    made.conf.update(claim_database_url="sqlite://", task_acks_late=False)
    yield made
    reporting._warned.clear()
    made.close()


def test_the_claims_defaults_win_over_the_apps_and_a_tasks_own_over_both(app: Celery) -> None:
    @app.task(base=ClaimTask, shared=False, name="acking.default")
    def default() -> None: ...

    @app.task(base=ClaimTask, shared=False, name="acking.own", acks_late=False)
    def own() -> None: ...

    app.finalize()
    assert (default.acks_late, default.reject_on_worker_lost) == (True, True)
    assert own.acks_late is False


def test_one_line_says_the_claim_overrides_the_app_and_acks_late_false_warns(
        app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    @app.task(base=ClaimTask, shared=False, name="acking.default")
    def default() -> None: ...

    @app.task(base=ClaimTask, shared=False, name="acking.early", acks_late=False)
    def early() -> None: ...

    @app.task(base=ClaimTask, shared=False, name="acking.unrejected",
              reject_on_worker_lost=False)
    def unrejected() -> None: ...

    app.finalize()
    with caplog.at_level(logging.INFO, logger="celery_claim"):
        startup.acking_report(app)
        startup.acking_report(app)  # a second call warns no more
    lines = [r.getMessage() for r in caplog.records]
    overrides = [line for line in lines if "over the app's task_acks_late=False" in line]
    assert len(overrides) == 2  # one line per report
    assert "acking.default" in overrides[0]
    assert "acking.early" not in overrides[0]
    assert sum("acking.early sets acks_late=False" in line for line in lines) == 1
    assert sum("acking.unrejected sets reject_on_worker_lost=False" in line
               for line in lines) == 1


def test_no_line_when_the_app_asks_for_the_same(app: Celery,
                                                caplog: pytest.LogCaptureFixture) -> None:
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True)

    @app.task(base=ClaimTask, shared=False, name="acking.default")
    def default() -> None: ...

    app.finalize()
    with caplog.at_level(logging.INFO, logger="celery_claim"):
        startup.acking_report(app)
    assert caplog.records == []


SOURCE = '''
app.conf.update(task_acks_late=False, task_serializer="pickle",
                accept_content=["json", "pickle"])


@app.task(base=ClaimTask, name="acking.default")
def default():
    return 1


@app.task(base=ClaimTask, name="acking.early", acks_late=False, serializer="json")
def early():
    return 1
'''


@pytest.fixture
def worker_app(tmp_path: Path, database_url: str, redis_url: str,
               table_name: str) -> Iterator[AppModule]:
    # The machine's tests run as root; Celery refuses pickle there unless told.
    yield from app_module(tmp_path, SOURCE, redis_url=redis_url, database_url=database_url,
                          table=table_name, C_FORCE_ROOT="1")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_worker_says_so_at_start(worker_app: AppModule) -> None:
    with worker_app.worker() as worker:
        wait_for(lambda: "sets acks_late=False" in worker.logs(), 20,
                 message=lambda: worker.logs())
        logs = worker.logs()
    assert "1 ClaimTask task(s) run with the claim's acks_late=True" in logs
    assert "over the app's task_acks_late=False" in logs
    assert "task acking.early sets acks_late=False" in logs
    # The pickle task's payload check is not switched off without a word.
    assert "task acking.default uses the pickle serializer" in logs
    assert "acking.early uses the pickle serializer" not in logs
