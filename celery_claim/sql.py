"""The claims table and every statement celery-claim runs against it.

This module and its two companions (:mod:`celery_claim.sql_claim`, the claim
with its duplicate path and the coalesced forms; :mod:`celery_claim.sql_operations`,
the operators') are the only ones that know SQL dialects. Each statement has a name
and a one-line description in :data:`STATEMENTS`; the store asks for them by
name (:class:`~celery_claim.statements.Statements`). All times come from the
database clock.

:mod:`celery_claim.statements` builds them for one table, as SQLAlchemy
constructs and, compiled for a driver, as plain SQL text with parameter
names; connectors (:mod:`celery_claim.connectors`) run them.

PostgreSQL is the production target. SQLite gives the same semantics for the
demo and for tests that need no server (it serialises writers, so the
statements below are just as atomic there). Its clock is a function each
connection registers (:func:`install_sqlite_clock`), so tests can move it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from celery_claim import errors

__all__ = [
    "DEFAULT_TABLE",
    "MAX_KEY_LENGTH",
    "STATEMENTS",
    "ddl",
    "install_sqlite_clock",
    "make_table",
    "metadata",
    "parse_table_name",
]

DEFAULT_TABLE = "celery_claims"
MAX_KEY_LENGTH = 512

# Claim states. ``running`` is the only one with a lease.
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
RELEASED = "released"
STATES = (RUNNING, SUCCEEDED, FAILED, RELEASED)
#: The columns of a stored result: the encoded bytes, their content type and encoding.
RESULT_COLUMNS = ("result", "result_content_type", "result_content_encoding")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def parse_table_name(name: str) -> tuple[str | None, str]:
    """Split ``"schema.table"`` into its parts, validating both identifiers."""
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise errors.ClaimConfigurationError(
            "claim_table must be a plain identifier or 'schema.table' (letters, digits, "
            "underscores; at most 63 characters each)",
            claim_table=name,
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def make_table(name: str = DEFAULT_TABLE, meta: sa.MetaData | None = None) -> sa.Table:
    """Build the claims table (and its index) in ``meta``.

    Text columns are ``TEXT``, not ``VARCHAR(n)``, and ``state`` has no check
    constraint: on PostgreSQL each costs every statement that writes a row
    (a length coercion per column; the constraint's expression, read from the
    catalog on every execution), and the values come from this package alone
    (keys are at most :data:`MAX_KEY_LENGTH`, checked when they are built).
    The one secondary index serves the purge. Listing stale claims scans the
    table instead: an index that tells running rows from finished ones would
    make every completion write new index entries (docs/performance.md,
    "HOT completions").
    """
    schema, table_name = parse_table_name(name)
    meta = meta if meta is not None else sa.MetaData()
    stamp = sa.DateTime(timezone=True)
    table = sa.Table(
        table_name,
        meta,
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("token", sa.BigInteger, nullable=False),
        sa.Column("task_name", sa.Text, nullable=False),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("payload_digest", sa.Text),
        # The result as the app's result serializer encoded it (see
        # celery_claim.results): the exact bytes, so a duplicate's replay
        # encodes identically; JSON results read as text.
        sa.Column("result", sa.LargeBinary),
        sa.Column("result_content_type", sa.Text),
        sa.Column("result_content_encoding", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("duplicates", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_expires_at", stamp),
        sa.Column("created_at", stamp, nullable=False),
        sa.Column("updated_at", stamp, nullable=False),
        sa.Column("finished_at", stamp),
        # Set when the claim is acquired (its lease and claim_ttl_seconds
        # beyond it) and moved later only if the claim finishes past that
        # lease, so a completion changes no indexed column (a HOT update).
        sa.Column("expires_at", stamp),
        schema=schema,
    )
    # Purge walks finished rows by expiry.
    sa.Index(f"{table_name}_expires_idx", table.c.expires_at,
             postgresql_where=table.c.expires_at.isnot(None))
    # The claim's settle function (PostgreSQL) comes and goes with the table.
    sa.event.listen(table, "after_create", _settle("create"))
    sa.event.listen(table, "after_drop", _settle("drop"))
    return table


def _settle(event: str) -> Callable[..., None]:
    def run(target: sa.Table, connection: sa.Connection, **kw: Any) -> None:
        from celery_claim import sql_settle  # it builds on this module

        getattr(sql_settle, event)(target, connection)
    return run


def ddl(table: sa.Table, dialect: str) -> str:
    """The CREATE statements of ``table`` and its indexes on ``dialect``, and
    on PostgreSQL of the claim's settle function
    (:func:`celery_claim.sql_settle.settle_function`)."""
    compiler = {"postgresql": postgresql.dialect, "sqlite": sqlite.dialect}[dialect]()
    parts = [str(sa.schema.CreateTable(table).compile(dialect=compiler)).strip()]
    parts += [str(sa.schema.CreateIndex(ix).compile(dialect=compiler)).strip()
              for ix in sorted(table.indexes, key=lambda ix: ix.name or "")]
    if dialect == "postgresql":
        from celery_claim import sql_settle

        parts.append(sql_settle.settle_function(table))
    return ";\n\n".join(parts) + ";\n"


#: The default table in its own ``MetaData``, for Alembic's ``target_metadata``.
metadata = sa.MetaData()
claims = make_table(DEFAULT_TABLE, metadata)


# --- the database clock ----------------------------------------------------

class db_now(FunctionElement[Any]):
    """The database's current time (statement time on PostgreSQL)."""

    type = sa.DateTime(timezone=True)
    inherit_cache = True


