"""Where the claim's PostgreSQL cost goes: the claim's statements against the
floor, taking one thing away at a time.

    python -m benchmarks.run --suite schema

One client, fresh keys, acquire then complete (with a small stored result),
each as a prepared autocommit statement on its own psycopg connection, with
synchronous commit on. For every variant and round: PostgreSQL CPU per claim
(the backend's own ``/proc`` times), client CPU per claim, WAL bytes per claim
and how many of the completions were HOT updates (no index entry written).
The variants run interleaved, on tables of their own, after a checkpoint.

==================  ==========================================================
variant             what it is
==================  ==========================================================
``floor``           three columns, ``INSERT .. ON CONFLICT DO UPDATE`` and a
                    fenced ``UPDATE``: the smallest correct claim
``claim``           the claims table and the statements ``ClaimStore`` runs
                    (the acquire with the duplicate's read in one statement)
``no_indexes``      the same without the table's two partial indexes (purge by
                    expiry, stale leases): every completion can be HOT
``acquire_only``    the same again, with the plain acquire in place of the
                    statement that also reads a duplicate's row
``narrow``          the floor's columns and the claim's essentials: lease,
                    payload digest, task id and name, owner, result with its
                    content type and encoding, created and finished times; no
                    secondary index, no check constraint
==================  ==========================================================
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from celery_claim.sql import ddl, make_table
from celery_claim.statements import Statements, driver_dialect

__all__ = ["VARIANTS", "costs"]

_TICKS = os.sysconf("SC_CLK_TCK")
_RESULT = {"result": b"5", "result_content_type": "application/json",
           "result_content_encoding": "utf-8"}


def _backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


Claim = Callable[[str], None]


def _floor(conn: Any, table: str) -> Claim:
    conn.execute(f"CREATE TABLE {table} (key text PRIMARY KEY, state text NOT NULL, "
                 "token bigint NOT NULL)")
    acquire = (f"INSERT INTO {table} AS t (key, state, token) VALUES (%s, 'running', 1) "  # noqa: S608
               "ON CONFLICT (key) DO UPDATE SET state = 'running', token = t.token + 1 "
               "WHERE t.state <> 'succeeded' RETURNING token")
    complete = f"UPDATE {table} SET state = 'succeeded' WHERE key = %s AND token = %s"  # noqa: S608

    def one(key: str) -> None:
        token = conn.execute(acquire, (key,), prepare=True).fetchone()[0]
        conn.execute(complete, (key, token), prepare=True)
    return one


def _claims(*, indexes: bool, statement: str) -> Callable[[Any, str], Claim]:
    def make(conn: Any, table: str) -> Claim:
        t = make_table(table)
        for create in ddl(t, "postgresql").split(";\n"):
            if create.strip() and (indexes or "CREATE INDEX" not in create):
                conn.execute(create)
        statements = Statements(t, "postgresql")
        dialect = driver_dialect("psycopg")
        acquire = statements.driver(statement, dialect).sql
        complete = statements.driver("complete_with_result", dialect).sql
        token_at = 1 if statement == "claim" else 0  # claim's first column: won
        task_id = str(uuid.uuid4())

        def one(key: str) -> None:
            row = conn.execute(acquire, {
                "key": key, "task_name": "bench.claim", "task_id": task_id,
                "owner": "celery@bench/1234", "payload_digest": "a" * 64,
                "lease_seconds": 30.0, "retry_failed": False, "check_payload": True,
                "own_transaction": True,  # autocommit, as the store's connection
            }, prepare=True).fetchone()
            conn.execute(complete, {"key": key, "token": row[token_at], "state": "succeeded",
                                    "error": None, "ttl_seconds": 86400.0, **_RESULT},
                         prepare=True).fetchone()
        return one
    return make


def _narrow(conn: Any, table: str) -> Claim:
    conn.execute(
        f"CREATE TABLE {table} (key text PRIMARY KEY, state text NOT NULL, "
        "token bigint NOT NULL, task_name text NOT NULL, task_id text NOT NULL, "
        "owner text NOT NULL, payload_digest text, lease_expires_at timestamptz, "
        "expires_at timestamptz, result bytea, result_content_type text, "
        "result_content_encoding text, created_at timestamptz NOT NULL, "
        "finished_at timestamptz)")
    acquire = (
        f"INSERT INTO {table} AS t (key, state, token, task_name, task_id, owner, "  # noqa: S608
        "payload_digest, lease_expires_at, created_at) VALUES (%(key)s, 'running', 1, "
        "%(task_name)s, %(task_id)s, %(owner)s, %(digest)s, "
        "statement_timestamp() + make_interval(secs => %(lease)s), statement_timestamp()) "
        "ON CONFLICT (key) DO UPDATE SET state = 'running', token = t.token + 1, "
        "task_id = excluded.task_id, owner = excluded.owner, "
        "payload_digest = excluded.payload_digest, lease_expires_at = excluded.lease_expires_at, "
        "result = NULL, expires_at = NULL, finished_at = NULL "
        "WHERE t.state = 'released' OR (t.state = 'running' AND "
        "t.lease_expires_at < statement_timestamp()) OR t.expires_at < statement_timestamp() "
        "RETURNING token")
    complete = (
        f"UPDATE {table} SET state = 'succeeded', result = %(result)s, "  # noqa: S608
        "result_content_type = %(result_content_type)s, "
        "result_content_encoding = %(result_content_encoding)s, lease_expires_at = NULL, "
        "finished_at = statement_timestamp(), "
        "expires_at = statement_timestamp() + make_interval(secs => %(ttl)s) "
        "WHERE key = %(key)s AND token = %(token)s AND state = 'running' RETURNING token")
    task_id = str(uuid.uuid4())

    def one(key: str) -> None:
        token = conn.execute(acquire, {
            "key": key, "task_name": "bench.claim", "task_id": task_id,
            "owner": "celery@bench/1234", "digest": "a" * 64, "lease": 30.0,
        }, prepare=True).fetchone()[0]
        conn.execute(complete, {"key": key, "token": token, "ttl": 86400.0, **_RESULT},
                     prepare=True).fetchone()
    return one


#: Each variant: what it is, and how to make its table and claim on a connection.
VARIANTS: dict[str, tuple[str, Callable[[Any, str], Claim]]] = {
    "floor": ("the floor: three columns, two statements", _floor),
    "claim": ("the claims table and ClaimStore's statements",
              _claims(indexes=True, statement="claim")),
    "no_indexes": ("the same without the two partial indexes",
                   _claims(indexes=False, statement="claim")),
    "acquire_only": ("and the plain acquire (no duplicate read in the statement)",
                     _claims(indexes=False, statement="acquire")),
    "narrow": ("the floor's columns and the claim's essentials, no secondary index", _narrow),
}


def costs(url: str, ops: int = 2000, rounds: int = 5) -> list[dict[str, Any]]:
    """PostgreSQL CPU, client CPU, WAL and HOT completions per claim, per variant and round."""
    import psycopg

    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    admin = psycopg.connect(dsn, autocommit=True)
    rows: list[dict[str, Any]] = []
    try:
        for round_ in range(rounds):
            for name, (_, make) in VARIANTS.items():
                table = f"bench_schema_{name}_{uuid.uuid4().hex[:8]}"
                with psycopg.connect(dsn, autocommit=True) as conn:
                    # What the store's claim connections run with (generic plans).
                    conn.execute("SET plan_cache_mode = force_generic_plan")
                    pid = conn.info.backend_pid
                    try:
                        one = make(conn, table)
                        for i in range(min(200, ops)):
                            one(f"warm:{i}")
                        admin.execute("CHECKPOINT")
                        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
                        server, client = _backend_cpu(pid), time.process_time()
                        for _ in range(ops):
                            one(f"bench.claim:{uuid.uuid4()}")
                        server = _backend_cpu(pid) - server
                        client = time.process_time() - client
                        wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)",
                                           (lsn,)).fetchone()[0]
                        # A backend flushes its table statistics at most once a second,
                        # at the end of a transaction.
                        time.sleep(1.1)
                        conn.execute("SELECT 1")
                        hot, updated = conn.execute(
                            "SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables "
                            "WHERE relname = %s", (table,)).fetchone()
                    finally:
                        conn.execute(f"DROP TABLE IF EXISTS {table}")
                rows.append({"variant": name, "round": round_, "ops": ops,
                             "server_cpu_ms": 1000 * server / ops,
                             "client_cpu_ms": 1000 * client / ops,
                             "wal_bytes": float(wal) / ops,
                             "hot_share": hot / updated if updated else 0.0})
    finally:
        admin.close()
    return rows
