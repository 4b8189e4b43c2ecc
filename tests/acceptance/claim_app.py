"""The Celery app the worker tests run: configured entirely from the environment.

``CLAIM_TEST_*`` variables name the broker, the claim database (possibly
through a proxy or a pooler), the table, the queue (and its type on
RabbitMQ) and a kombu key prefix, so each test has its own of everything;
others set the lease, the visibility timeout and the time a body takes to
load its record.

Every job exists twice, written two ways, with the same body:

* ``process`` / ``charge``: :class:`ClaimTask`, keyed by the task id and by
  the order; the body's effect is written in ``self.claim.atomic()``;
* ``naive_process`` / ``naive_charge``: the same policy written as the classic
  check-then-act guard (``record = load(id); if record is done: skip; if
  record is held and its lease is current: look again after the lease; else
  record.held_until = now + lease; save(record); process(record); mark
  done``), with the same delivery options (``acks_late``,
  ``reject_on_worker_lost``) and the same retries. It has no single
  conditional write, no heartbeat, no fencing and no transaction around the
  body's writes: each scenario shows which of those it needed.

Neither version retries on database errors of its own: a store failure
inside a claimed body is the library's to handle (fail closed, run again
later); a naive body that meets one fails, as it would in an app.

A body counts its start in Redis (so a body that ran unclaimed shows), loads
its record (``CLAIM_TEST_LOAD_SECONDS``, the window between check and act in
the naive version), writes one effect row, and can be told to fail at random
(``fail_rate``: half through ``autoretry_for``, half through ``self.retry()``,
before or after the effect) or to hold its first start until the test says
go (``hold``), so that the test can kill or pause the process holding it.

A ``task_postrun`` handler records what every delivery returned, its state
and ``delivery_info['redelivered']``, in PostgreSQL; a ``claim_lost`` handler
records in Redis which process lost which claim.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery, Task, signals
from kombu import Exchange, Queue
from sqlalchemy.dialects import postgresql

from celery_claim import ClaimTask, claim_lost
from celery_claim.proof.config import SWEEP_LOCK_SECONDS

ENV = os.environ
PREFIX = ENV.get("CLAIM_TEST_PREFIX", "claimtest")
TABLE = ENV.get("CLAIM_TEST_TABLE", "claims_acceptance")
BODY_SLEEP = float(ENV.get("CLAIM_TEST_BODY_SLEEP", "0.005"))
#: Loading the record: in the naive task, the time between its check and its act.
LOAD_SECONDS = float(ENV.get("CLAIM_TEST_LOAD_SECONDS", "0.02"))
#: A held body waits at most this long for the test's go.
HOLD_SECONDS = float(ENV.get("CLAIM_TEST_HOLD_SECONDS", "60"))

#: The claim database, as the workers reach it (possibly through a proxy or a pooler).
DATABASE_URL = ENV.get("CLAIM_TEST_DATABASE_URL",
                       "postgresql+psycopg://postgres@127.0.0.1:5432/test")

app = Celery("claim_app", broker=ENV.get("CLAIM_TEST_BROKER", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_default_queue=ENV.get("CLAIM_TEST_QUEUE", "claimtest"),
    broker_transport_options={
        "global_keyprefix": f"{PREFIX}:",
        "visibility_timeout": float(ENV.get("CLAIM_TEST_VISIBILITY_TIMEOUT", "3600")),
        # Look for messages past their visibility timeout every second
        # (kombu's default sweep runs every 100 s).
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        # The sweep's lock in Redis outlives a Redis crash in the append-only
        # file; kombu's default (300 s) would hold every sweep off that long.
        "unacked_mutex_expire": SWEEP_LOCK_SECONDS,
    },
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    claim_database_url=DATABASE_URL,
    claim_table=TABLE,
    claim_lease_seconds=float(ENV.get("CLAIM_TEST_LEASE", "3")),
)

if app.conf.broker_url.startswith("amqp"):
    # AMQP heartbeats every few seconds: a connection cut half-open on the way
    # is noticed (and its messages requeued) in seconds, not minutes.
    app.conf.broker_heartbeat = 4

if ENV.get("CLAIM_TEST_PGBOUNCER"):  # the engine the docs give for PgBouncer
    import importlib.util
    import pathlib

    _spec = importlib.util.spec_from_file_location("_pgbouncer_example", pathlib.Path(
        __file__).parents[2] / "examples" / "operations" / "pgbouncer.py")
    assert _spec is not None
    assert _spec.loader is not None
    _example = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_example)
    # An engine in place of the URL (both at once is a configuration error).
    app.conf.update(claim_engine=_example.pgbouncer_engine(DATABASE_URL),
                    claim_database_url=None)

if ENV.get("CLAIM_TEST_QUEUE_TYPE") == "quorum":  # RabbitMQ quorum queues
    # Every queue declared as quorum (Celery 5.5 creates missing queues classic).
    _names = [app.conf.task_default_queue,
              *filter(None, ENV.get("CLAIM_TEST_EXTRA_QUEUES", "").split(","))]
    app.conf.update(
        task_default_queue_type="quorum", task_create_missing_queue_type="quorum",
        task_queues=[Queue(name, Exchange(name), name,
                           queue_arguments={"x-queue-type": "quorum"}) for name in _names])

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
    sa.Column("hostname", sa.String(255)),
    sa.Column("pid", sa.Integer),
)
#: The naive guard's records: held until a time, or done.
records = sa.Table(
    f"{TABLE}_records", meta,
    sa.Column("kind", sa.String(20), primary_key=True),
    sa.Column("record_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("done", sa.Boolean, nullable=False),
    sa.Column("held_until", sa.DateTime(timezone=True), nullable=False),
)

_local: dict[str, Any] = {}
_lock = threading.Lock()


def _per_process(name: str, make: Callable[[], Any]) -> Any:
    """One client per process: prefork children must not share the parent's."""
    key = f"{name}:{os.getpid()}"
    with _lock:
        if key not in _local:
            _local[key] = make()
        return _local[key]


