"""What a run counts, in the claim database: effects, the naive guard's flags, and a log.

Both versions of the job write one row per run of their body into the
effects table; the naive guard keeps its "done" flag per record in the flags
table. Every delivery, duplicate, claim latency and claim event goes into the
log table, one row each, so that counting is a ``GROUP BY`` and works on
every database the claim store supports (PostgreSQL, SQLite). A worker
gathers a delivery's rows while it runs (:class:`Recorder`) and writes them
in one insert when it ends; the parent process reads them (:class:`Tally`).
The tables are the run's own: the harness creates and drops them.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from celery_claim.proof.config import RunConfig, RunTables

__all__ = ["CLAIMED", "NAIVE", "Counts", "ProofTables", "Recorder", "Tally", "latency_bucket",
           "percentiles", "set_flag"]

CLAIMED, NAIVE = "claimed", "naive"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
#: The log's kinds: a delivery ended (field: its state, or ``deferred``), it was a
#: broker re-delivery, a duplicate was turned away (field: the outcome; ``checked``
#: is the naive guard's), a claim was acquired (value: the wait in microseconds),
#: a claim event (field: its name).
DELIVERY, REDELIVERED, DUPLICATE, LATENCY, EVENT = (
    "delivery", "redelivered", "duplicate", "latency", "event")
DEFERRED = "running-deferred"
#: A delivery that ended without settling its copy: it comes back later.
UNSETTLED = ("deferred", "RETRY")

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: the rowid


class ProofTables(RunTables):
    """The effects of both versions, the naive guard's flags and the count log."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.effects = self.table(
            "effects",
            sa.Column("id", _ID, primary_key=True),
            sa.Column("side", sa.String(8), nullable=False),
            sa.Column("record_id", sa.Integer, nullable=False))
        self.flags = self.table(
            "flags",
            sa.Column("record_id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("claimed", sa.Boolean, nullable=False))
        self.log = self.table(
            "log",
            sa.Column("id", _ID, primary_key=True),
            sa.Column("side", sa.String(8), nullable=False),
            sa.Column("kind", sa.String(12), nullable=False),
            sa.Column("field", sa.String(32), nullable=False, default=""),
            sa.Column("value", sa.BigInteger, nullable=False, default=0))


def set_flag(conn: sa.Connection, flags: sa.Table, record_id: int) -> None:
    """The naive guard's act: mark the record done (an upsert on PostgreSQL and SQLite)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(flags).values(record_id=record_id, claimed=True)
                 .on_conflict_do_update(index_elements=[flags.c.record_id],
                                        set_={"claimed": True}))


def latency_bucket(seconds: float) -> int:
    """Microseconds rounded to two significant digits: a compact histogram key."""
    micros = max(1, round(seconds * 1e6))
    scale = int(10 ** max(0, int(math.log10(micros)) - 1))
    return round(micros / scale) * scale


def percentiles(histogram: dict[int, int]) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max, in milliseconds, of a microseconds histogram."""
    buckets = sorted(histogram.items())
    total = sum(n for _, n in buckets)
    if not total:
        return {}
    found: dict[str, float] = {}
    for p in PERCENTILES:
        rank, seen = p / 100 * total, 0
        for micros, n in buckets:
            seen += n
            if seen >= rank:
                found[f"p{p:g}"] = micros / 1000
                break
    found["max"] = buckets[-1][0] / 1000
    return found


class Recorder:
    """A worker's side of the log: a delivery's rows, written in one insert when it ends.

    Rows added on a thread that is not running a delivery (none are expected)
    are written at once. ``engine`` is called for the engine each time: the
    claim store's, which a prefork child opens for itself.
    """

    def __init__(self, log: sa.Table, engine: Callable[[], sa.Engine]) -> None:
        self.log = log
        self.engine = engine
        self._local = threading.local()

    def begin(self) -> None:
        self._local.rows = []

    def add(self, side: str, kind: str, field: str = "", value: int = 0) -> None:
        row = {"side": side, "kind": kind, "field": field, "value": value}
        rows: list[dict[str, Any]] | None = getattr(self._local, "rows", None)
        if rows is None:
            self._write([row])
        else:
            rows.append(row)

    def end(self, side: str, state: str, *, redelivered: bool) -> None:
        """The delivery ended in ``state``: write it with what it gathered."""
        rows: list[dict[str, Any]] = getattr(self._local, "rows", None) or []
        self._local.rows = None
        deferred = any(r["kind"] == DUPLICATE and r["field"] == DEFERRED for r in rows)
        rows.append({"side": side, "kind": DELIVERY, "field": "deferred" if deferred else state,
                     "value": 0})
        if redelivered:
            rows.append({"side": side, "kind": REDELIVERED, "field": "", "value": 0})
        self._write(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        with self.engine().begin() as conn:
            conn.execute(self.log.insert(), rows)


@dataclasses.dataclass(frozen=True)
class Counts:
    """One reading of the log: rows per (side, kind, field)."""

    rows: dict[tuple[str, str, str], int]

    def total(self, side: str, kind: str, *, but: tuple[str, ...] = ()) -> int:
        return sum(n for (s, k, f), n in self.rows.items() if s == side and k == kind
                   and f not in but)

    def field(self, side: str, kind: str, field: str) -> int:
        return self.rows.get((side, kind, field), 0)

    def settled(self, side: str) -> int:
        """Deliveries that ended their copy: every one but deferrals and retries."""
        return self.total(side, DELIVERY, but=UNSETTLED)

    def events(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for (_, kind, field), n in self.rows.items():
            if kind == EVENT:
                found[field] = found.get(field, 0) + n
        return found


class Tally:
    """The parent's side: read the log and the effects."""

    def __init__(self, engine: sa.Engine, tables: ProofTables) -> None:
        self.engine = engine
        self.tables = tables

    def counts(self) -> Counts:
        log = self.tables.log
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(log.c.side, log.c.kind, log.c.field, sa.func.count())
                                 .group_by(log.c.side, log.c.kind, log.c.field)).all()
        return Counts({(side, kind, field): int(n) for side, kind, field, n in found})

    def latency(self) -> dict[int, int]:
        """The claim latency histogram: microseconds bucket to acquisitions."""
        log = self.tables.log
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(log.c.value, sa.func.count())
                                 .where(log.c.kind == LATENCY).group_by(log.c.value)).all()
        return {int(micros): int(n) for micros, n in found}

    def effects(self, side: str) -> tuple[int, int, int]:
        """Of one side's effects: the records done, the effects beyond one per record,
        and the records done more than once."""
        table = self.tables.effects
        per_job = (sa.select(table.c.record_id, sa.func.count().label("n"))
                   .where(table.c.side == side).group_by(table.c.record_id).subquery())
        with self.engine.connect() as conn:
            done, extra, doubled = conn.execute(sa.select(
                sa.func.count(), sa.func.coalesce(sa.func.sum(per_job.c.n - 1), 0),
                sa.func.count().filter(per_job.c.n > 1))).one()
        return int(done), int(extra), int(doubled)
