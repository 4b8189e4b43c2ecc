"""The duplicate's branch of the claim statement, taken apart: what each of
its parts costs a first delivery in PostgreSQL CPU, and two other forms of
it that were measured and not adopted.

    python -m benchmarks.claim_parts [--rounds 9] [--ops 2000] [--pause-ms 0] [--json PATH]

It runs as ``python -m benchmarks.run --suite schema`` does (one client,
each variant on its own table and connection, prepared autocommit
statements with generic plans, chunks interleaved in a new order each
round; :func:`benchmarks.schema.costs`), with these variants:

====================  ==========================================================
variant               what it is
====================  ==========================================================
``floor``             the floor: three columns, two statements
``acquire``           this release's table, the acquire alone (no duplicate's
                      branch: a duplicate would take a second statement)
``acquire_in_cte``    the acquire as the claim statement holds it: in a CTE,
                      its row selected from it, still no duplicate's branch
``claim``             the claim statement ``ClaimStore`` runs: the acquire's CTE
                      and the duplicate's branch, an ``UPDATE`` that counts the
                      duplicate and returns the row it lost to
``claim_read``        not adopted: the duplicate's branch as a locking read
                      (``SELECT .. FOR UPDATE``) of the same row, without the
                      count: what the count's ``UPDATE`` costs a first delivery
``multi_assign``      not adopted: one ``INSERT .. ON CONFLICT DO UPDATE`` whose
                      ``SET`` is a single assignment of all the columns from a
                      sub-``SELECT`` that evaluates the acquire's rule once, and
                      keeps each column or writes the takeover's value (the
                      other one-statement form, ``single_statement`` in the
                      schema suite, repeats the rule in every column's ``CASE``)
``verdict_in_where``  not adopted: one ``INSERT .. ON CONFLICT DO UPDATE`` whose
                      ``WHERE`` evaluates the rule once and records the verdict
                      in a setting, which every column's ``CASE`` and
                      ``RETURNING`` read
``function``          not adopted: a PL/pgSQL function that runs the acquire,
                      and the duplicate's count and row only when the acquire
                      did not win (two statements of the package's, inside)
====================  ==========================================================

Every variant completes with the claim's ``complete_with_result``, except
the floor. For the five claim statements (``claim`` and the four not
adopted) it also measures a duplicate of a finished claim. ``--pause-ms``
leaves the backend idle after each statement of a first delivery, as a
worker does while the body runs: the statements then run with colder
caches, as in a worker (:func:`benchmarks.schema.costs`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.schema import Claim, _floor, _Statements, costs, create_claims_table
from celery_claim import sql, sql_claim
from celery_claim.sql import make_table
from celery_claim.statements import STATEMENTS, DriverStatement, Statements, driver_dialect

__all__ = ["VARIANTS", "main"]

DEFAULT_URL = os.environ.get("CELERY_CLAIM_TEST_DATABASE_URL",
                             "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _acquire_in_cte(t: sa.Table) -> Any:
    won = sql._insert(t, "postgresql").returning(t.c.token, t.c.attempt).cte("won")
    return sa.select(sa.true().label("won"), won.c.token, won.c.attempt)


#: The columns a takeover writes, and the value it writes (``T``, the table's alias, the row).
_TAKEOVER = (
    ("state", "'running'"), ("token", "T.token + 1"), ("task_name", "excluded.task_name"),
    ("task_id", "excluded.task_id"), ("attempt", "T.attempt + 1"), ("owner", "excluded.owner"),
    ("payload_digest", "excluded.payload_digest"), ("result", "NULL"),
    ("result_content_type", "NULL"), ("result_content_encoding", "NULL"), ("error", "NULL"),
    ("lease_expires_at", "excluded.lease_expires_at"), ("updated_at", "statement_timestamp()"),
    ("finished_at", "NULL"), ("expires_at", "excluded.expires_at"),
)
#: The columns and values of a new claim, as the claim statement inserts them.
_VALUES = (
    "(key, state, token, task_name, task_id, attempt, owner, payload_digest,"
    " duplicates, lease_expires_at, created_at, updated_at, expires_at)"
    " VALUES (%(key)s, 'running', 1, %(task_name)s, %(task_id)s, 1, %(owner)s,"
    " %(payload_digest)s, 0, statement_timestamp() + make_interval(secs => %(lease_seconds)s),"
    " statement_timestamp(), statement_timestamp(),"
    " statement_timestamp() + make_interval(secs => %(lease_seconds)s + %(ttl_seconds)s))"
)
_RULE = (
    "(T.expires_at IS NOT NULL AND T.expires_at < statement_timestamp() AND T.state <> 'running'"
    " OR (T.state = 'released' OR T.state = 'failed' AND %(retry_failed)s"
    " OR T.state = 'running' AND T.lease_expires_at < statement_timestamp())"
    " AND (NOT %(check_payload)s OR T.payload_digest IS NULL OR excluded.payload_digest IS NULL"
    " OR T.payload_digest = excluded.payload_digest OR T.task_id = excluded.task_id))"
)
_MISMATCH = (
    "NOT (T.expires_at IS NOT NULL AND T.expires_at < statement_timestamp()"
    " AND T.state <> 'running') AND NOT (NOT %(check_payload)s OR T.payload_digest IS NULL"
    " OR %(payload_digest)s::text IS NULL OR T.payload_digest = %(payload_digest)s::text"
    " OR T.task_id = %(task_id)s::text)"
)


def _quick_commit(lost: str) -> str:
    """The claim's ``quick_commit`` column for a statement whose loser is told
    by ``lost``: a duplicate's commit does not wait for its flush."""
    return (f"CASE WHEN {lost} AND %(own_transaction)s"
            " THEN set_config('synchronous_commit', 'off', true) END AS quick_commit")


