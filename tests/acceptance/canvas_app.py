"""The Celery app of the canvas and life-cycle tests, configured from the environment.

Like ``claim_app``, ``CLAIM_TEST_*`` variables give each test its own claim
table, queue and kombu key prefix. Here results matter, so the app has a
result backend (``CLAIM_TEST_BACKEND``: ``redis``, with the test's key
prefix, or ``database``, Celery's SQLAlchemy backend with its tables in the
test's own PostgreSQL schema ``CLAIM_TEST_SCHEMA``).

Duplicate delivery (``CLAIM_TEST_DUPLICATE=1``): the broker is kombu's Redis
transport with one change, :class:`DuplicatingChannel`. Every message of this
app's tasks that any process publishes (the test's canvas, and the workers'
own publishes: a chain's next step, a chord's callback, link and link_error
callbacks, re-published deferrals) is pushed onto its queue twice, back to
back: the same body, headers and properties, a copy under its own delivery
tag, as a producer that published it twice. Celery's own tasks
(``celery.chord_unlock``, which the database backend's chords poll with) are
pushed once: they are Celery's plumbing, not members of the canvas, and a
duplicated poll that re-publishes itself would double at every poll.

Every body start is counted in PostgreSQL (``{table}_effects``: kind,
record_id, task id and pid), on its own connection and
committed at once, so a body that ran twice shows twice even if one run was
rolled back. Each job exists as a :class:`ClaimTask` and as the naive
check-then-act guard (``naive_*``) with the same delivery options.

A ``claim_completed`` receiver kills its own process (SIGKILL) right after
the claim of a record named in ``CLAIM_TEST_KILL_AFTER_COMPLETE`` is marked
succeeded, once per record: Celery has not yet stored the result, counted the
chord part nor dispatched anything, so the re-delivered message must.
"""

from __future__ import annotations

import copy
import functools
import os
import signal
import time
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery, Task, signals
from celery.exceptions import SoftTimeLimitExceeded
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from sqlalchemy.dialects import postgresql

from celery_claim import ClaimTask, claim_completed
from celery_claim.proof.config import SWEEP_LOCK_SECONDS

ENV = os.environ
PREFIX = ENV.get("CLAIM_TEST_PREFIX", "canvastest")
TABLE = ENV.get("CLAIM_TEST_TABLE", "claims_canvas")
SCHEMA = ENV.get("CLAIM_TEST_SCHEMA", "canvas_results")
BACKEND = ENV.get("CLAIM_TEST_BACKEND", "redis")
DUPLICATE = ENV.get("CLAIM_TEST_DUPLICATE") == "1"
KILL_AFTER_COMPLETE = {int(n) for n in ENV.get("CLAIM_TEST_KILL_AFTER_COMPLETE", "").split(",")
                       if n}
