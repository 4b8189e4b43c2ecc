"""Where the claim's PostgreSQL cost goes: the claim's statements against the
floor, and against the previous commit's table and statements.

    python -m benchmarks.run --suite schema

One client, fresh keys, acquire then complete (with a small stored result),
each as a prepared autocommit statement on a psycopg connection of its own,
with synchronous commit on. Every variant has its own table and connection;
they run in small chunks, interleaved in a new random order each round, so
the machine's drift touches every variant alike. For every variant and
round: PostgreSQL CPU per claim (the backend's own time on the CPU, in
nanoseconds, from ``/proc/<pid>/schedstat``), client CPU per claim, and WAL
bytes per claim; and for every variant the share of completions that were
HOT updates (no index entry written).

======================  ==========================================================
variant                 what it is
======================  ==========================================================
``floor``               three columns, ``INSERT .. ON CONFLICT DO UPDATE`` and a
                        fenced ``UPDATE``: the smallest correct claim
``before``              the previous commit's table and statements
                        (:mod:`benchmarks.previous_release`)
``text``                the same with ``TEXT`` columns
``no_check``            and without the check constraint on ``state``
``json_record``         and with ``claim_conflict``'s claim statement (the row a
                        duplicate lost to as one JSON column)
``claim_conflict``      this release's table, with the claim statement of the
                        release before (one ``INSERT .. ON CONFLICT DO UPDATE``
                        with the duplicate's branch beside it, which a table
                        without the settle function still runs): and without
                        the index on running leases, the expiry set at
                        acquire, so completions are HOT updates
``claim``               this release's table and the statements ``ClaimStore``
                        runs: the claim an ``INSERT .. ON CONFLICT DO NOTHING``
                        that calls the table's settle function only when the
                        key has a row (:mod:`celery_claim.sql_settle`)
``stale_index``         the same, with the index on running leases that the
                        previous table had (what adding it back costs)
``no_lost_branch``      this release's table with the acquire alone (``claim_conflict``
                        without the duplicate's branch that makes a duplicate
                        one statement)
``no_result``           and a completion that stores no result
``no_expiry_index``     and no index on ``expires_at`` (purge's): what is left
                        against the floor is the wider row itself
``no_verdict``          not adopted (:mod:`benchmarks.alternatives`): ``claim_conflict``
                        without the ``mismatch`` verdict in the duplicate's
                        branch, which a client could derive from the row
``single_statement``    not adopted (:mod:`benchmarks.alternatives`): ``claim_conflict``
                        with its claim statement as one ``INSERT .. ON CONFLICT DO
                        UPDATE`` whose ``SET`` counts a duplicate, without the
                        duplicate's CTE
======================  ==========================================================

Each of ``text`` to ``claim`` takes one more cost of ``before`` away: the
differences between neighbours are what each cost. For the claim statements
(``json_record``, ``claim_conflict``, ``claim``, ``no_verdict``, ``single_statement``) the
suite also measures a duplicate of a finished claim: the same keys delivered again.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from benchmarks import alternatives, previous_release
from celery_claim import sql_settle
from celery_claim.sql import ddl, make_table
from celery_claim.statements import Statements, driver_dialect

__all__ = ["VARIANTS", "costs"]

_RESULT = {"result": b"5", "result_content_type": "application/json",
           "result_content_encoding": "utf-8"}
_CLAIM = {"task_name": "bench.claim", "owner": "celery@bench/1234", "payload_digest": None,
          "lease_seconds": 30.0, "ttl_seconds": 86400.0, "retry_failed": False,
          "check_payload": True, "own_transaction": True,  # autocommit, as the store's connection
          "nonce": "1"}
_COMPLETE = {"state": "succeeded", "error": None, "ttl_seconds": 86400.0, **_RESULT}


def _on_cpu_ns(pid: int) -> int:
    """The nanoseconds process ``pid`` has spent on a CPU."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


Claim = Callable[[str], None]