class db_now_plus(FunctionElement[Any]):
    """The database's current time plus a number of seconds (a bound value)."""

    type = sa.DateTime(timezone=True)
    inherit_cache = True


@compiles(db_now, "postgresql")
def _pg_now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    # statement_timestamp(), not now(): inside the atomic() transaction now()
    # is the transaction's start, which would make completions look early.
    return "statement_timestamp()"


@compiles(db_now_plus, "postgresql")
def _pg_now_plus(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(next(iter(element.clauses)), **kw)
    return f"(statement_timestamp() + make_interval(secs => {seconds}))"


#: The SQL function that is SQLite's clock here: Unix time in seconds.
SQLITE_CLOCK = "celery_claim_now"


def install_sqlite_clock(dbapi_connection: Any,
                         clock: Callable[[], float] = time.time) -> None:
    """Register :data:`SQLITE_CLOCK` on a ``sqlite3`` connection.

    ``clock`` is what SQLite's ``'now'`` would be (the process's wall clock,
    :func:`time.time`); a test passes one it can move forward.
    """
    dbapi_connection.create_function(SQLITE_CLOCK, 0, clock)


# SQLite keeps timestamps as text; this format sorts correctly and is the one
# SQLAlchemy reads back ("YYYY-MM-DD HH:MM:SS.ffffff", UTC).
@compiles(db_now, "sqlite")
def _sqlite_now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(strftime('%Y-%m-%d %H:%M:%f', {SQLITE_CLOCK}(), 'unixepoch') || '000')"


@compiles(db_now_plus, "sqlite")
def _sqlite_now_plus(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(next(iter(element.clauses)), **kw)
    return (f"(strftime('%Y-%m-%d %H:%M:%f', {SQLITE_CLOCK}(), 'unixepoch', "
            f"printf('%+.6f seconds', {seconds})) || '000')")


class time_plus(FunctionElement[Any]):
    """A stored time plus a number of seconds: ``time_plus(column, seconds)``."""

    type = sa.DateTime(timezone=True)
    inherit_cache = True


@compiles(time_plus, "postgresql")
def _pg_time_plus(element: time_plus, compiler: SQLCompiler, **kw: Any) -> str:
    stored, seconds = (compiler.process(c, **kw) for c in element.clauses)
    return f"({stored} + make_interval(secs => {seconds}))"


@compiles(time_plus, "sqlite")
def _sqlite_time_plus(element: time_plus, compiler: SQLCompiler, **kw: Any) -> str:
    stored, seconds = (compiler.process(c, **kw) for c in element.clauses)
    return (f"(strftime('%Y-%m-%d %H:%M:%f', {stored}, printf('%+.6f seconds', {seconds}))"
            " || '000')")


class has_value(FunctionElement[Any]):
    """``column IS NOT NULL``, spelled so that SQLite's RETURNING gets it right."""

    type = sa.Boolean()
    inherit_cache = True


@compiles(has_value)
def _has_value(element: has_value, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(next(iter(element.clauses)), **kw)} IS NOT NULL)"


@compiles(has_value, "sqlite")
def _sqlite_has_value(element: has_value, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite 3.40 evaluates "col IS NULL" wrongly in UPDATE ... RETURNING.
    return f"(typeof({compiler.process(next(iter(element.clauses)), **kw)}) <> 'null')"


# --- statements -------------------------------------------------------------

def _p(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    # Parameters are named p_<name>: SQLAlchemy reserves column names in SET.
    return sa.bindparam(f"p_{name}", type_=type_)


def _is_null(value: Any) -> Any:
    return sa.not_(has_value(value))


def _takes(t: sa.Table, *, digest: Any, task_id: Any, now: Any) -> tuple[Any, Any]:
    """The acquire's rule, defined once: (may this delivery take the row ``t``,
    does it carry other arguments than the row's job).

    ``digest`` and ``task_id`` are the delivery's. The first is the acquire's
    ``WHERE``; ``lost_to`` (:mod:`celery_claim.sql_claim`) returns both as the verdict on the row a
    delivery lost to, so Python never re-derives them.
    """
    acquirable = sa.or_(
        t.c.state == RELEASED,
        sa.and_(t.c.state == FAILED, _p("retry_failed", sa.Boolean)),
        sa.and_(t.c.state == RUNNING, t.c.lease_expires_at < now),
    )
    same_payload = sa.or_(
        sa.not_(_p("check_payload", sa.Boolean)),
        _is_null(t.c.payload_digest),
        _is_null(digest),
        t.c.payload_digest == digest,
        # The same message again (a retry with new arguments): not another job.
        t.c.task_id == task_id,
    )
    # A running claim never expires: only its lease lapses.
    expired = sa.and_(has_value(t.c.expires_at), t.c.expires_at < now, t.c.state != RUNNING)
    return sa.or_(expired, sa.and_(acquirable, same_payload)), \
        sa.and_(sa.not_(expired), sa.not_(same_payload))


def _insert(t: sa.Table, dialect: str) -> Any:
    return _take_over(t, _new_claim(t, dialect))


def _new_claim(t: sa.Table, dialect: str) -> Any:
    """The INSERT of a new claim, with no conflict clause yet."""
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(t).values(
        key=_p("key"), state=RUNNING, token=1, task_name=_p("task_name"), task_id=_p("task_id"),
        attempt=1, owner=_p("owner"), payload_digest=_p("payload_digest"), duplicates=0,
        lease_expires_at=db_now_plus(_p("lease_seconds", sa.Float)),
        expires_at=db_now_plus(_p("lease_seconds", sa.Float) + _p("ttl_seconds", sa.Float)),
        created_at=db_now(), updated_at=db_now(),
    )


def _take_over(t: sa.Table, stmt: Any) -> Any:
    """``stmt``, an INSERT of new claims, taking over the existing rows it may take."""
    x = stmt.excluded
    now = db_now()
    # Who may take an existing row. Timeline of the race this prevents:
    #   worker A: INSERT .. ON CONFLICT .. WHERE (acquirable) -> row back, token 7
    #   worker B: INSERT .. ON CONFLICT .. WHERE (acquirable) -> waits on A's row
    #             lock, re-evaluates WHERE against A's committed row -> no row back
    # The decision and the write are one statement; PostgreSQL serialises it.
    takes, _ = _takes(t, digest=x.payload_digest, task_id=x.task_id, now=now)
    return stmt.on_conflict_do_update(
        index_elements=[t.c.key],
        set_={
            "state": RUNNING, "token": t.c.token + 1, "task_name": x.task_name,
            "task_id": x.task_id, "attempt": t.c.attempt + 1, "owner": x.owner,
            "payload_digest": x.payload_digest, **{c: sa.null() for c in RESULT_COLUMNS},
            "error": sa.null(),
            "lease_expires_at": x.lease_expires_at, "updated_at": now,
            "finished_at": sa.null(), "expires_at": x.expires_at,
        },
        where=takes,
    )


def kept_until(t: sa.Table, ttl_seconds: Any) -> Any:
    """``expires_at`` of a claim that finishes now: ``ttl_seconds`` from now.

    Except that the expiry its acquire set (the end of its first lease plus
    the TTL) stands when it lies between now plus ``ttl_seconds`` and the
    current lease's end plus ``ttl_seconds``: the usual case, a claim that
    finished within its first lease, kept at most the rest of that lease
    longer. Then the value does not change, and the completion is a HOT
    update: PostgreSQL writes no index entry for it.
    """
    now_plus = db_now_plus(ttl_seconds)
    stands = sa.and_(t.c.expires_at >= now_plus,
                     t.c.expires_at <= time_plus(t.c.lease_expires_at, ttl_seconds))
    return sa.case((stands, t.c.expires_at), else_=now_plus)


def _acquire(t: sa.Table, dialect: str) -> sa.Executable:
    acquire: sa.Executable = _insert(t, dialect).returning(t.c.token, t.c.attempt)
    return acquire


def _record_columns(t: sa.Table) -> list[Any]:
    return [*t.c, has_value(t.c.result).label("has_result"), db_now().label("db_now")]


def _get(t: sa.Table, dialect: str) -> sa.Executable:
    return sa.select(*_record_columns(t)).where(t.c.key == _p("key"))


def _complete(t: sa.Table, dialect: str, *, with_result: bool) -> sa.Executable:
    values: dict[str, Any] = {
        "state": _p("state"), "error": _p("error"), "lease_expires_at": sa.null(),
        "updated_at": db_now(), "finished_at": db_now(),
        "expires_at": kept_until(t, _p("ttl_seconds", sa.Float)),
    }
    for column in RESULT_COLUMNS:
        values[column] = _p(column, t.c[column].type) if with_result else sa.null()
    return (
        sa.update(t)
        .where(t.c.key == _p("key"), t.c.token == _p("token"), t.c.state == RUNNING)
        .values(**values)
        .returning(t.c.token)
    )


def _release(t: sa.Table, dialect: str) -> sa.Executable:
    return (
        sa.update(t)
        .where(t.c.key == _p("key"), t.c.token == _p("token"), t.c.state == RUNNING)
        .values(state=RELEASED, error=_p("error"), lease_expires_at=sa.null(),
                updated_at=db_now(), expires_at=kept_until(t, _p("ttl_seconds", sa.Float)))
        .returning(t.c.token)
    )


Builder = Callable[[sa.Table, str], sa.Executable]

#: Every statement by name: (description, builder).
STATEMENTS: dict[str, tuple[str, Builder]] = {
    "acquire": ("claim a key in one statement: insert, or take over a released, failed "
                "(when retried), lease-lapsed or expired row", _acquire),
    "get": ("read one claim row with the database's current time", _get),
    "complete_with_result": ("fenced completion that stores the task's result",
                             lambda t, d: _complete(t, d, with_result=True)),
    "complete": ("fenced completion without a result (failures, unstorable results)",
                 lambda t, d: _complete(t, d, with_result=False)),
    "release": ("fenced release: the holder gives the claim back", _release),
}