def multi_assign(table: str) -> str:
    """The ``multi_assign`` claim statement on ``table`` (psycopg's
    ``%(name)s`` placeholders). As ``single_statement``, a loser's branch
    writes the call's ``nonce`` to a setting local to the transaction, which
    ``RETURNING`` compares to tell a loser from a takeover; a loser's commit,
    as the claim's, does not wait for its flush. ``OFFSET 0`` keeps the rule's
    sub-``SELECT`` a subquery of its own, evaluated once per row: without it
    PostgreSQL would pull it up, and copy the rule into every ``CASE``."""
    keep_or_take = ", ".join(f"CASE WHEN x.take THEN {new} ELSE T.{column} END"
                             for column, new in _TAKEOVER)
    count = ("CASE WHEN x.take THEN T.duplicates ELSE T.duplicates + 1"
             " + length(set_config('celery_claim.lost', %(nonce)s, true)) * 0 END")
    lost = "current_setting('celery_claim.lost', true) = %(nonce)s"
    # The table's name is the benchmark's own.
    return (
        f"INSERT INTO {table} AS T {_VALUES}"  # noqa: S608
        f" ON CONFLICT (key) DO UPDATE SET ({', '.join(c for c, _ in _TAKEOVER)}, duplicates)"
        f" = (SELECT {keep_or_take}, {count} FROM (SELECT {_RULE} AS take OFFSET 0) AS x)"
        f" RETURNING ({lost}) IS NOT TRUE AS won, T.token, T.attempt,"
        f" CASE WHEN {lost} THEN CAST(row_to_json(T.*) AS TEXT) END AS record,"
        f" statement_timestamp() AS db_now, CASE WHEN {lost} THEN {_MISMATCH} END AS mismatch,"
        f" {_quick_commit(lost)}"
    )