class _Floor:
    """The floor's claim of a key; ``pause`` seconds after each statement
    (0: back to back)."""

    def __init__(self, conn: Any, table: str) -> None:
        conn.execute(f"CREATE TABLE {table} (key text PRIMARY KEY, state text NOT NULL, "
                     "token bigint NOT NULL)")
        self.conn, self.pause = conn, 0.0
        self.acquire = (
            f"INSERT INTO {table} AS t (key, state, token) VALUES (%s, 'running', 1) "  # noqa: S608
            "ON CONFLICT (key) DO UPDATE SET state = 'running', token = t.token + 1 "
            "WHERE t.state <> 'succeeded' RETURNING token")
        self.complete = f"UPDATE {table} SET state = 'succeeded' WHERE key = %s AND token = %s"  # noqa: S608

    def __call__(self, key: str) -> None:
        token = self.conn.execute(self.acquire, (key,), prepare=True).fetchone()[0]
        _pause(self.pause)
        self.conn.execute(self.complete, (key, token), prepare=True)
        _pause(self.pause)

    def again(self, key: str) -> None:
        """A duplicate of the finished claim: its acquire, which returns no row."""
        row = self.conn.execute(self.acquire, (key,), prepare=True).fetchone()
        assert row is None, (key, row)


def _floor(conn: Any, table: str) -> Claim:
    return _Floor(conn, table)


def _pause(seconds: float) -> None:
    if seconds:
        time.sleep(seconds)


class _Statements:
    """A claim by ``acquire`` and ``complete`` (called with a key); and
    :meth:`again`, the same delivery's acquire once more: a duplicate."""

    def __init__(self, conn: Any, acquire: str, complete: str) -> None:
        self.conn, self.acquire, self.complete = conn, acquire, complete
        self.task_id = str(uuid.uuid4())
        self.token_at: int | None = None
        self.pause = 0.0  # seconds after each statement

    def _acquire(self, key: str) -> Any:
        return self.conn.execute(self.acquire, {**_CLAIM, "key": key, "task_id": self.task_id},
                                 prepare=True)

    def __call__(self, key: str) -> None:
        cursor = self._acquire(key)
        row = cursor.fetchone()
        if self.token_at is None:
            self.token_at = [c.name for c in cursor.description].index("token")
        _pause(self.pause)
        self.conn.execute(self.complete, {**_COMPLETE, "key": key, "token": row[self.token_at]},
                          prepare=True).fetchone()
        _pause(self.pause)

    def again(self, key: str) -> None:
        cursor = self._acquire(key)
        row = cursor.fetchone()
        assert row is not None, key  # lost, in one statement
        names = [c.name for c in cursor.description]
        if "settled" in names:  # the settle function's answer
            assert str(row[names.index("settled")]).startswith("[false,"), row
        else:
            assert row[0] is False, row


def _previous(*, text: bool = False, check: bool = True,
              record: bool = False) -> Callable[[Any, str], Claim]:
    """The previous commit's table and statements, with one change after
    another: ``TEXT`` columns, no check constraint, this release's claim
    statement (the row a duplicate lost to as one JSON column)."""
    def make(conn: Any, table: str) -> Claim:
        statements = previous_release.DDL.format(table=table)
        if text:
            statements = re.sub(r"VARCHAR\(\d+\)", "TEXT", statements)
        if not check:
            statements = re.sub(r",\s*CONSTRAINT \w+ CHECK \(state IN \([^)]*\)\)", "",
                                statements)
        for create in statements.split(";"):
            if create.strip():
                conn.execute(create)
        claim = previous_release.CLAIM.format(table=table)
        if record:
            ours = Statements(make_table(table), "postgresql")
            claim = ours.driver("claim_conflict", driver_dialect("psycopg")).sql
        return _Statements(conn, claim, previous_release.COMPLETE.format(table=table))
    return make


#: The table's columns with those a completion writes last: PostgreSQL logs
#: an update's new row without the part before the first changed column.
_COMPLETION_LAST = (
    "key", "token", "task_name", "task_id", "attempt", "owner", "payload_digest", "duplicates",
    "created_at", "expires_at", "state", "lease_expires_at", "updated_at", "finished_at", "error",
    "result_content_type", "result_content_encoding", "result")


def _reordered(t: sa.Table) -> sa.Table:
    """``t`` (and its index) with its columns in the order of :data:`_COMPLETION_LAST`."""
    assert sorted(_COMPLETION_LAST) == sorted(t.c.keys()), t.c.keys()
    copy = sa.Table(t.name, sa.MetaData(), *(t.c[name]._copy() for name in _COMPLETION_LAST))
    for index in t.indexes:
        sa.Index(index.name, *(copy.c[c.name] for c in index.columns),
                 postgresql_where=copy.c.expires_at.isnot(None))
    return copy


