"""The claim's settle function (PostgreSQL): what a delivery does when its
key already has a row.

The ``claim`` statement (:mod:`celery_claim.sql_claim`) inserts the claim,
and calls this function, one per table (``<table>_settle``), only when the
key has a row: to take the row over, or to count the duplicate and read the
row it lost to. A first delivery's plan then holds none of that: PostgreSQL
sets up every part of a prepared statement's plan on each execution, whether
the part runs or not (docs/performance.md, "The settle function").

It is created and dropped with the table (:func:`celery_claim.sql.make_table`
runs :func:`create` and :func:`drop` after the table's own; :func:`celery_claim.sql.ddl`
prints it), and by ``celery-claim schema --upgrade`` for a table without it
(:mod:`celery_claim.upgrade`).
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from celery_claim import errors, sql, sql_claim
from celery_claim.sql import RESULT_COLUMNS, RUNNING, _p, db_now, db_now_plus

__all__ = ["SETTLE_ARGUMENTS", "create", "drop", "drop_settle_function", "settle_call",
           "settle_function", "settle_name"]

#: The settle function's arguments: the claim's parameters, in this order.
SETTLE_ARGUMENTS = (("key", "text"), ("task_name", "text"), ("task_id", "text"),
                    ("owner", "text"), ("payload_digest", "text"),
                    ("lease_seconds", "double precision"), ("ttl_seconds", "double precision"),
                    ("retry_failed", "boolean"), ("check_payload", "boolean"),
                    ("own_transaction", "boolean"))
#: How often the function tries again when the row changes between its statements.
SETTLE_ROUNDS = 100


#: PostgreSQL's longest identifier, in bytes (longer ones are cut short).
MAX_IDENTIFIER = 63


def settle_name(t: sa.Table) -> str:
    """The settle function's name (PostgreSQL), schema-qualified and quoted as
    the table's name is: ``<table>_settle`` beside the table."""
    name = f"{t.name}_settle"
    if len(name.encode()) > MAX_IDENTIFIER:
        # PostgreSQL would cut it short: two tables could share one function.
        raise errors.ClaimConfigurationError(
            f"the claims table's name is too long for its settle function {name!r}: "
            f"use a table name of at most {MAX_IDENTIFIER - len('_settle')} characters",
            claim_table=t.name)
    preparer = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]
    schema = f"{preparer.quote_schema(t.schema)}." if t.schema else ""
    return schema + preparer.quote(name)


class _SettleCall(FunctionElement[Any]):
    """A call of a table's settle function, its name as :func:`settle_name`
    writes it (SQLAlchemy would not quote a schema named like a keyword or
    with capitals)."""

    type = sa.Text()
    inherit_cache = False  # the name is not part of SQLAlchemy's cache key

    def __init__(self, name: str, *arguments: Any) -> None:
        self.settle = name
        super().__init__(*arguments)