def verdict_in_where(table: str) -> str:
    """The ``verdict_in_where`` claim statement on ``table`` (psycopg's
    ``%(name)s`` placeholders): one ``INSERT .. ON CONFLICT DO UPDATE`` whose
    ``WHERE`` evaluates the acquire's rule once, on the locked row, and writes
    its verdict (``take`` or ``lost``, with the call's ``nonce``) to a
    setting local to the transaction; it is always true, so the row is always
    updated, and each column of the ``SET`` (evaluated after the ``WHERE``)
    keeps its value or writes the takeover's by that setting, as
    ``duplicates`` counts a loser. ``RETURNING`` reads it too."""
    took = "current_setting('celery_claim.verdict', true) = 'take' || %(nonce)s"
    lost = "current_setting('celery_claim.verdict', true) = 'lost' || %(nonce)s"
    keep_or_take = ", ".join(f"{column} = CASE WHEN {took} THEN {new} ELSE T.{column} END"
                             for column, new in _TAKEOVER)
    # The table's name is the benchmark's own.
    return (
        f"INSERT INTO {table} AS T {_VALUES}"
        f" ON CONFLICT (key) DO UPDATE SET {keep_or_take},"
        f" duplicates = CASE WHEN {took} THEN T.duplicates ELSE T.duplicates + 1 END"
        " WHERE set_config('celery_claim.verdict',"
        f" CASE WHEN {_RULE} THEN 'take' ELSE 'lost' END || %(nonce)s, true) IS NOT NULL"
        f" RETURNING ({lost}) IS NOT TRUE AS won, T.token, T.attempt,"
        f" CASE WHEN {lost} THEN CAST(row_to_json(T.*) AS TEXT) END AS record,"
        f" statement_timestamp() AS db_now, CASE WHEN {lost} THEN {_MISMATCH} END AS mismatch,"
        f" {_quick_commit(lost)}"
    )


def _variant(claim: Callable[[sa.Table], Any]) -> Callable[[Any, str], Claim]:
    """A variant whose claim statement is ``claim(table)``: SQLAlchemy's, or SQL text."""
    def make(conn: Any, table: str) -> Claim:
        t = make_table(table)
        create_claims_table(conn, t)
        dialect = driver_dialect("psycopg")
        built = claim(t)
        text = built if isinstance(built, str) else \
            DriverStatement.compile("claim", built, dialect).sql
        complete = Statements(t, "postgresql").driver("complete_with_result", dialect).sql
        return _Statements(conn, text, complete)
    return make


#: The claim's parameters, as a function's arguments (``p_`` and the name).
_ARGUMENTS = (("key", "text"), ("task_name", "text"), ("task_id", "text"), ("owner", "text"),
              ("payload_digest", "text"), ("lease_seconds", "float8"), ("ttl_seconds", "float8"),
              ("retry_failed", "bool"), ("check_payload", "bool"), ("own_transaction", "bool"))
_RESULTS = ("won", "token", "attempt", "record", "db_now", "mismatch", "quick_commit")


def _in_function(statement: Any, into: Sequence[str]) -> str:
    """``statement`` (the package's, built by its own builders) as a PL/pgSQL
    statement: its parameters the function's arguments, its row ``INTO``
    the function's results."""
    text = DriverStatement.compile("claim", statement, driver_dialect("psycopg")).sql
    return re.sub(r"%\((\w+)\)s", r"p_\1", text) + " INTO " + ", ".join(f"o_{n}" for n in into)


def function(conn: Any, table: str) -> Claim:
    """The claim as a PL/pgSQL function: the acquire, and the duplicate's count
    and row only when the acquire did not win. The function is the
    connection's own (``pg_temp``): it goes when the connection closes."""
    t = make_table(table)
    create_claims_table(conn, t)
    acquire = _in_function(sql._insert(t, "postgresql").returning(t.c.token, t.c.attempt),
                           ("token", "attempt"))
    lost = _in_function(
        sa.update(t).where(t.c.key == sql._p("key")).values(duplicates=t.c.duplicates + 1)
        .returning(sa.false(), *sql_claim._lost_columns(t)), _RESULTS)
    arguments = ", ".join(f"p_{name} {type_}" for name, type_ in _ARGUMENTS)
    results = ", ".join(f"OUT o_{name} {type_}" for name, type_ in zip(
        _RESULTS, ("bool", "bigint", "integer", "text", "timestamptz", "bool", "text"),
        strict=True))
    conn.execute(f"CREATE FUNCTION pg_temp.{table}_claim({arguments}, {results}) "
                 f"LANGUAGE plpgsql AS $$ BEGIN {acquire}; "
                 "IF FOUND THEN o_won := true; RETURN; END IF; "
                 f"{lost}; END $$")
    call = ", ".join(f"%({name})s" for name, _ in _ARGUMENTS)
    claim = (f"SELECT {', '.join(f'o_{n} AS {n}' for n in _RESULTS)} "  # noqa: S608
             f"FROM pg_temp.{table}_claim({call})")
    complete = Statements(t, "postgresql").driver("complete_with_result",
                                                  driver_dialect("psycopg")).sql
    return _Statements(conn, claim, complete)


