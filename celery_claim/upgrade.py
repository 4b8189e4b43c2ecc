"""Bringing a claims table created by an earlier release up to date.

Two kinds of steps, both run by ``celery-claim schema --upgrade``:

**Required** (a worker refuses to start until they are done, so no
completion is ever written in the old form). Release 0.1 kept results as
JSONB (``result jsonb``). Results are now the bytes the app's result
serializer produced, with their content type and encoding (``result bytea``,
``result_content_type``, ``result_content_encoding``; see
:mod:`celery_claim.results`). The upgrade adds the two content columns, turns
``result`` into bytes (each old JSON result as its UTF-8 text; PostgreSQL:
``ALTER COLUMN ... TYPE bytea USING convert_to(result::text, 'UTF8')``;
SQLite keeps any type in any column, so the values are cast), and labels
the old results ``application/json``, ``utf-8``. Old results stay readable:
kombu's json decodes them to the values they were.

**Recommended** (a worker starts and says once that the table can be made
faster; PostgreSQL only). The table now has ``TEXT`` columns where it had
``VARCHAR(n)``, no check constraint on ``state``, and no index on the leases
of running claims: each of them cost every claim some database CPU, and the
index made every completion write new index entries (docs/performance.md).
The upgrade turns the columns into ``TEXT`` (no rewrite: the types are
binary compatible), drops the constraint and drops the index. Nothing about
the rows changes.

A table without the claim's settle function (created before it existed, or
by a tool that creates only the table, such as Alembic) is recommended one
too: the upgrade creates it (:func:`celery_claim.sql_settle.settle_function`;
no lock on the table). Until then a worker claims with the statement of the
releases before it (``claim_conflict``), which costs PostgreSQL more per
first delivery and does the same.

It runs in one transaction (on PostgreSQL under the same advisory lock as
table creation) and is idempotent: a current table is left alone. Run it
with ``celery-claim schema --upgrade`` while no worker of the earlier release
runs (the ``ALTER`` takes a short exclusive lock; the required step rewrites
the table).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

import sqlalchemy as sa

from celery_claim import errors, results, sql_claim, sql_settle
from celery_claim.store import ClaimStore

__all__ = ["check_current", "pending", "upgrade"]

logger = logging.getLogger("celery_claim")

_CONTENT_COLUMNS = {"result_content_type": "TEXT", "result_content_encoding": "TEXT"}
#: What earlier releases named the check on ``state`` and the index on running leases.
_STATE_CHECK = "{table}_state_check"
_LEASE_INDEX = "{table}_running_lease_idx"
#: How long the recommended steps wait for the table's lock before they give up.
LOCK_TIMEOUT = "5s"
_checked: weakref.WeakSet[ClaimStore] = weakref.WeakSet()
_checked_lock = threading.Lock()


def _columns(conn: sa.Connection, table: sa.Table) -> dict[str, Any] | None:
    inspector = sa.inspect(conn)
    if not inspector.has_table(table.name, schema=table.schema):
        return None
    return {c["name"]: c["type"] for c in inspector.get_columns(table.name, schema=table.schema)}


def _required(conn: sa.Connection, table: sa.Table,
              columns: dict[str, Any]) -> list[str]:
    steps = [f"add column {name}" for name in _CONTENT_COLUMNS if name not in columns]
    if conn.dialect.name == "postgresql" and not isinstance(columns.get("result"),
                                                            sa.LargeBinary):
        steps.append("convert result from JSON to bytes")
    elif conn.dialect.name != "postgresql" and steps:
        steps.append("cast the stored JSON results to bytes")
    return steps


def _recommended(conn: sa.Connection, table: sa.Table,
                 columns: dict[str, Any]) -> list[str]:
    if conn.dialect.name != "postgresql":
        return []
    inspector = sa.inspect(conn)
    steps = []
    narrow = sorted(name for name, type_ in columns.items()
                    if isinstance(type_, sa.String) and not isinstance(type_, sa.Text)
                    and type_.length is not None)
    if narrow:
        steps.append(f"make {', '.join(narrow)} text")
    if _STATE_CHECK.format(table=table.name) in {
            c["name"] for c in inspector.get_check_constraints(table.name, schema=table.schema)}:
        steps.append("drop the check constraint on state")
    if _LEASE_INDEX.format(table=table.name) in {
            i["name"] for i in inspector.get_indexes(table.name, schema=table.schema)}:
        steps.append("drop the index on running leases")
    if not has_settle_function(conn, table):
        steps.append("create the claim's settle function")
    return steps


def has_settle_function(conn: sa.Connection, table: sa.Table) -> bool:
    """Whether ``table`` has its settle function (PostgreSQL): the store's
    statement ``has_settle_function``, on ``conn``."""
    return bool(conn.execute(sql_claim.STATEMENTS["has_settle_function"][1](
        table, conn.dialect.name)).scalar())


def _pending(conn: sa.Connection, table: sa.Table) -> tuple[list[str], list[str]]:
    columns = _columns(conn, table)
    if columns is None:
        return [], []  # no table: creating it is the schema's job, not an upgrade's
    return _required(conn, table, columns), _recommended(conn, table, columns)


def pending(store: ClaimStore) -> list[str]:
    """What the upgrade would do to ``store``'s table (empty: it is current)."""
    with store.connector.translate("inspect schema"), store.engine.connect() as conn:
        required, recommended = _pending(conn, store.table)
    return required + recommended