def direct_engine() -> sa.Engine:
    """PostgreSQL without the proxy: observations are written even while it is cut."""
    url = ENV.get("CLAIM_TEST_DIRECT_DATABASE_URL", DATABASE_URL)
    return _per_process(  # type: ignore[no-any-return]
        "engine", lambda: sa.create_engine(url, pool_pre_ping=True))


def guard_engine() -> sa.Engine:
    """The naive guard's connections: to the claim database, as the claims' (no prepared
    statements through PgBouncer)."""
    args = {"prepare_threshold": None} if ENV.get("CLAIM_TEST_PGBOUNCER") else {}
    return _per_process(  # type: ignore[no-any-return]
        "guard", lambda: sa.create_engine(DATABASE_URL, pool_pre_ping=True,
                                          connect_args=args))


def markers() -> redis.Redis:
    url = ENV.get("CLAIM_TEST_MARKER_REDIS", app.conf.broker_url)
    return _per_process("redis", lambda: redis.Redis.from_url(url))  # type: ignore[no-any-return]


class Flaky(Exception):
    """A failure injected at random; the task retries."""


#: What the tasks retry on: only the failures the tests inject. A store
#: failure under a claimed body is the library's own to handle.
RETRIES = {"autoretry_for": (Flaky,), "max_retries": 30, "default_retry_delay": 0.2}


# --- the body, shared by both versions ---------------------------------------------

def body_started(kind: str, record_id: int) -> int:
    """Counted outside the claim database: a body that ran unclaimed shows here."""
    return int(markers().incr(f"{PREFIX}:body:{kind}:{record_id}"))


def inject_failure(task: Task, where: str, fail_rate: float) -> None:
    """Fail with probability ``fail_rate / 2``: through autoretry_for or self.retry()."""
    if not fail_rate or random.random() >= fail_rate / 2:
        return
    markers().incr(f"{PREFIX}:failed:{where}")
    exc = Flaky(f"injected failure {where} the effect")
    if random.random() < 0.5:
        raise exc
    raise task.retry(exc=exc, countdown=random.uniform(0.05, 0.3))


def hold_first_start(kind: str, record_id: int, starts: int) -> None:
    """The record's first body waits here until the test sets its go key."""
    if starts != 1:
        return
    client = markers()
    client.hset(f"{PREFIX}:held:{kind}", str(record_id), os.getpid())
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline and not client.exists(f"{PREFIX}:go:{kind}:{record_id}"):
        time.sleep(0.05)


def run_body(task: Task, kind: str, record_id: int, write: Callable[[], int],
             sleep: float, fail_rate: float, hold: bool, starts: int) -> dict[str, Any]:
    inject_failure(task, "before", fail_rate)
    token = write()
    inject_failure(task, "after", fail_rate)
    if hold:
        hold_first_start(kind, record_id, starts)
    time.sleep(sleep or random.uniform(0, BODY_SLEEP))
    return {"record_id": record_id, "token": token}


def effect_row(kind: str, record_id: int, token: int, task_id: str) -> dict[str, Any]:
    return {"kind": kind, "record_id": record_id, "token": token, "task_id": task_id,
            "pid": os.getpid()}


def claimed_write(task: ClaimTask, kind: str, record_id: int) -> Callable[[], int]:
    def write() -> int:
        with task.claim.atomic() as conn:  # commits with the claim's completion
            conn.execute(effects.insert().values(
                effect_row(kind, record_id, task.claim.token, task.request.id)))
        return task.claim.token
    return write


def claimed_body(task: ClaimTask, kind: str, record_id: int, sleep: float = 0.0,
                 fail_rate: float = 0.0, hold: bool = False) -> dict[str, Any]:
    starts = body_started(kind, record_id)
    time.sleep(LOAD_SECONDS)  # load the record: the claim is already held
    return run_body(task, kind, record_id, claimed_write(task, kind, record_id),
                    sleep, fail_rate, hold, starts)


# --- the naive guard: check, then act ------------------------------------------------

