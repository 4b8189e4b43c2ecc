"""Alembic: the claims table of release 0.1 brought to release 0.2, as a migration step.

Call it from a migration's ``upgrade()``, as ``celery-claim schema --upgrade``
would do it (PostgreSQL):

    from alembic import op

    def upgrade() -> None:
        upgrade_claim_results(op)
        upgrade_claims_table(op)
        create_settle_function(op)
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from celery_claim import sql, sql_settle

#: The columns release 0.1 made VARCHAR(n); they are TEXT now.
TEXT_COLUMNS = ("key", "state", "task_name", "task_id", "owner", "payload_digest")


def upgrade_claim_results(op: Any, table: str = "celery_claims") -> None:
    """Results as the serializer's bytes with their content type (was JSONB)."""
    op.add_column(table, sa.Column("result_content_type", sa.Text()))
    op.add_column(table, sa.Column("result_content_encoding", sa.Text()))
    op.alter_column(table, "result", type_=sa.LargeBinary(),
                    postgresql_using="convert_to(result::text, 'UTF8')")
    op.execute(sa.text(
        f"UPDATE {table} SET result_content_type = 'application/json', "  # noqa: S608
        "result_content_encoding = 'utf-8' WHERE result IS NOT NULL"))


def upgrade_claims_table(op: Any, table: str = "celery_claims") -> None:
    """TEXT columns, no check on ``state``, no index on running leases: each
    cost every claim some database CPU (no row changes, no table rewrite).

    The constraint and the index go first, so that changing the type of
    ``state`` neither rebuilds the index nor checks every row under the
    exclusive lock; and the lock is waited for five seconds at most, so that
    a busy table fails the migration (run it again) instead of holding up
    every claim queued behind it.
    """
    op.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
    op.execute(sa.text(f'ALTER TABLE {table} DROP CONSTRAINT IF EXISTS "{table}_state_check"'))
    op.execute(sa.text(f'DROP INDEX IF EXISTS "{table}_running_lease_idx"'))
    for column in TEXT_COLUMNS:
        op.alter_column(table, column, type_=sa.Text())


def create_settle_function(op: Any, table: str = "celery_claims") -> None:
    """The claim's settle function, which the claim statement calls when a key
    already has a row (``CREATE OR REPLACE``: no lock on the table)."""
    op.execute(sa.text(sql_settle.settle_function(sql.make_table(table))))