def _adopted(name: str) -> Callable[[sa.Table], Any]:
    """The package's statement ``name``, as ``ClaimStore`` builds it."""
    return lambda t: STATEMENTS[name][1](t, "postgresql")


#: Each variant: what it is, and how to make its table and claim on a connection.
VARIANTS: dict[str, tuple[str, Callable[[Any, str], Claim]]] = {
    "floor": ("the floor: three columns, two statements", _floor),
    "acquire": ("the acquire alone, no duplicate's branch", _variant(_adopted("acquire"))),
    "acquire_in_cte": ("the acquire in the claim statement's CTE, no duplicate's branch",
                       _variant(_acquire_in_cte)),
    "claim": ("the claim statement ClaimStore runs", _variant(_adopted("claim"))),
    "claim_read": ("not adopted: the duplicate's branch a locking read, without the count",
                   _variant(lambda t: sql_claim._claim_conflict(t, "postgresql", count=False))),
    "multi_assign": ("not adopted: one INSERT .. ON CONFLICT DO UPDATE, the rule evaluated "
                     "once in a sub-SELECT", _variant(lambda t: multi_assign(t.name))),
    "verdict_in_where": ("not adopted: one INSERT .. ON CONFLICT DO UPDATE, the rule evaluated "
                         "once in its WHERE, which records the verdict the SET reads",
                         _variant(lambda t: verdict_in_where(t.name))),
    "function": ("not adopted: a PL/pgSQL function that runs the acquire, and the duplicate's "
                 "count only when the acquire did not win", function),
}

#: The benchmark's tables are named ``{PREFIX}_{variant}_{random}``.
PREFIX = "bench_parts"
#: The variants whose claim statement also answers a duplicate.
DUPLICATES = ("claim", "claim_read", "multi_assign", "verdict_in_where", "function")


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Medians over the rounds; the difference to ``claim`` taken within each round."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by[row["variant"]].append(row)
    claim = {r["round"]: r["server_cpu_ms"] for r in by["claim"]}
    lines = ["| variant | what it is | PostgreSQL CPU ms per first delivery | against claim, ms | "
             "PostgreSQL CPU ms per duplicate | per round (first delivery) |",
             "|---|---|---|---|---|---|"]
    for name, (what, _) in VARIANTS.items():
        if name not in by:
            continue
        cpu = [r["server_cpu_ms"] for r in by[name]]
        against = statistics.median(r["server_cpu_ms"] - claim[r["round"]] for r in by[name])
        duplicate = [r["duplicate_cpu_ms"] for r in by[name] if r["duplicate_cpu_ms"] is not None]
        lines.append(f"| {name} | {what} | {statistics.median(cpu):.4f} | {against:+.4f} | "
                     + (f"{statistics.median(duplicate):.4f}" if duplicate else "-") + " | "
                     + ", ".join(f"{v:.4f}" for v in cpu) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--ops", type=int, default=2000, help="claims per variant and round")
    parser.add_argument("--pause-ms", type=float, default=0.0,
                        help="an idle pause after each statement of a first delivery, as in "
                             "a worker (colder caches); 0: back to back")
    parser.add_argument("--json", help="also write every round's measurements here")
    args = parser.parse_args(argv)
    rows = costs(args.database_url, args.ops, args.rounds, variants=VARIANTS,
                 duplicates=DUPLICATES, prefix=PREFIX, pause_ms=args.pause_ms)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