def naive_check(kind: str, record_id: int) -> str:
    """``take``, ``done`` or ``held`` (one read, then the record is loaded)."""
    with guard_engine().connect() as conn:
        row = conn.execute(sa.select(records.c.done, records.c.held_until > sa.func.now())
                           .where(records.c.kind == kind,
                                  records.c.record_id == record_id)).first()
    time.sleep(LOAD_SECONDS)  # load the record: the window between check and act
    if row is None:
        return "take"
    done, held = row
    return "done" if done else "held" if held else "take"


def save_record(kind: str, record_id: int, *, done: bool) -> None:
    lease = sa.func.now() + sa.text(f"interval '{float(app.conf.claim_lease_seconds)} seconds'")
    values = {"done": done, "held_until": lease}
    statement = postgresql.insert(records).values(kind=kind, record_id=record_id, **values)
    with guard_engine().begin() as conn:
        conn.execute(statement.on_conflict_do_update(
            index_elements=[records.c.kind, records.c.record_id], set_=values))


def naive_write(task: Task, kind: str, record_id: int) -> Callable[[], int]:
    def write() -> int:
        with guard_engine().begin() as conn:
            conn.execute(effects.insert().values(effect_row(kind, record_id, 0, task.request.id)))
        return 0
    return write


def naive_body(task: Task, kind: str, record_id: int, sleep: float = 0.0,
               fail_rate: float = 0.0, hold: bool = False) -> dict[str, Any]:
    verdict = naive_check(kind, record_id)
    if verdict == "done":
        return {"record_id": record_id, "skipped": True}
    if verdict == "held":  # ClaimTask's defer: look again after the lease
        raise task.retry(countdown=float(app.conf.claim_lease_seconds), max_retries=None)
    save_record(kind, record_id, done=False)
    starts = body_started(kind, record_id)
    result = run_body(task, kind, record_id, naive_write(task, kind, record_id),
                      sleep, fail_rate, hold, starts)
    save_record(kind, record_id, done=True)
    return result


# shared=False throughout: the scenarios reload this module, and shared tasks
# would pile up in Celery's registry of shared tasks under the same names.
NAIVE = {"bind": True, "shared": False, "acks_late": True, "reject_on_worker_lost": True,
         **RETRIES}


# --- the tasks ---------------------------------------------------------------------------

@app.task(base=ClaimTask, bind=True, shared=False, **RETRIES)
def process(self: ClaimTask, record_id: int, sleep: float = 0.0, fail_rate: float = 0.0,
            hold: bool = False) -> dict[str, Any]:
    """Default key: the task name and the message's task id."""
    return claimed_body(self, "process", record_id, sleep, fail_rate, hold)


@app.task(**NAIVE)
def naive_process(self: Task, record_id: int, sleep: float = 0.0, fail_rate: float = 0.0,
                  hold: bool = False) -> dict[str, Any]:
    """``process`` behind the check-then-act guard."""
    return naive_body(self, "naive_process", record_id, sleep, fail_rate, hold)


@app.task(base=ClaimTask, bind=True, shared=False, claim_key="order:{order_id}", **RETRIES)
def charge(self: ClaimTask, order_id: int, amount_cents: int) -> dict[str, Any]:
    """Business key: duplicates with different task ids are caught too."""
    claimed_body(self, "charge", order_id)
    return {"order_id": order_id, "charged": amount_cents}


@app.task(**NAIVE)
def naive_charge(self: Task, order_id: int, amount_cents: int) -> dict[str, Any]:
    """``charge`` behind the check-then-act guard, keyed by the order."""
    result = naive_body(self, "naive_charge", order_id)
    if result.get("skipped"):
        return result
    return {"order_id": order_id, "charged": amount_cents}


_HOST = socket.gethostname()


@claim_lost.connect
def lost(sender: Any = None, key: str = "", token: int = 0, where: str = "", **_: Any) -> None:
    """A holder learnt that its claim was taken over: which process, which token."""
    if getattr(sender, "app", None) is not app:
        return  # another test's task, in a process that imported this module
    markers().hset(f"{PREFIX}:lost", key, f"{os.getpid()}:{token}:{where}")


@signals.task_postrun.connect
def observe(sender: Any = None, task_id: str = "", task: Any = None, args: Any = (),
            kwargs: Any = None, retval: Any = None, state: str | None = None,
            **_: Any) -> None:
    if task is None or task.app is not app or task.name.startswith("celery."):
        return  # Celery's own tasks, or another test's app in this process
    try:
        encoded = json.dumps(retval)
    except (TypeError, ValueError):
        encoded = json.dumps(repr(retval))
    delivery = getattr(task.request, "delivery_info", None) or {}
    record_id = args[0] if args else (kwargs or {}).get("record_id")
    row = {"task_id": task_id, "task_name": task.name.rsplit(".", 1)[-1],
           "record_id": record_id, "state": state, "retval": encoded,
           "redelivered": bool(delivery.get("redelivered")),
           "hostname": getattr(task.request, "hostname", None) or _HOST, "pid": os.getpid()}
    for attempt in range(5):  # PostgreSQL may be restarting its sessions under us
        try:
            with direct_engine().begin() as conn:
                conn.execute(observations.insert().values(row))
            return
        except sa.exc.DBAPIError:
            if attempt == 4:
                raise
            time.sleep(0.2)