#: The naive guard's window between its check and its act.
LOAD_SECONDS = float(ENV.get("CLAIM_TEST_LOAD_SECONDS", "0.02"))
DATABASE_URL = ENV.get("CLAIM_TEST_DATABASE_URL",
                       "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = ENV.get("CLAIM_TEST_BROKER", "redis://127.0.0.1:6379/15")


meta = sa.MetaData()
effects = sa.Table(
    f"{TABLE}_effects", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("record_id", sa.Integer, nullable=False),
    sa.Column("task_id", sa.String(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
#: The naive guard's flags: one row per (kind, record), claimed or not.
records = sa.Table(
    f"{TABLE}_records", meta,
    sa.Column("kind", sa.String(40), primary_key=True),
    sa.Column("record_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("claimed", sa.Boolean, nullable=False),
)

class DuplicatingChannel(kombu_redis.Channel):
    """kombu's Redis channel, pushing each task message twice when asked to."""

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:
        super()._put(queue, message, **kwargs)
        task = (message.get("headers") or {}).get("task") or ""
        if DUPLICATE and not task.startswith("celery."):
            twin = copy.deepcopy(message)
            twin["properties"]["delivery_tag"] = self._next_delivery_tag()
            super()._put(queue, twin, **kwargs)


class DuplicatingTransport(kombu_redis.Transport):
    Channel = DuplicatingChannel


TRANSPORT_ALIASES["canvasredis"] = f"{__name__}:DuplicatingTransport"

app = Celery("canvas_app", broker=REDIS_URL.replace("redis://", "canvasredis://", 1))
if BACKEND == "database":
    backend: dict[str, Any] = {
        "result_backend": "db+" + DATABASE_URL,
        "database_table_schemas": {"task": SCHEMA, "group": SCHEMA},
    }
else:
    backend = {
        "result_backend": REDIS_URL,
        "result_backend_transport_options": {"global_keyprefix": f"{PREFIX}:"},
    }
app.conf.update(
    task_default_queue=ENV.get("CLAIM_TEST_QUEUE", "canvastest"),
    broker_transport_options={
        "global_keyprefix": f"{PREFIX}:",
        "visibility_timeout": float(ENV.get("CLAIM_TEST_VISIBILITY_TIMEOUT", "3600")),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        # A worker killed while it holds the sweep's lock would hold every
        # sweep off for kombu's default 300 s.
        "unacked_mutex_expire": SWEEP_LOCK_SECONDS,
    },
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    # The database backend's chord polls (celery.chord_unlock) every 0.2 s.
    result_chord_retry_interval=0.2,
    claim_database_url=DATABASE_URL,
    claim_table=TABLE,
    claim_lease_seconds=float(ENV.get("CLAIM_TEST_LEASE", "2")),
    **backend,
)

# One client per process (keyed by pid): prefork children must not share the parent's.

@functools.cache
def _engine(pid: int) -> sa.Engine:
    return sa.create_engine(DATABASE_URL, pool_pre_ping=True)


@functools.cache
def _markers(pid: int) -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def engine() -> sa.Engine:
    return _engine(os.getpid())


def markers() -> redis.Redis:
    return _markers(os.getpid())


# --- bodies ------------------------------------------------------------------------------

def started(task: Task, kind: str, record_id: int) -> None:
    """Count this body's start, committed at once on its own connection."""
    row = {"kind": kind, "record_id": record_id, "task_id": task.request.id or "",
           "pid": os.getpid()}
    with engine().begin() as conn:
        conn.execute(effects.insert().values(row))


def naive_check_then_act(kind: str, record_id: int) -> bool:
    """The classic guard: True (and the record marked) if nobody had it yet."""
    with engine().connect() as conn:
        claimed = conn.execute(sa.select(records.c.claimed).where(
            records.c.kind == kind, records.c.record_id == record_id)).scalar()
    time.sleep(LOAD_SECONDS)  # load the record: the window between check and act
    if claimed:
        return False
    statement = postgresql.insert(records).values(kind=kind, record_id=record_id, claimed=True)
    with engine().begin() as conn:
        conn.execute(statement.on_conflict_do_update(
            index_elements=[records.c.kind, records.c.record_id], set_={"claimed": True}))
    return True


def result_of(record_id: int) -> dict[str, Any]:
    # Not in the order PostgreSQL's jsonb keeps object keys (shorter keys first).
    return {"record_id": record_id, "value": record_id * 10}


def step(task: Task, guarded: bool, kind: str, record_id: int) -> dict[str, Any]:
    if guarded or naive_check_then_act(kind, record_id):
        started(task, kind, record_id)
    return result_of(record_id)


def collect(task: Task, guarded: bool, kind: str, results: list[Any]) -> list[int]:
    """A chord callback: one run, and one input row per header result it was given."""
    if not (guarded or naive_check_then_act(f"{kind}.callback", 0)):
        return []
    started(task, f"{kind}.callback", 0)
    for result in results:
        started(task, f"{kind}.input", int(result["record_id"]))
    return sorted(int(result["record_id"]) for result in results)


CLAIMED: dict[str, Any] = {"base": ClaimTask, "bind": True, "shared": False}
NAIVE: dict[str, Any] = {"bind": True, "shared": False, "acks_late": True,
                         "reject_on_worker_lost": True}


# --- the canvas tasks ----------------------------------------------------------------------

@app.task(**CLAIMED)
def part(self: ClaimTask, record_id: int, kind: str = "part") -> dict[str, Any]:
    """A group member, a chord header part, a link's parent."""
    return step(self, True, kind, record_id)


@app.task(**NAIVE)
def naive_part(self: Task, record_id: int, kind: str = "part") -> dict[str, Any]:
    return step(self, False, kind, record_id)


@app.task(**CLAIMED)
def link_step(self: ClaimTask, previous: Any, record_id: int,
              kind: str = "chain") -> dict[str, Any]:
    """A chain step or a link callback: the previous result comes first."""
    return step(self, True, kind, record_id)


@app.task(**NAIVE)
def naive_link_step(self: Task, previous: Any, record_id: int,
                    kind: str = "chain") -> dict[str, Any]:
    return step(self, False, kind, record_id)


@app.task(**CLAIMED)
def gather(self: ClaimTask, results: list[Any], kind: str = "chord") -> list[int]:
    return collect(self, True, kind, results)


@app.task(**NAIVE)
def naive_gather(self: Task, results: list[Any], kind: str = "chord") -> list[int]:
    return collect(self, False, kind, results)


class Declined(Exception):
    """The body's own failure (a card declined)."""


@app.task(**CLAIMED, claim_on_failure="keep")
def declined(self: ClaimTask, record_id: int, kind: str = "failed") -> None:
    """Fails; ``keep``: a duplicate after the failure does not run it again."""
    step(self, True, kind, record_id)
    raise Declined(f"record {record_id} declined")


@app.task(**NAIVE)
def naive_declined(self: Task, record_id: int, kind: str = "failed") -> None:
    step(self, False, kind, record_id)
    raise Declined(f"record {record_id} declined")


@app.task(**CLAIMED)
def errback(self: ClaimTask, failed_task_id: str, *, record_id: int,
            kind: str = "errback") -> None:
    """A link_error callback.

    One positional parameter: Celery then publishes it as a task message with
    the failed task's id (an errback of more calls it inline in the worker).
    """
    step(self, True, kind, record_id)


@app.task(**NAIVE)
def naive_errback(self: Task, failed_task_id: str, *, record_id: int,
                  kind: str = "errback") -> None:
    step(self, False, kind, record_id)


# --- life-cycle tasks --------------------------------------------------------------------

@app.task(**CLAIMED)
def hold(self: ClaimTask, record_id: int, seconds: float = 30.0,
         kind: str = "hold") -> dict[str, Any]:
    """Counts its start, says it holds (``{prefix}:holding:{record}`` = pid), then sleeps.

    It sleeps in short steps and finishes early once ``{prefix}:go:{record}`` is set.
    """
    started(self, kind, record_id)
    client = markers()
    client.set(f"{PREFIX}:holding:{record_id}", os.getpid())
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not client.exists(f"{PREFIX}:go:{record_id}"):
            time.sleep(0.05)
    except SoftTimeLimitExceeded:
        client.incr(f"{PREFIX}:soft-limit:{record_id}")
        raise
    return result_of(record_id)


@app.task(**CLAIMED)
def quick(self: ClaimTask, record_id: int, kind: str = "quick") -> dict[str, Any]:
    return step(self, True, kind, record_id)


@app.task(bind=True, shared=False, acks_late=True, reject_on_worker_lost=True)
def plain(self: Task, record_id: int, kind: str = "plain") -> dict[str, Any]:
    """No guard at all: what Celery itself does with each delivery."""
    started(self, kind, record_id)
    return result_of(record_id)


@signals.task_prerun.connect
def delivered(sender: Any = None, **_: Any) -> None:
    """Count every delivery a worker ran, per task: the duplicates did arrive."""
    if sender is not None and sender.app is app and not sender.name.startswith("celery."):
        markers().incr(f"{PREFIX}:deliveries:{sender.name.rsplit('.', 1)[-1]}")


@claim_completed.connect
def kill_after_complete(sender: Any = None, state: str = "", **_: Any) -> None:
    """SIGKILL this process once per listed record, right after its claim completed."""
    if not KILL_AFTER_COMPLETE or sender is None or sender.app is not app \
            or state != "succeeded":
        return
    args = sender.request.args or ()
    record_id = args[0] if args else (sender.request.kwargs or {}).get("record_id")
    if record_id in KILL_AFTER_COMPLETE and markers().set(
            f"{PREFIX}:killed:{record_id}", os.getpid(), nx=True):
        os.kill(os.getpid(), signal.SIGKILL)
