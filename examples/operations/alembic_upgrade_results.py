"""Alembic: the claims table's result columns of release 0.2, as a migration step.

Call it from a migration's ``upgrade()``, as ``celery-claim schema --upgrade``
would do it (PostgreSQL):

    from alembic import op

    def upgrade() -> None:
        upgrade_claim_results(op)
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def upgrade_claim_results(op: Any, table: str = "celery_claims") -> None:
    """Results as the serializer's bytes with their content type (was JSONB)."""
    op.add_column(table, sa.Column("result_content_type", sa.String(128)))
    op.add_column(table, sa.Column("result_content_encoding", sa.String(32)))
    op.alter_column(table, "result", type_=sa.LargeBinary(),
                    postgresql_using="convert_to(result::text, 'UTF8')")
    op.execute(sa.text(
        f"UPDATE {table} SET result_content_type = 'application/json', "  # noqa: S608
        "result_content_encoding = 'utf-8' WHERE result IS NOT NULL"))
