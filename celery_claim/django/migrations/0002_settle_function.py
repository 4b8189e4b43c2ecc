"""The claim's settle function, as ``celery-claim schema`` creates it.

On PostgreSQL the claim statement calls ``<table>_settle`` when a key already
has a row (:mod:`celery_claim.sql_settle`): this migration creates it beside
the table (``CREATE OR REPLACE``, so it also brings an adopted table's up to
date) and drops it when migrated backwards. Other databases have no such
function: the claim there is the acquire alone.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from django.db import migrations

from celery_claim import sql, sql_settle


class CreateSettleFunction(migrations.operations.base.Operation):  # type: ignore[misc]
    """Create (backwards: drop) the claims table's settle function on PostgreSQL."""

    reversible = True
    reduces_to_sql = True

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass  # no model changes

    def _table(self, app_label: str, schema_editor: Any, state: Any) -> sa.Table | None:
        model = state.apps.get_model(app_label, "Claim")
        if schema_editor.connection.vendor != "postgresql" \
                or not self.allow_migrate_model(schema_editor.connection.alias, model):
            return None
        return sql.make_table(model._meta.db_table)

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any,
                          to_state: Any) -> None:
        table = self._table(app_label, schema_editor, to_state)
        if table is not None:
            schema_editor.execute(sql_settle.settle_function(table))

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any,
                           to_state: Any) -> None:
        table = self._table(app_label, schema_editor, from_state)
        if table is not None:
            schema_editor.execute(sql_settle.drop_settle_function(table))

    def describe(self) -> str:
        return "Create the claims table's settle function (PostgreSQL)"


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("celery_claim", "0001_initial")]

    operations = [CreateSettleFunction()]
