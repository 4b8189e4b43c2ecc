"""Prometheus metrics of every claim event (``pip install 'celery-claim[prometheus]'``).

Call :func:`install` once per worker process, for example in a
``worker_process_init`` handler, and expose the registry as usual
(``prometheus_client.start_http_server``, or the multiprocess collector
with the prefork pool: see the monitoring docs). :class:`ClaimStoreCollector`
adds gauges read from the claims table at scrape time (claims by state,
stale claims).

Metric names (all labelled by ``task``):

* ``celery_claim_acquisitions_total``: bodies started under a fresh claim;
* ``celery_claim_duplicates_total{outcome}``: deliveries that did not run the
  body (``succeeded``, ``failed``, ``running-deferred``, ``running-skipped``,
  ``running-raised``, ``mismatch``);
* ``celery_claim_completions_total{state}``: claims marked ``succeeded`` or ``failed``;
* ``celery_claim_releases_total{reason}``: claims given back (retry, failure, ...);
* ``celery_claim_lost_total{where}``: claims taken over after the lease lapsed;
* ``celery_claim_store_errors_total{operation}``: the store could not be reached;
* ``celery_claim_acquire_seconds``: time to acquire (the claim's latency);
* ``celery_claim_held_seconds{state}``: time from acquire to completion.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from typing import Any

from celery_claim import reporting, signals
from celery_claim.errors import ClaimStoreError
from celery_claim.store import ClaimStore

logger = logging.getLogger("celery_claim")

__all__ = ["ClaimMetrics", "ClaimStoreCollector", "install", "uninstall"]

#: Acquire latency buckets: a claim is one round trip, usually well under 10 ms.
ACQUIRE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("celery_claim.metrics needs prometheus-client: "
                          "pip install 'celery-claim[prometheus]'") from exc
    return prometheus_client


def _task(sender: Any) -> str:
    return str(getattr(sender, "name", None) or "unknown")


@dataclasses.dataclass
class ClaimMetrics:
    """The metrics and the receivers that feed them (of the claim events and
    of the rarer events' signals)."""

    acquisitions: Any
    duplicates: Any
    completions: Any
    releases: Any
    lost: Any
    store_errors: Any
    acquire_seconds: Any
    held_seconds: Any
    #: Each metric's child per label values: ``labels()`` checks and joins
    #: them at every call, which cost more than the increment itself.
    _children: dict[tuple[Any, tuple[str, ...]], Any] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def create(cls, registry: Any = None, namespace: str = "celery_claim") -> ClaimMetrics:
        p = _prometheus()
        registry = p.REGISTRY if registry is None else registry

        def counter(name: str, doc: str, *labels: str) -> Any:
            return p.Counter(name, doc, ["task", *labels], namespace=namespace,
                             registry=registry)

        return cls(
            acquisitions=counter("acquisitions", "Bodies started under a fresh claim."),
            duplicates=counter("duplicates", "Deliveries that did not run the body.",
                               "outcome"),
            completions=counter("completions", "Claims marked succeeded or failed.", "state"),
            releases=counter("releases", "Claims given back by their holder.", "reason"),
            lost=counter("lost", "Claims taken over after their lease lapsed.", "where"),
            store_errors=counter("store_errors", "Claim store operations that failed.",
                                 "operation"),
            acquire_seconds=p.Histogram("acquire_seconds", "Seconds spent acquiring a claim.",
                                        ["task"], namespace=namespace, registry=registry,
                                        buckets=ACQUIRE_BUCKETS),
            held_seconds=p.Histogram("held_seconds", "Seconds from acquire to completion.",
                                     ["task", "state"], namespace=namespace,
                                     registry=registry),
        )

    def _child(self, metric: Any, *labels: str) -> Any:
        try:
            return self._children[metric, labels]
        except KeyError:  # a race makes the same child twice: labels() returns one
            # Kept for good: a child removed from its metric (remove(), clear())
            # would go on counting unseen; the package never removes one.
            child = self._children[metric, labels] = metric.labels(*labels)
            return child

    # --- receivers -------------------------------------------------------------

    def on_acquired(self, sender: Any = None, wait: float = 0.0, **_: Any) -> None:
        task = _task(sender)
        self._child(self.acquisitions, task).inc()
        self._child(self.acquire_seconds, task).observe(wait)

    def on_duplicate(self, sender: Any = None, outcome: str = "", **_: Any) -> None:
        self._child(self.duplicates, _task(sender), outcome).inc()

    def on_completed(self, sender: Any = None, state: str = "", duration: float = 0.0,
                     **_: Any) -> None:
        task = _task(sender)
        self._child(self.completions, task, state).inc()
        self._child(self.held_seconds, task, state).observe(duration)

    def on_released(self, sender: Any = None, reason: str = "", **_: Any) -> None:
        self._child(self.releases, _task(sender), reason).inc()

    def on_lost(self, sender: Any = None, where: str = "", **_: Any) -> None:
        self._child(self.lost, _task(sender), where).inc()

    def on_store_error(self, sender: Any = None, operation: str = "", **_: Any) -> None:
        self._child(self.store_errors, _task(sender), operation).inc()

    def _observed(self) -> Iterator[tuple[str, Any]]:
        # The three events of every task are observed directly, not through
        # their signals (reporting.observe): a signal's dispatch costs more
        # than a counter's increment, and a receiver of claim_duplicate makes
        # every duplicate build its row's whole record, which no count reads.
        yield "acquired", self.on_acquired
        yield "duplicate", self.on_duplicate
        yield "completed", self.on_completed

    def _wiring(self) -> Iterator[tuple[Any, Any]]:
        yield signals.claim_released, self.on_released
        yield signals.claim_lost, self.on_lost
        yield signals.claim_store_error, self.on_store_error

    def connect(self) -> None:
        for event, observer in self._observed():
            reporting.observe(event, observer)
        for signal, receiver in self._wiring():
            signal.connect(receiver, weak=False)

    def disconnect(self) -> None:
        for event, observer in self._observed():
            reporting.unobserve(event, observer)
        for signal, receiver in self._wiring():
            signal.disconnect(receiver)


_installed: ClaimMetrics | None = None
_lock = threading.Lock()


def install(registry: Any = None, namespace: str = "celery_claim") -> ClaimMetrics:
    """Create the metrics and connect them to the claim events; once per process.

    A second call returns the metrics already installed.
    """
    global _installed
    with _lock:
        if _installed is None:
            metrics = ClaimMetrics.create(registry, namespace)
            metrics.connect()
            _installed = metrics
        return _installed


def uninstall() -> None:
    """Disconnect the installed metrics from the claim events (tests)."""
    global _installed
    with _lock:
        if _installed is not None:
            _installed.disconnect()
            _installed = None


class ClaimStoreCollector:
    """Gauges read from the claims table when Prometheus scrapes.

    ``celery_claim_claims{task,state}`` and ``celery_claim_stale_claims{task}``.
    Each scrape runs one grouped query; register it in one process only (the
    one serving metrics), not in every worker child::

        prometheus_client.REGISTRY.register(ClaimStoreCollector(store))
    """

    def __init__(self, store: ClaimStore, namespace: str = "celery_claim") -> None:
        self.store = store
        self.namespace = namespace

    def describe(self) -> list[Any]:
        return []  # the metrics are only known at scrape time

    def collect(self) -> Iterator[Any]:
        _prometheus()
        from prometheus_client import core

        claims = core.GaugeMetricFamily(f"{self.namespace}_claims",
                                        "Claims in the table by task and state.",
                                        labels=["task", "state"])
        stale = core.GaugeMetricFamily(f"{self.namespace}_stale_claims",
                                       "Running claims whose lease has lapsed.",
                                       labels=["task"])
        stale_by_task: dict[str, int] = {}
        try:
            rows = self.store.stats()
        except ClaimStoreError as exc:
            # One database outage must not take the whole scrape down (and
            # with it the store-error counter that reports the outage).
            logger.warning("claim metrics: could not read the claims table: %s", exc)
            rows = []
        for row in rows:
            claims.add_metric([row["task_name"], row["state"]], float(row["claims"]))
            stale_by_task[row["task_name"]] = (stale_by_task.get(row["task_name"], 0)
                                               + int(row["stale"]))
        for task, count in stale_by_task.items():
            stale.add_metric([task], float(count))
        yield claims
        yield stale
