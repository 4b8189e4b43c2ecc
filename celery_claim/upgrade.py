"""Bringing a claims table created by an earlier release up to date.

Release 0.1 kept results as JSONB (``result jsonb``). Results are now the
bytes the app's result serializer produced, with their content type and
encoding (``result bytea``, ``result_content_type``,
``result_content_encoding``; see :mod:`celery_claim.results`). The upgrade:

1. adds the two content columns;
2. turns ``result`` into bytes, each old JSON result as its UTF-8 text
   (PostgreSQL: ``ALTER COLUMN ... TYPE bytea USING convert_to(result::text,
   'UTF8')``; SQLite keeps any type in any column, so the values are cast);
3. labels the old results ``application/json``, ``utf-8``.

Old results stay readable: kombu's json decodes them to the values they were.
It runs in one transaction (on PostgreSQL under the same advisory lock as
table creation) and is idempotent: a current table is left alone. Run it
with ``celery-claim schema --upgrade`` while no worker of the earlier release
runs (the ``ALTER`` takes a short exclusive lock and rewrites the table).

A worker refuses to start against a table that needs it, so no completion is
ever written in the old form.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import sqlalchemy as sa

from celery_claim import errors, results
from celery_claim.store import ClaimStore

__all__ = ["check_current", "pending", "upgrade"]

_CONTENT_COLUMNS = {"result_content_type": "VARCHAR(128)", "result_content_encoding": "VARCHAR(32)"}
_checked: weakref.WeakSet[ClaimStore] = weakref.WeakSet()
_checked_lock = threading.Lock()


def _columns(conn: sa.Connection, table: sa.Table) -> dict[str, Any] | None:
    inspector = sa.inspect(conn)
    if not inspector.has_table(table.name, schema=table.schema):
        return None
    return {c["name"]: c["type"] for c in inspector.get_columns(table.name, schema=table.schema)}


def _pending(conn: sa.Connection, table: sa.Table) -> list[str]:
    columns = _columns(conn, table)
    if columns is None:
        return []  # no table: creating it is the schema's job, not an upgrade's
    steps = [f"add column {name}" for name in _CONTENT_COLUMNS if name not in columns]
    if conn.dialect.name == "postgresql" and not isinstance(columns.get("result"),
                                                            sa.LargeBinary):
        steps.append("convert result from JSON to bytes")
    elif conn.dialect.name != "postgresql" and steps:
        steps.append("cast the stored JSON results to bytes")
    return steps


def pending(store: ClaimStore) -> list[str]:
    """What the upgrade would do to ``store``'s table (empty: it is current)."""
    with store.connector.translate("inspect schema"), store.engine.connect() as conn:
        return _pending(conn, store.table)


def upgrade(store: ClaimStore) -> list[str]:
    """Upgrade ``store``'s table in one transaction; returns the steps it took."""
    table = store.table
    with store.connector.translate("upgrade schema"), store.engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                         {"name": f"celery_claim:{store.table_name}"})
        steps = _pending(conn, table)
        if not steps:
            return []
        columns = _columns(conn, table) or {}
        name = conn.dialect.identifier_preparer.format_table(table)
        for column, type_ in _CONTENT_COLUMNS.items():
            if column not in columns:
                conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN {column} {type_}"))
        if postgres:
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
    with _checked_lock:
        _checked.add(store)
    return steps


def check_current(store: ClaimStore) -> None:
    """Raise :class:`ClaimConfigurationError` if ``store``'s table needs
    :func:`upgrade` (checked once per store and process)."""
    if store in _checked:
        return
    from celery_claim.connectors.sqlalchemy import SQLAlchemyConnector

    if not isinstance(store.connector, SQLAlchemyConnector):
        return  # another connector checks its table itself (Django: its migrations)
    steps = pending(store)
    if steps:
        raise errors.ClaimConfigurationError(
            f"the claims table {store.table_name!r} was created by an earlier release of "
            f"celery-claim and must be upgraded: stop the workers of that release, then run "
            f"`celery-claim schema --upgrade` (it would {', '.join(steps)})")
    with _checked_lock:
        _checked.add(store)
