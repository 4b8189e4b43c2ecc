"""Prometheus metrics fed by real claims on PostgreSQL, and the purge beat task."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry

from celery_claim import ClaimLost, ClaimStore, ClaimStoreError, ClaimTask, metrics
from celery_claim.testing import free_port


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    installed = metrics.ClaimMetrics.create(registry)
    installed.connect()
    yield registry
    installed.disconnect()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_counters_and_histograms_follow_the_claims(make_app: Callable[..., Celery],
                                                   database_url: str,
                                                   registry: CollectorRegistry) -> None:
    app = make_app(database_url)

    @app.task(base=ClaimTask, bind=True, claim_key="charge:{order_id}", shared=False,
              name="billing.charge")
    def charge(self: ClaimTask, order_id: int, fail: bool = False) -> int:
        if fail:
            raise ValueError("card declined")
        return order_id

    assert charge.apply((1,)).get() == 1
    assert charge.apply((1,)).get() == 1  # duplicate after success: the stored result
    assert charge.apply((2,), {"fail": True}).failed()
    task = {"task": "billing.charge"}
    assert value(registry, "celery_claim_acquisitions_total", **task) == 2
    assert value(registry, "celery_claim_duplicates_total", outcome="succeeded", **task) == 1
    assert value(registry, "celery_claim_completions_total", state="succeeded", **task) == 1
    assert value(registry, "celery_claim_completions_total", state="failed", **task) == 1
    assert value(registry, "celery_claim_acquire_seconds_count", **task) == 2
    assert value(registry, "celery_claim_acquire_seconds_sum", **task) > 0
    assert value(registry, "celery_claim_held_seconds_count", state="succeeded", **task) == 1


def test_lost_claims_and_releases_are_counted(make_app: Callable[..., Celery],
                                              database_url: str,
                                              registry: CollectorRegistry) -> None:
    app = make_app(database_url)

    @app.task(base=ClaimTask, bind=True, shared=False, name="billing.slow")
    def slow(self: ClaimTask) -> None:
        # An operator (or a takeover) takes the claim away mid-body.
        self.claim_store.force_release(self.claim.key, self.claim.token, force=True)

    @app.task(base=ClaimTask, bind=True, shared=False, name="billing.retrying",
              max_retries=1, default_retry_delay=0)
    def retrying(self: ClaimTask) -> None:
        if self.request.retries == 0:
            raise self.retry()

    with pytest.raises(ClaimLost):
        slow.apply(throw=True)
    retrying.apply()
    assert value(registry, "celery_claim_lost_total", task="billing.slow", where="complete") == 1
    assert value(registry, "celery_claim_releases_total", task="billing.retrying",
                 reason="retry") == 1


def test_store_errors_are_counted(make_app: Callable[..., Celery],
                                  registry: CollectorRegistry) -> None:
    app = make_app(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none",
                   claim_create_schema=False)

    @app.task(base=ClaimTask, bind=True, shared=False, name="billing.unreachable")
    def unreachable(self: ClaimTask) -> None:
        raise AssertionError("the body must not run without a claim")

    with pytest.raises(ClaimStoreError):
        unreachable.apply(throw=True)
    assert value(registry, "celery_claim_store_errors_total", task="billing.unreachable",
                 operation="acquire") == 1


def test_install_is_once_per_process() -> None:
    registry = CollectorRegistry()
    try:
        first = metrics.install(registry)
        assert metrics.install(registry) is first
    finally:
        metrics.uninstall()


def test_store_collector_reports_claims_and_stale_claims(pg_store: ClaimStore) -> None:
    for key, lease in (("a", 60.0), ("b", -1.0), ("c", -1.0)):
        pg_store.acquire(key, task_name="t", task_id=key, owner="o", payload_digest=None,
                         lease_seconds=lease)
    registry = CollectorRegistry()
    registry.register(metrics.ClaimStoreCollector(pg_store))
    assert registry.get_sample_value("celery_claim_claims",
                                     {"task": "t", "state": "running"}) == 3
    assert registry.get_sample_value("celery_claim_stale_claims", {"task": "t"}) == 2


# --- the purge beat task ----------------------------------------------------------------

def test_purge_task_deletes_expired_claims_with_the_apps_settings(
        make_app: Callable[..., Celery], database_url: str, table_name: str) -> None:
    import celery_claim.tasks  # noqa: F401 - registers celery_claim.purge on every app

    app = make_app(database_url)
    store = ClaimStore(database_url, table=table_name)
    store.create_schema()
    try:
        for n in range(3):
            won = store.acquire(f"k{n}", task_name="t", task_id="i", owner="o",
                                payload_digest=None, lease_seconds=60)
            assert won is not None
            store.complete(f"k{n}", won.token, ttl_seconds=0 if n else 3600)
        time.sleep(0.01)
        result: Any = app.tasks["celery_claim.purge"].apply(kwargs={"batch_size": 1}).get()
        assert result == {"deleted": 2, "table": table_name}
        assert [r.key for r in store.list_claims()] == ["k0"]
    finally:
        store.dispose()
