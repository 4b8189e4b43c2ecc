"""The run's Celery app: one job written two ways, counted as it runs.

``<kind>.claimed`` is a :class:`~celery_claim.ClaimTask` keyed by the
record; its effect row is written in ``self.claim.atomic()``.
``<kind>.naive`` is the classic check-then-act guard (read the record's
flag; if it is not set, set it, then write the effect), with the same
delivery options (``acks_late``, ``reject_on_worker_lost``). Both "call the
provider" for ``race_seconds`` before they write the effect (in the naive
version, the window between the check and the act) and work for up to
``body_seconds`` after it.

Every delivery, duplicate, claim latency and claim event is logged in the
claim database (:mod:`celery_claim.proof.counting`). The demo's and the
soak's worker modules build this app from their config.
"""

from __future__ import annotations

import random
import time
from typing import Any

import sqlalchemy as sa
from celery import Celery
from celery import signals as celery_signals

from celery_claim import signals
from celery_claim.claim import Claim
from celery_claim.proof import counting
from celery_claim.proof.config import RunConfig, for_app
from celery_claim.proof.counting import CLAIMED, NAIVE, ProofTables, Recorder
from celery_claim.task import ClaimTask

__all__ = ["make_app"]


def make_app(config: RunConfig) -> Celery:
    """The run's app with both tasks and the receivers that count."""
    app = config.celery_app(f"celery_claim_{config.kind}")
    tables = ProofTables(config)

    def work() -> None:
        if config.body_seconds:
            time.sleep(random.uniform(0, config.body_seconds))

    def call_provider() -> None:
        if config.race_seconds:
            time.sleep(config.race_seconds)

    @app.task(base=ClaimTask, bind=True, name=f"{config.kind}.claimed",  # type: ignore[untyped-decorator]
              claim_key=f"{config.kind}:{{record_id}}")
    def claimed(self: Any, record_id: int) -> int:
        claim: Claim = self.claim
        call_provider()  # with claim.idempotency_key
        with claim.atomic() as conn:
            conn.execute(tables.effects.insert().values(side=CLAIMED, record_id=record_id))
        work()
        return int(claim.token)

    def engine() -> sa.Engine:
        return claimed.claim_store.engine  # type: ignore[no-any-return]

    recorder = Recorder(tables.log, engine)

    @app.task(name=f"{config.kind}.naive", bind=True, acks_late=True,  # type: ignore[untyped-decorator]
              reject_on_worker_lost=True)
    def naive(self: Any, record_id: int) -> int:
        flags = tables.flags
        with engine().connect() as conn:  # check ...
            done = conn.execute(sa.select(flags.c.claimed)
                                .where(flags.c.record_id == record_id)).scalar()
        if done:
            recorder.add(NAIVE, counting.DUPLICATE, "checked")
            return 0
        call_provider()
        with engine().begin() as conn:  # ... then act
            counting.set_flag(conn, flags, record_id)
        with engine().begin() as conn:
            conn.execute(tables.effects.insert().values(side=NAIVE, record_id=record_id))
        work()
        return 1

    sides = {claimed.name: CLAIMED, naive.name: NAIVE}

    @celery_signals.task_prerun.connect(weak=False)  # type: ignore[untyped-decorator]
    def _begin(sender: Any = None, task: Any = None, **_: Any) -> None:
        if getattr(task, "name", "") in sides:
            recorder.begin()

    @celery_signals.task_postrun.connect(weak=False)  # type: ignore[untyped-decorator]
    def _end(sender: Any = None, task: Any = None, state: str | None = None, **_: Any) -> None:
        side = sides.get(getattr(task, "name", ""))
        if side is not None:
            info = getattr(task.request, "delivery_info", None) or {}
            recorder.end(side, state or "", redelivered=bool(info.get("redelivered")))

    def count_duplicate(outcome: str = "", **_: Any) -> None:
        recorder.add(CLAIMED, counting.DUPLICATE, str(outcome))

    def count_latency(wait: float = 0.0, **_: Any) -> None:
        recorder.add(CLAIMED, counting.LATENCY, value=counting.latency_bucket(wait))

    def count_event(name: str) -> Any:
        return lambda **_: recorder.add(CLAIMED, counting.EVENT, name)

    signals.claim_duplicate.connect(for_app(app, count_duplicate), weak=False)
    signals.claim_acquired.connect(for_app(app, count_latency), weak=False)
    signals.claim_lost.connect(for_app(app, count_event("claim_lost")), weak=False)
    signals.claim_store_error.connect(for_app(app, count_event("store_error")), weak=False)
    return app