def upgrade(store: ClaimStore) -> list[str]:
    """Upgrade ``store``'s table in one transaction; returns the steps it took."""
    table = store.table
    with store.connector.translate("upgrade schema"), store.engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                         {"name": f"celery_claim:{store.table_name}"})
        required, recommended = _pending(conn, table)
        if required:
            _upgrade_results(conn, table)
        if recommended:
            _upgrade_table(conn, table)
    store.use_claim_statement("claim")
    with _checked_lock:
        _checked.add(store)
    return required + recommended


def _upgrade_results(conn: sa.Connection, table: sa.Table) -> None:
    columns = _columns(conn, table) or {}
    name = conn.dialect.identifier_preparer.format_table(table)
    for column, type_ in _CONTENT_COLUMNS.items():
        if column not in columns:
            conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN {column} {type_}"))
    if conn.dialect.name == "postgresql":
        if not isinstance(columns.get("result"), sa.LargeBinary):
            conn.execute(sa.text(
                f"ALTER TABLE {name} ALTER COLUMN result TYPE bytea "
                f"USING convert_to(result::text, 'UTF8')"))
        converted = "result"
    else:
        converted = "CAST(result AS BLOB)"
    label = (f"UPDATE {name} SET result = {converted}, "  # noqa: S608 - a quoted name
             "result_content_type = :type, result_content_encoding = 'utf-8' "
             "WHERE result IS NOT NULL AND result_content_type IS NULL")
    conn.execute(sa.text(label), {"type": results.JSON})


def _upgrade_table(conn: sa.Connection, table: sa.Table) -> None:
    """TEXT columns, no check constraint, no index on running leases (PostgreSQL).

    The constraint and the index go first: changing the type of ``state``
    would otherwise rebuild the index (its predicate names the column) and
    check the constraint against every row, all under the ALTER's exclusive
    lock. ``VARCHAR(n)`` to ``TEXT`` rewrites nothing. The lock is waited for
    at most :data:`LOCK_TIMEOUT`: a claim queued behind a waiting ALTER would
    wait too, so a busy table fails the upgrade (run it again) rather than
    stall the workers.
    """
    preparer = conn.dialect.identifier_preparer
    name = preparer.format_table(table)
    steps = set(_recommended(conn, table, _columns(conn, table) or {}))
    # Only the steps still to do: an ALTER locks the table even when it
    # changes nothing, and creating the function needs no lock on it.
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    if "drop the check constraint on state" in steps:
        check = preparer.quote(_STATE_CHECK.format(table=table.name))
        conn.execute(sa.text(f"ALTER TABLE {name} DROP CONSTRAINT IF EXISTS {check}"))
    if "drop the index on running leases" in steps:
        index = preparer.quote(_LEASE_INDEX.format(table=table.name))
        schema = f"{preparer.quote_schema(table.schema)}." if table.schema else ""
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {schema}{index}"))
    columns = _columns(conn, table) or {}
    narrow = [column for column, type_ in columns.items()
              if isinstance(type_, sa.String) and not isinstance(type_, sa.Text)
              and type_.length is not None]
    if narrow:
        conn.execute(sa.text(f"ALTER TABLE {name} " + ", ".join(
            f"ALTER COLUMN {preparer.quote(column)} TYPE text" for column in narrow)))
    if not has_settle_function(conn, table):
        conn.exec_driver_sql(sql_settle.settle_function(table))


def check_current(store: ClaimStore) -> None:
    """Raise :class:`ClaimConfigurationError` if ``store``'s table needs
    :func:`upgrade` (checked once per store and process); log once if the
    upgrade is only recommended."""
    if store in _checked:
        return
    from celery_claim.connectors.sqlalchemy import SQLAlchemyConnector

    if not isinstance(store.connector, SQLAlchemyConnector):
        # Another connector checks its table itself (Django: its migrations);
        # all but the settle function, which a table lacks until then.
        if store.connector.dialect == "postgresql":
            found = store._run("inspect", "has_settle_function", {}).first()
            if found is None or not found.found:
                logger.warning(
                    "the claims table %r has no settle function: each claim costs the "
                    "database more until it has (Django: `manage.py migrate celery_claim`; "
                    "otherwise `celery-claim schema --upgrade`)", store.table_name)
                store.use_claim_statement("claim_conflict")
        with _checked_lock:
            _checked.add(store)
        return
    with store.connector.translate("inspect schema"), store.engine.connect() as conn:
        required, recommended = _pending(conn, store.table)
    if required:
        raise errors.ClaimConfigurationError(
            f"the claims table {store.table_name!r} was created by an earlier release of "
            f"celery-claim and must be upgraded: stop the workers of that release, then run "
            f"`celery-claim schema --upgrade` (it would {', '.join(required + recommended)})")
    if recommended:
        logger.warning(
            "the claims table %r was created by an earlier release of celery-claim: "
            "`celery-claim schema --upgrade` makes each claim cheaper for the database "
            "(it would %s; no row changes)", store.table_name, ", ".join(recommended))
    if "create the claim's settle function" in recommended:
        store.use_claim_statement("claim_conflict")
    with _checked_lock:
        _checked.add(store)
