"""The Celery app the worker tests run: configured entirely from the environment.

``CLAIM_TEST_*`` variables name the broker, the claim database (possibly
through a proxy), the table, the queue and a kombu key prefix, so each test
has its own of everything. Bodies record their effects in the claim database
through ``self.claim.atomic()``; a ``task_postrun`` handler records what every
delivery returned, directly in PostgreSQL.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery, signals

from celery_claim import ClaimTask

ENV = os.environ
PREFIX = ENV.get("CLAIM_TEST_PREFIX", "claimtest")
TABLE = ENV.get("CLAIM_TEST_TABLE", "claims_acceptance")
BODY_SLEEP = float(ENV.get("CLAIM_TEST_BODY_SLEEP", "0.005"))

app = Celery("claim_app", broker=ENV.get("CLAIM_TEST_BROKER", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_default_queue=ENV.get("CLAIM_TEST_QUEUE", "claimtest"),
    broker_transport_options={
        "global_keyprefix": f"{PREFIX}:",
        "visibility_timeout": float(ENV.get("CLAIM_TEST_VISIBILITY_TIMEOUT", "3600")),
    },
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    claim_database_url=ENV.get("CLAIM_TEST_DATABASE_URL",
                               "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    claim_table=TABLE,
    claim_lease_seconds=float(ENV.get("CLAIM_TEST_LEASE", "3")),
)

meta = sa.MetaData()
effects = sa.Table(
    f"{TABLE}_effects", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("record_id", sa.Integer, nullable=False),
    sa.Column("token", sa.Integer, nullable=False),
    sa.Column("task_id", sa.String(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
observations = sa.Table(
    f"{TABLE}_observations", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(64), nullable=False),
    sa.Column("task_name", sa.String(100), nullable=False),
    sa.Column("record_id", sa.Integer),
    sa.Column("state", sa.String(20)),
    sa.Column("retval", sa.Text),
    sa.Column("redelivered", sa.Boolean),
)

_local: dict[str, Any] = {}
_lock = threading.Lock()


def _per_process(name: str, make: Any) -> Any:
    """One client per process: prefork children must not share the parent's."""
    key = f"{name}:{os.getpid()}"
    with _lock:
        if key not in _local:
            _local[key] = make()
        return _local[key]


def direct_engine() -> sa.Engine:
    url = ENV.get("CLAIM_TEST_DIRECT_DATABASE_URL", app.conf.claim_database_url)
    return _per_process("engine", lambda: sa.create_engine(url))  # type: ignore[no-any-return]


def markers() -> redis.Redis:
    url = ENV.get("CLAIM_TEST_MARKER_REDIS", app.conf.broker_url)
    return _per_process("redis", lambda: redis.Redis.from_url(url))  # type: ignore[no-any-return]


def body_started(kind: str, record_id: int) -> None:
    """Counted outside the claim database: a body that ran unclaimed shows here."""
    markers().incr(f"{PREFIX}:body:{kind}:{record_id}")


def record_effect(task: ClaimTask, kind: str, record_id: int) -> None:
    with task.claim.atomic() as conn:
        conn.execute(effects.insert().values(
            kind=kind, record_id=record_id, token=task.claim.token,
            task_id=task.request.id, pid=os.getpid()))


@app.task(base=ClaimTask, bind=True)
def process(self: ClaimTask, record_id: int) -> dict[str, int]:
    """Default key: the task name and the message's task id."""
    body_started("process", record_id)
    record_effect(self, "process", record_id)
    time.sleep(random.uniform(0, BODY_SLEEP))
    return {"record_id": record_id, "token": self.claim.token}


@app.task(base=ClaimTask, bind=True, claim_key="order:{order_id}")
def charge(self: ClaimTask, order_id: int, amount_cents: int) -> dict[str, int]:
    """Business key: duplicates with different task ids are caught too."""
    body_started("charge", order_id)
    record_effect(self, "charge", order_id)
    time.sleep(random.uniform(0, BODY_SLEEP))
    return {"order_id": order_id, "charged": amount_cents}


@signals.task_postrun.connect
def observe(sender: Any = None, task_id: str = "", task: Any = None, args: Any = (),
            retval: Any = None, state: str | None = None, **_: Any) -> None:
    if task is None or task.name.startswith("celery."):
        return
    try:
        encoded = json.dumps(retval)
    except (TypeError, ValueError):
        encoded = json.dumps(repr(retval))
    delivery = getattr(task.request, "delivery_info", None) or {}
    with direct_engine().begin() as conn:
        conn.execute(observations.insert().values(
            task_id=task_id, task_name=task.name.rsplit(".", 1)[-1],
            record_id=args[0] if args else None, state=state, retval=encoded,
            redelivered=bool(delivery.get("redelivered"))))