def create_claims_table(conn: Any, t: sa.Table) -> None:
    """Run ``t``'s PostgreSQL DDL on ``conn``: the table, its index, its settle function."""
    for create in ddl(t, "postgresql").split(";\n\n"):
        if create.strip():
            conn.execute(create)


def _claims(*, stale_index: bool = False, acquire: str = "claim",
            complete: str = "complete_with_result",
            expiry_index: bool = True, single: bool = False,
            verdict: bool = True, completion_last: bool = False) -> Callable[[Any, str], Claim]:
    def make(conn: Any, table: str) -> Claim:
        t = make_table(table)
        create_claims_table(conn, _reordered(t) if completion_last else t)
        if not expiry_index:
            conn.execute(f"DROP INDEX {table}_expires_idx")
        if stale_index:
            conn.execute(f"CREATE INDEX {table}_running_lease_idx ON {table} "
                         "(lease_expires_at) WHERE state = 'running'")
        statements = Statements(t, "postgresql")
        dialect = driver_dialect("psycopg")
        if single:
            claim = alternatives.SINGLE_STATEMENT.format(table=table)
        elif not verdict:
            claim = alternatives.without_verdict(table)
        else:
            claim = statements.driver(acquire, dialect).sql
        return _Statements(conn, claim, statements.driver(complete, dialect).sql)
    return make


#: Each variant: what it is, and how to make its table and claim on a connection.
VARIANTS: dict[str, tuple[str, Callable[[Any, str], Claim]]] = {
    "floor": ("the floor: three columns, two statements", _floor),
    "before": ("the previous commit's table and statements", _previous()),
    "text": ("before, with TEXT columns", _previous(text=True)),
    "no_check": ("and no check constraint on state", _previous(text=True, check=False)),
    "json_record": ("and claim_conflict's claim statement: the lost row as one JSON column",
                    _previous(text=True, check=False, record=True)),
    "claim_conflict": ("this release's table, the previous claim statement (INSERT .. ON "
                       "CONFLICT DO UPDATE and the duplicate's branch): and no index on running "
                       "leases, the expiry set at acquire (completions are HOT updates)",
                       _claims(acquire="claim_conflict")),
    "claim": ("this release's table and statements: the claim an INSERT .. ON CONFLICT DO "
              "NOTHING that calls the settle function only for a key that has a row",
              _claims(stale_index=False)),
    "stale_index": ("the same with an index on running leases added back",
                    _claims(stale_index=True)),
    "no_lost_branch": ("this release's table, the acquire without the duplicate's branch",
                       _claims(acquire="acquire")),
    "no_result": ("and a completion that stores no result", _claims(acquire="acquire",
                                                                    complete="complete")),
    "no_expiry_index": ("and no index on the expiry (what purge reads)",
                        _claims(acquire="acquire", complete="complete", expiry_index=False)),
    "no_verdict": ("not adopted: the claim without the mismatch verdict in the duplicate's "
                   "branch (a client would derive it from the row)", _claims(verdict=False)),
    "single_statement": ("not adopted: the claim as one INSERT ... ON CONFLICT DO UPDATE "
                         "whose SET counts a duplicate, without the duplicate's CTE",
                         _claims(single=True)),
    "completion_last": ("not adopted: the claim's table with the columns a completion writes "
                        "last (its WAL record then logs only them)",
                        _claims(completion_last=True)),
}


#: The variants whose claim statement also answers a duplicate: their
#: PostgreSQL CPU per duplicate of a finished claim is measured too.
DUPLICATES = ("json_record", "claim_conflict", "claim", "no_verdict", "single_statement")


