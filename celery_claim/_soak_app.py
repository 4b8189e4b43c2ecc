"""The soak test's Celery app: one job written two ways, counted as it runs.

``soak.claimed`` is a :class:`~celery_claim.ClaimTask` keyed by the record;
its effect row is written in ``self.claim.atomic()``. ``soak.naive`` is the
classic check-then-act guard (read the record's flag; if it is not claimed,
set it, then do the work), with the same delivery options (``acks_late``,
``reject_on_worker_lost``). Both write one row per run of the body into the
effects table, so that effects per record can be counted at the end.

Every delivery, duplicate and claim latency is counted in Redis (hashes under
the run's key prefix) as it happens, for the progress display and the
summary. Workers import this module with ``celery -A celery_claim._soak_app
worker``; the ``CLAIM_SOAK_*`` environment variables that
:mod:`celery_claim.soak` sets configure it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any, ClassVar

import sqlalchemy as sa
from celery import Celery
from celery import signals as celery_signals
from sqlalchemy.dialects import postgresql

from celery_claim import signals
from celery_claim.claim import Claim
from celery_claim.proof.config import RunConfig, RunTables, for_app
from celery_claim.task import ClaimTask

__all__ = ["CLAIMED", "NAIVE", "SoakConfig", "SoakTables", "latency_bucket", "make_app"]

CLAIMED, NAIVE = "claimed", "naive"


@dataclasses.dataclass(frozen=True)
class SoakConfig(RunConfig):
    """A soak run, and how its tasks behave."""

    kind: ClassVar[str] = "soak"

    lease: float = 5.0
    visibility_timeout: float = 20.0
    body_seconds: float = 0.002

    def transport_options(self) -> dict[str, Any]:
        # Sweep for messages past their visibility timeout every second.
        return {**super().transport_options(), "visibility_timeout": self.visibility_timeout,
                "unacked_restore_interval": 1, "unacked_restore_throttle": 1}

    def celery_settings(self) -> dict[str, Any]:
        return {**super().celery_settings(), "claim_lease_seconds": self.lease}


class SoakTables(RunTables):
    """The effects of both versions, and the naive guard's flags."""

    def __init__(self, config: SoakConfig) -> None:
        super().__init__(config)
        self.effects = self.table(
            "effects",
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column("side", sa.String(8), nullable=False),
            sa.Column("record_id", sa.Integer, nullable=False))
        self.flags = self.table(
            "flags",
            sa.Column("record_id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("claimed", sa.Boolean, nullable=False))


def latency_bucket(seconds: float) -> int:
    """Microseconds rounded to two significant digits: a compact histogram key."""
    micros = max(1, round(seconds * 1e6))
    scale = int(10 ** max(0, int(math.log10(micros)) - 1))
    return round(micros / scale) * scale


class _Counters:
    """Per-process Redis client for the counters (prefork children get their own)."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self._pid = -1
        self._client: Any = None

    def client(self) -> Any:
        if self._pid != os.getpid():
            import redis

            self._client = redis.Redis.from_url(self.config.broker_url)
            self._pid = os.getpid()
        return self._client

    def add(self, counter: str, field: str | int, amount: int = 1) -> None:
        self.client().hincrby(self.config.counter(counter), str(field), amount)


def make_app(config: SoakConfig) -> Celery:
    """The soak app with both tasks and the counting signal receivers."""
    app = config.celery_app("celery_claim_soak")
    tables = SoakTables(config)
    counters = _Counters(config)

    def work() -> None:
        if config.body_seconds:
            time.sleep(random.uniform(0, config.body_seconds))

    @app.task(base=ClaimTask, bind=True, name="soak.claimed",  # type: ignore[untyped-decorator]
              claim_key="soak:{record_id}")
    def claimed(self: Any, record_id: int) -> int:
        claim: Claim = self.claim
        with claim.atomic() as conn:
            conn.execute(tables.effects.insert().values(side=CLAIMED, record_id=record_id))
        work()
        return int(claim.token)

    @app.task(name="soak.naive", bind=True, acks_late=True,  # type: ignore[untyped-decorator]
              reject_on_worker_lost=True)
    def naive(self: Any, record_id: int) -> int:
        engine = claimed.claim_store.engine
        flags = tables.flags
        with engine.connect() as conn:  # check ...
            done = conn.execute(sa.select(flags.c.claimed)
                                .where(flags.c.record_id == record_id)).scalar()
        if done:
            counters.add("suppressed", NAIVE)
            return 0
        with engine.begin() as conn:  # ... then act
            conn.execute(postgresql.insert(flags).values(record_id=record_id, claimed=True)
                         .on_conflict_do_update(index_elements=[flags.c.record_id],
                                                set_={"claimed": True}))
        with engine.begin() as conn:
            conn.execute(tables.effects.insert().values(side=NAIVE, record_id=record_id))
        work()
        return 1

    sides = {claimed.name: CLAIMED, naive.name: NAIVE}

    @celery_signals.task_postrun.connect(weak=False)  # type: ignore[untyped-decorator]
    def _count_delivery(sender: Any = None, task: Any = None, state: str | None = None,
                        **_: Any) -> None:
        side = sides.get(getattr(task, "name", ""))
        if side is None:
            return
        redelivered = bool((getattr(task.request, "delivery_info", None) or {})
                           .get("redelivered"))
        pipe = counters.client().pipeline(transaction=False)
        pipe.hincrby(config.counter("deliveries"), f"{side}:{state}", 1)
        if redelivered:
            pipe.hincrby(config.counter("redelivered"), side, 1)
        pipe.execute()

    def count_duplicate(outcome: str = "", **_: Any) -> None:
        counters.add("suppressed", f"{CLAIMED}:{outcome}")

    def count_latency(wait: float = 0.0, **_: Any) -> None:
        counters.add("latency", latency_bucket(wait))

    def count_event(name: str) -> Callable[..., None]:
        return lambda **_: counters.add("events", name)

    signals.claim_duplicate.connect(for_app(app, count_duplicate), weak=False)
    signals.claim_acquired.connect(for_app(app, count_latency), weak=False)
    signals.claim_lost.connect(for_app(app, count_event("claim_lost")), weak=False)
    signals.claim_store_error.connect(for_app(app, count_event("store_error")), weak=False)
    return app


if "CLAIM_SOAK_NAME" in os.environ:
    app = make_app(SoakConfig.from_env())
