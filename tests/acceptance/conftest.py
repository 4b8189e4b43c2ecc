"""Fixtures for tests with real ``celery worker`` processes (tests/support/scenario.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.scenario import AMQP_URL, GUARD, Scenario, unavailable


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The RabbitMQ server the broker scenarios use."""
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        unavailable(f"RabbitMQ at {AMQP_URL}", exc)
    return AMQP_URL


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def scenario(database_url: str, redis_url: str,
             request: pytest.FixtureRequest) -> Iterator[Scenario]:
    world = Scenario(database_url, redis_url, getattr(request, "param", GUARD))
    yield world
    report = getattr(request.node, "rep_call", None)
    world.close(failed=bool(report and report.failed))