def costs(url: str, ops: int = 2000, rounds: int = 5, chunk: int = 250, *,
          variants: dict[str, tuple[str, Callable[[Any, str], Claim]]] | None = None,
          duplicates: tuple[str, ...] | None = None,
          prefix: str = "bench_schema", pause_ms: float = 0.0) -> list[dict[str, Any]]:
    """PostgreSQL CPU, client CPU and WAL per claim for every variant and round
    (``ops`` claims per variant and round, in chunks of ``chunk``), and the
    share of each variant's completions that were HOT updates; for the
    ``duplicates`` variants, PostgreSQL CPU per duplicate of a finished
    claim (each chunk's keys delivered again). ``variants`` and
    ``duplicates`` default to :data:`VARIANTS` and :data:`DUPLICATES`; the
    tables are named ``{prefix}_{variant}_{random}``, and dropped at the end.

    ``pause_ms``: an idle pause after each statement of a first delivery, as
    a worker leaves its backend idle while the body and Celery's own work
    run: PostgreSQL then runs each statement with colder caches, which costs
    it more, and costs a statement that goes through more of its code more.
    0 runs them back to back. Duplicates always run back to back."""
    variants = VARIANTS if variants is None else variants
    duplicates = DUPLICATES if duplicates is None else duplicates
    import psycopg

    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    admin = psycopg.connect(dsn, autocommit=True)
    opened: list[tuple[Any, str]] = []
    claims: dict[str, tuple[Any, Claim]] = {}
    twins: dict[str, tuple[Any, Claim]] = {}
    tables: dict[str, str] = {}
    rows: list[dict[str, Any]] = []

    def open_claim(make: Callable[[Any, str], Claim], table: str,
                   with_duplicates: bool = False) -> tuple[Any, Claim]:
        conn = psycopg.connect(dsn, autocommit=True)
        opened.append((conn, table))
        # What the store's claim connections run with (generic plans).
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("SET synchronous_commit = on")
        one = make(conn, table)
        for i in range(min(200, ops)):
            one(f"warm:{i}")
            if with_duplicates:
                one.again(f"warm:{i}")  # type: ignore[attr-defined]
        return conn, one

    try:
        for name, (_, make) in variants.items():
            table = tables[name] = f"{prefix}_{name}_{uuid.uuid4().hex[:8]}"
            claims[name] = open_claim(make, table)
            claims[name][1].pause = pause_ms / 1000  # type: ignore[attr-defined]
            if name in duplicates:
                # Duplicates on a table of their own, so that their updates
                # do not count among the completions' HOT share.
                twins[name] = open_claim(make, f"{table}_dup", with_duplicates=True)
        admin.execute("CHECKPOINT")
        for round_ in range(rounds):
            spent = {name: [0, 0.0, 0] for name in claims}  # server ns, client s, WAL bytes
            duplicate = dict.fromkeys(duplicates, 0)  # server ns
            done = 0
            while done < ops:
                size = min(chunk, ops - done)
                order = list(claims)
                random.shuffle(order)
                for name in order:
                    conn, one = claims[name]
                    keys = [f"bench.claim:{uuid.uuid4()}" for _ in range(size)]
                    pid = conn.info.backend_pid
                    lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
                    server, client = _on_cpu_ns(pid), time.process_time()
                    for key in keys:
                        one(key)
                    spent[name][0] += _on_cpu_ns(pid) - server
                    spent[name][1] += time.process_time() - client
                    spent[name][2] += int(conn.execute(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,)).fetchone()[0])
                    if name in twins:  # the same keys delivered again, on the twin
                        twin_conn, twin = twins[name]
                        for key in keys:
                            twin(key)
                        twin_pid = twin_conn.info.backend_pid
                        server = _on_cpu_ns(twin_pid)
                        for key in keys:
                            twin.again(key)  # type: ignore[attr-defined]
                        duplicate[name] += _on_cpu_ns(twin_pid) - server
                done += size
            for name, (server_ns, client_s, wal) in spent.items():
                rows.append({"variant": name, "round": round_, "ops": ops,
                             "server_cpu_ms": server_ns / 1e6 / ops,
                             "client_cpu_ms": 1000 * client_s / ops,
                             "wal_bytes": wal / ops,
                             "duplicate_cpu_ms": (duplicate[name] / 1e6 / ops
                                                  if name in duplicate else None)})
        # A backend flushes its table statistics at most once a second, at the
        # end of a transaction.
        time.sleep(1.1)
        hot: dict[str, float] = {}
        for name, (conn, _) in claims.items():
            table = tables[name]
            conn.execute("SELECT 1")
            hot_updates, updates = admin.execute(
                "SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = %s",
                (table,)).fetchone()
            hot[name] = hot_updates / updates if updates else 0.0
        for row in rows:
            row["hot_share"] = hot[row["variant"]]
    finally:
        for conn, table in opened:
            try:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute(sql_settle.drop_settle_function(make_table(table)))
            finally:
                conn.close()
        admin.close()
    return rows

