"""The claim: the acquire with the duplicate's count beside it, for one
delivery or many, and the coalesced completion.

``claim`` is the statement every delivery runs (:func:`_claim`): it inserts
the claim, or (when the key has a row) calls the table's *settle function*
(:func:`celery_claim.sql_settle.settle_function`), which takes the row over or counts the duplicate
and reads the row it lost to: one round trip either way. ``claim_conflict``
is the same in one ``INSERT .. ON CONFLICT DO UPDATE`` with the duplicate's
branch beside it (:func:`_claim_conflict`), for a table created before the
function existed. ``lost_to`` and ``note_duplicate`` are the duplicate's
branch on its own.

When several threads of one worker process claim (or complete) at the same
moment, :mod:`celery_claim.coalesce` sends their calls as one of these
statements, so they share one round trip and one commit, as group commit
does. Each row follows exactly the rule of the one-row statement it stands
for (:func:`celery_claim.sql._takes`, the fencing by token): the input is a
JSON array of one object per delivery, read as one row per delivery.

On SQLite ``claim`` is the acquire alone, and the coalesced names build the
one-row statements (never coalesced there).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from celery_claim import sql, sql_settle
from celery_claim.sql import RUNNING, Builder, _p, db_now, db_now_plus

# --- one delivery ------------------------------------------------------------


def _count_duplicate(t: sa.Table, where: Any, *verdict: Any) -> Any:
    """Count a duplicate on the rows ``where`` picks, returning each with ``verdict``.

    An UPDATE, not a read: it sees the row's newest version (the one an
    acquire's conflict check saw) rather than the statement's snapshot.
    """
    return sa.update(t).where(where).values(duplicates=t.c.duplicates + 1) \
        .returning(*sql._record_columns(t), *verdict)


def _note_duplicate(t: sa.Table, dialect: str, *verdict: Any) -> Any:
    columns = list(verdict)
    if dialect == "postgresql":
        columns.append(_quick_commit())
    return _count_duplicate(t, t.c.key == _p("key"), *columns)


def _quick_commit() -> Any:
    """Evaluated only for a row a duplicate's count updated: a transaction that
    wrote nothing else commits without waiting for its WAL flush
    (docs/guarantees.md). Never inside a caller's transaction, which the
    setting would outlive the statement into (``own_transaction``)."""
    quick = sa.func.set_config(sa.literal_column("'synchronous_commit'"),
                               sa.literal_column("'off'"), sa.true())
    return sa.case((_p("own_transaction", sa.Boolean), quick)).label("quick_commit")


def _lost_to(t: sa.Table, dialect: str) -> Any:
    takes, mismatch = sql._takes(t, digest=_p("payload_digest", sa.String),
                                 task_id=_p("task_id", sa.String), now=db_now())
    return _note_duplicate(t, dialect, takes.label("takeable"), mismatch.label("mismatch"))


def _row(t: sa.Table) -> Any:
    """The whole row ``t`` as JSON (PostgreSQL): one value, where its columns
    one by one would widen every branch of the statement."""
    name = postgresql.dialect().identifier_preparer.quote(t.name)  # type: ignore[no-untyped-call]
    # "t".* rather than "t": a table named like one of its columns would
    # otherwise give the column.
    return sa.func.row_to_json(sa.literal_column(f"{name}.*"))


def _row_json(t: sa.Table) -> Any:
    """:func:`_row` as JSON text."""
    return sa.cast(_row(t), sa.Text)


def _lost_columns(t: sa.Table, *, verdict: bool = True) -> list[Any]:
    """What the claim returns about the row a duplicate lost to (PostgreSQL):
    its token and attempt, the row as JSON, the database's clock, the
    mismatch verdict (unless ``verdict`` is false) and ``quick_commit``."""
    _, mismatch = sql._takes(t, digest=_p("payload_digest", sa.String),
                             task_id=_p("task_id", sa.String), now=db_now())
    return [t.c.token, t.c.attempt, _row_json(t).label("record"), db_now().label("db_now"),
            *([mismatch.label("mismatch")] if verdict else []), _quick_commit()]


def _claim_conflict(t: sa.Table, dialect: str, *, verdict: bool = True,
                    count: bool = True) -> sa.Executable:
    """Acquire, or (on PostgreSQL) count the duplicate and read the row it lost
    to, in one statement; on SQLite the acquire alone (:func:`_lost_to` follows).
    What ``claim`` was before the settle function, and still is for a table
    without it (:func:`celery_claim.upgrade.check_current`).

    The lost branch (:func:`_count_duplicate`) sees the row the conflict
    check locked, and returns it as one JSON column (``record``): a first
    delivery, whose branch is the other one, gets three columns back, and
    PostgreSQL sets up four output columns per branch instead of two dozen.
    A row inserted after the statement's snapshot is invisible to it: then
    the statement returns nothing and the caller runs ``lost_to``.

    ``verdict=False`` leaves the ``mismatch`` column out of the lost branch,
    and ``count=False`` makes the branch a locking read of the row instead of
    the count's ``UPDATE``: only for the benchmarks' not-adopted variants
    (``no_verdict`` in the schema suite, ``claim_read`` in
    ``benchmarks.claim_parts``), which measure what a first delivery pays.
    """
    if dialect != "postgresql":
        return sql._acquire(t, dialect)
    won = sql._insert(t, dialect).returning(t.c.token, t.c.attempt).cte("won")
    # Beside the acquire that just refused the row: it evaluated the rule on
    # this very version, locked it, at the same statement time: not takeable.
    returned = _lost_columns(t, verdict=verdict)
    where = (t.c.key == _p("key"), ~sa.exists(sa.select(1).select_from(won)))
    lost = (sa.update(t).where(*where).values(duplicates=t.c.duplicates + 1)
            .returning(*returned).cte("lost") if count
            else sa.select(*returned).where(*where).with_for_update().cte("lost"))
    others = [c for c in lost.c if c.name not in ("token", "attempt")]
    return sa.union_all(
        sa.select(sa.false().label("won"), lost.c.token, lost.c.attempt, *others),
        sa.select(sa.true(), won.c.token, won.c.attempt, *[sa.null() for _ in others]),
    )


def _claim(t: sa.Table, dialect: str) -> sa.Executable:
    """Insert the claim; or, when the key has a row, settle it
    (:func:`celery_claim.sql_settle.settle_function`): in one statement on PostgreSQL. On SQLite the
    acquire alone (:func:`_lost_to` follows).

    Returns ``token`` and ``attempt`` of an inserted row, or ``settled``,
    the function's answer (:meth:`celery_claim.records.Lost.settled`). ``ON CONFLICT DO NOTHING``
    waits for a conflicting row's transaction and then leaves the row to
    the function, whose statements see it (each takes a new snapshot).
    """
    if dialect != "postgresql":
        return sql._acquire(t, dialect)
    won = sql._new_claim(t, dialect).on_conflict_do_nothing(index_elements=[t.c.key]) \
        .returning(t.c.token, t.c.attempt).cte("won")
    one = sa.select(sa.null().label("one")).subquery("one")
    return sa.select(
        won.c.token, won.c.attempt,
        sa.case((won.c.token.is_(None), sql_settle.settle_call(t))).label("settled"),
    ).select_from(one.outerjoin(won, sa.true()))


# --- the lease -----------------------------------------------------------------


def _renew(t: sa.Table, dialect: str) -> sa.Executable:
    # The (key, token) pairs come as two lists, element by element: a fixed
    # statement whatever their number (arrays here, JSON arrays on SQLite).
    held: Any
    if dialect == "postgresql":
        pairs = sa.func.unnest(_p("keys", postgresql.ARRAY(sa.Text)),
                               _p("tokens", postgresql.ARRAY(sa.BigInteger))
                               ).table_valued("key", "token").render_derived()
        held = sa.tuple_(t.c.key, t.c.token).in_(sa.select(pairs.c.key, pairs.c.token))
    else:
        keys = sa.func.json_each(_p("keys", sa.JSON)).table_valued("key", "value")
        held = sa.exists().where(
            keys.c.value == t.c.key,
            sa.func.json_extract(_p("tokens", sa.JSON), "$[" + keys.c.key + "]") == t.c.token)
    return (
        sa.update(t)
        .where(t.c.state == RUNNING, held)
        .values(lease_expires_at=db_now_plus(_p("lease_seconds", sa.Float)), updated_at=db_now())
        .returning(t.c.key, t.c.token)
    )


# --- many deliveries ---------------------------------------------------------

__all__ = ["STATEMENTS"]


def _batch(*columns: tuple[str, Any]) -> Any:
    """One row per object of the JSON array in the ``batch`` parameter:
    ``(column, type)``, each column an object's field of that name.

    One text parameter rather than an array per column: the client writes it
    with the standard library's JSON encoder, where adapting an array per
    column costs Python per element (about twice the client CPU per batch:
    ``python -m benchmarks.batch_params``).
    """
    return sa.func.json_to_recordset(sa.cast(_p("batch", sa.Text), postgresql.JSON)) \
        .table_valued(*(sa.column(name, type_) for name, type_ in columns)) \
        .render_derived(name="delivery", with_types=True)


def _keys(t: sa.Table) -> Any:
    """The batch's keys again, as an array the primary key is searched with:
    the plan reads those rows by the index whatever the table's size and
    statistics were when PostgreSQL cached it (a function's rows are
    estimated at a hundred, and a join with them can be planned as a scan
    of the whole index, which grows with the table)."""
    return t.c.key == sa.any_(_p("keys", postgresql.ARRAY(sa.Text)))


def _claim_many(t: sa.Table, dialect: str) -> sa.Executable:
    """``claim`` for many keys (distinct, sorted: rows are locked in key order,
    so two processes' statements cannot deadlock on each other)."""
    if dialect != "postgresql":
        return _claim_conflict(t, dialect)
    # Once, as a CTE: the INSERT and the duplicates' UPDATE both read it.
    d = sa.select(_batch(("key", sa.Text), ("task_name", sa.Text), ("task_id", sa.Text),
                         ("owner", sa.Text), ("payload_digest", sa.Text),
                         ("lease_seconds", sa.Float), ("ttl_seconds", sa.Float))).cte("d").c
    rows = sa.select(
        d.key, sa.literal(RUNNING, sa.String), sa.literal(1, sa.BigInteger), d.task_name,
        d.task_id, sa.literal(1, sa.Integer), d.owner, d.payload_digest,
        sa.literal(0, sa.Integer), db_now_plus(d.lease_seconds),
        db_now_plus(d.lease_seconds + d.ttl_seconds), db_now(), db_now(),
    ).order_by(d.key)
    insert = postgresql.insert(t).from_select(
        ["key", "state", "token", "task_name", "task_id", "attempt", "owner", "payload_digest",
         "duplicates", "lease_expires_at", "expires_at", "created_at", "updated_at"], rows)
    won = sql._take_over(t, insert).returning(t.c.key, t.c.token, t.c.attempt).cte("won")
    _, mismatch = sql._takes(t, digest=d.payload_digest, task_id=d.task_id, now=db_now())
    # As in ``claim``: the rows the INSERT refused, beside it, at the same
    # statement time; it locked them, so none is takeable now.
    lost = _count_duplicate(t, sa.and_(_keys(t), t.c.key == d.key,
                                       t.c.key.not_in(sa.select(won.c.key))),
                            sa.false().label("takeable"), mismatch.label("mismatch")).cte("lost")
    others = [c for c in lost.c if c.name not in ("key", "token", "attempt")]
    return sa.union_all(
        sa.select(sa.false().label("won"), lost.c.key, lost.c.token, lost.c.attempt, *others),
        sa.select(sa.true(), won.c.key, won.c.token, won.c.attempt, *[sa.null() for _ in others]),
    )


def _complete_many(t: sa.Table, dialect: str) -> sa.Executable:
    """``complete`` and ``complete_with_result`` for many claims, each fenced
    by its token; returns the keys completed."""
    if dialect != "postgresql":
        return sql.STATEMENTS["complete_with_result"][1](t, dialect)
    d = _batch(("key", sa.Text), ("token", sa.BigInteger), ("state", sa.Text),
               ("error", sa.Text), ("ttl_seconds", sa.Float), ("result", sa.Text),
               ("result_content_type", sa.Text), ("result_content_encoding", sa.Text)).c
    return (
        sa.update(t)
        .where(_keys(t), t.c.key == d.key, t.c.token == d.token, t.c.state == RUNNING)
        # The result's bytes travel as hexadecimal text inside the JSON.
        .values(state=d.state, error=d.error,
                result=sa.func.decode(d.result, sa.literal_column("'hex'")),
                result_content_type=d.result_content_type,
                result_content_encoding=d.result_content_encoding,
                lease_expires_at=sa.null(), updated_at=db_now(), finished_at=db_now(),
                expires_at=sql.kept_until(t, d.ttl_seconds))
        .returning(t.c.key, t.c.token)
    )


def _has_settle_function(t: sa.Table, dialect: str) -> sa.Executable:
    """Whether the table's settle function exists (``found``; always on SQLite)."""
    if dialect != "postgresql":  # one row, whatever the table holds
        return sa.select(sa.true().label("found")).select_from(
            sa.select(sa.func.count()).select_from(t).subquery())
    types = ", ".join(type_ for _, type_ in sql_settle.SETTLE_ARGUMENTS)
    signature = f"{sql_settle.settle_name(t)}({types})".replace("'", "''")
    return sa.select(sa.func.to_regprocedure(sa.literal_column(f"'{signature}'"))
                     .is_not(None).label("found"))


#: The claim's statements by name: (description, builder).
STATEMENTS: dict[str, tuple[str, Builder]] = {
    "renew": ("fenced heartbeat: extend the leases of many running claims at once", _renew),
    "claim": ("insert the claim, or settle an existing row in the table's settle function "
              "(take it over, or count the duplicate and read the row it lost to with the "
              "acquire's verdict on it), in one statement (PostgreSQL; SQLite: the acquire)",
              _claim),
    "claim_conflict": ("acquire, or count the duplicate and read the row it lost to with the "
                       "acquire's verdict on it, in one statement without the settle function "
                       "(PostgreSQL; SQLite: the acquire)", _claim_conflict),
    "has_settle_function": ("whether the table's settle function exists (PostgreSQL; "
                            "a table made before it, or by a tool that made the table only, "
                            "has none until the upgrade)", _has_settle_function),
    "lost_to": ("count a duplicate delivery and read the row it lost to, with the "
                "acquire's verdict on it (may it take the row; other arguments)", _lost_to),
    "note_duplicate": ("count a duplicate delivery and read the row it lost to",
                       _note_duplicate),
    "claim_many": ("claim for many distinct keys in one statement: each row by claim's "
                   "rule, rows locked in key order (PostgreSQL)", _claim_many),
    "complete_many": ("fenced completion of many claims in one statement, with or without "
                      "their results (PostgreSQL)", _complete_many),
}