@compiles(_SettleCall, "postgresql")
def _pg_settle_call(element: _SettleCall, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{element.settle}({compiler.process(element.clause_expr, **kw)[1:-1]})"


def settle_call(t: sa.Table) -> Any:
    """``<table>_settle(<the claim's parameters>)``."""
    return _SettleCall(settle_name(t), *(_p(arg) for arg, _ in SETTLE_ARGUMENTS))


def _answer(won: bool, t: sa.Table, *rest: Any) -> Any:
    """The function's answer, one JSON array: ``[won, token, attempt, ...]``."""
    return sa.cast(sa.func.json_build_array(sa.literal_column("true" if won else "false"),
                                            t.c.token, t.c.attempt, *rest), sa.Text)


def _settle_statements(t: sa.Table) -> tuple[Any, Any, Any]:
    """The function's three statements, each one atomic decision: count the
    duplicate of a row the delivery may not take; take a row it may take; or
    insert the row, which was gone."""
    now = db_now()
    digest, task_id = _p("payload_digest", sa.String), _p("task_id", sa.String)
    takes, mismatch = sql._takes(t, digest=digest, task_id=task_id, now=now)
    # ``IS NOT TRUE``: a rule that comes out NULL refuses, as the acquire's
    # WHERE does; of the two UPDATEs exactly one matches any version of the row.
    count = sa.update(t).where(t.c.key == _p("key"), takes.is_not(sa.true())) \
        .values(duplicates=t.c.duplicates + 1) \
        .returning(_answer(False, t, sql_claim._row(t),
                           now, mismatch, sql_claim._quick_commit()))
    take = sa.update(t).where(t.c.key == _p("key"), takes).values(
        state=RUNNING, token=t.c.token + 1, task_name=_p("task_name"), task_id=task_id,
        attempt=t.c.attempt + 1, owner=_p("owner"), payload_digest=digest,
        **{c: sa.null() for c in RESULT_COLUMNS}, error=sa.null(),
        lease_expires_at=db_now_plus(_p("lease_seconds", sa.Float)), updated_at=now,
        finished_at=sa.null(),
        expires_at=db_now_plus(_p("lease_seconds", sa.Float) + _p("ttl_seconds", sa.Float)),
    ).returning(_answer(True, t))
    insert = sql._new_claim(t, "postgresql").on_conflict_do_nothing(index_elements=[t.c.key]) \
        .returning(_answer(True, t))
    return count, take, insert


def settle_function(t: sa.Table) -> str:
    """``CREATE OR REPLACE FUNCTION`` of the table's settle function (PostgreSQL).

    ``claim`` calls it only for a key that already has a row, so a first
    delivery's plan holds none of it: PostgreSQL sets up every part of a
    prepared statement's plan on each execution, run or not, and a takeover's
    ``SET`` and the duplicate's branch in the claim statement cost each first
    delivery about a quarter of its instructions (docs/performance.md). Inside
    PL/pgSQL each statement's plan is cached for the session and set up only
    when it runs.

    Its statements are the package's own, built from the same rule
    (:func:`celery_claim.sql._takes`). Each decides and acts at once on the
    newest version of the row. The row can change between two of them (taken
    over, purged), and then the function tries again, at most
    :data:`SETTLE_ROUNDS` times. It returns a JSON array: ``[true, token,
    attempt]`` when it took the row or inserted it; ``[false, token, attempt,
    row, database time, mismatch, quick_commit]`` when it counted a duplicate.
    """
    from celery_claim.statements import DriverStatement, driver_dialect

    dialect = driver_dialect("psycopg")

    def body(statement: Any) -> str:
        text = DriverStatement.compile("settle", statement, dialect).sql
        return re.sub(r"%\((\w+)\)s", r"p_\1", text).replace("%%", "%")

    count, take, insert = (body(s) for s in _settle_statements(t))
    arguments = ", ".join(f"p_{name} {type_}" for name, type_ in SETTLE_ARGUMENTS)
    return (
        f"CREATE OR REPLACE FUNCTION {settle_name(t)}({arguments}) RETURNS text\n"
        "LANGUAGE plpgsql AS $settle$\n"
        "DECLARE answer text;\n"
        "BEGIN\n"
        f"  FOR i IN 1..{SETTLE_ROUNDS} LOOP\n"
        f"    {count} INTO answer;\n"
        "    IF FOUND THEN RETURN answer; END IF;\n"
        f"    {take} INTO answer;\n"
        "    IF FOUND THEN RETURN answer; END IF;\n"
        f"    {insert} INTO answer;\n"
        "    IF FOUND THEN RETURN answer; END IF;\n"
        "  END LOOP;\n"
        # No "%" in the text: drivers read it as a placeholder's start.
        "  RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = "
        "'celery-claim: the row of ' || p_key || ' changed "
        f"{SETTLE_ROUNDS} times while its claim was settled; try again';\n"
        "END\n"
        "$settle$"
    )


def drop_settle_function(t: sa.Table) -> str:
    """``DROP FUNCTION IF EXISTS`` of the table's settle function (PostgreSQL)."""
    types = ", ".join(type_ for _, type_ in SETTLE_ARGUMENTS)
    return f"DROP FUNCTION IF EXISTS {settle_name(t)}({types})"


def create(table: sa.Table, connection: sa.Connection) -> None:
    """Create ``table``'s settle function (PostgreSQL), after the table."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(settle_function(table))


def drop(table: sa.Table, connection: sa.Connection) -> None:
    """Drop ``table``'s settle function (PostgreSQL), after the table."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(drop_settle_function(table))
