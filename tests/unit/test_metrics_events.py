"""The Prometheus metrics see every task's events directly, not through the
signals: a worker with them sends no signal and builds no duplicate's record,
and what they count is what the signals would have said."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from celery_claim import metrics, reporting, signals
from celery_claim.claim import Claim
from celery_claim.states import Outcome, State


class Charge:
    name = "billing.charge"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[CollectorRegistry]:
    for signal in (signals.claim_acquired, signals.claim_completed, signals.claim_duplicate):
        monkeypatch.setattr(signal, "receivers", [])
    registry = CollectorRegistry()
    installed = metrics.ClaimMetrics.create(registry)
    installed.connect()
    installed.connect()  # connecting twice counts once
    yield registry
    installed.disconnect()
    assert all(observer not in reporting._observers[event]
               for event, observer in installed._observed())


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"task": "billing.charge", **labels}) or 0.0


def handle() -> Claim:
    """A claim acquired half a second ago."""
    claim = Claim(store=None, key="charge:1", token=1, attempt=1, task_id="t1",
                  lease_seconds=60)
    claim.acquired_at -= 0.5
    return claim


def test_every_event_is_counted_and_no_signal_is_sent(
        registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    for signal in (signals.claim_acquired, signals.claim_completed, signals.claim_duplicate):
        monkeypatch.setattr(signal, "send", lambda *a, _n=signal.name, **k: sent.append(_n))
    for n in range(3):
        reporting.acquired(Charge(), handle(), 0.002)
        reporting.completed(Charge(), handle(), State.SUCCEEDED if n else State.FAILED)
    reporting.duplicate(Charge(), "charge:1", "t2", None, Outcome.SUCCEEDED)
    reporting.duplicate(Charge(), "charge:1", "t3", None, Outcome.MISMATCH)
    assert sent == []
    assert value(registry, "celery_claim_acquisitions_total") == 3
    assert value(registry, "celery_claim_acquire_seconds_count") == 3
    assert value(registry, "celery_claim_acquire_seconds_sum") == pytest.approx(0.006)
    assert value(registry, "celery_claim_completions_total", state="succeeded") == 2
    assert value(registry, "celery_claim_completions_total", state="failed") == 1
    assert value(registry, "celery_claim_held_seconds_count", state="succeeded") == 2
    assert 1.0 <= value(registry, "celery_claim_held_seconds_sum", state="succeeded") < 2.0
    assert value(registry, "celery_claim_duplicates_total", outcome="succeeded") == 1
    assert value(registry, "celery_claim_duplicates_total", outcome="mismatch") == 1


def test_a_receiver_beside_the_metrics_still_gets_every_signal(
        registry: CollectorRegistry) -> None:
    heard: list[tuple[str, Any]] = []

    def receiver(signal: Any = None, sender: Any = None, **kwargs: Any) -> None:
        heard.append((signal.name, kwargs.get("token")))

    for signal in (signals.claim_acquired, signals.claim_completed):
        signal.connect(receiver, weak=False)
    try:
        reporting.acquired(Charge(), handle(), 0.001)
        reporting.completed(Charge(), handle(), State.SUCCEEDED)
    finally:
        for signal in (signals.claim_acquired, signals.claim_completed):
            signal.disconnect(receiver)
    assert heard == [("claim_acquired", 1), ("claim_completed", 1)]
    assert value(registry, "celery_claim_acquisitions_total") == 1
    assert value(registry, "celery_claim_completions_total", state="succeeded") == 1


def test_the_rare_events_still_come_through_their_signals(registry: CollectorRegistry) -> None:
    signals.claim_released.send(sender=Charge(), key="charge:1", task_id="t1", token=1,
                                reason="retry")
    signals.claim_lost.send(sender=Charge(), key="charge:1", task_id="t1", token=1,
                            where="heartbeat")
    assert value(registry, "celery_claim_releases_total", reason="retry") == 1
    assert value(registry, "celery_claim_lost_total", where="heartbeat") == 1
