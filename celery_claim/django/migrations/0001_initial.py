"""The claims table, as ``celery-claim schema`` creates it.

On PostgreSQL the table and its partial index are created by the DDL below,
so the table is the one :func:`celery_claim.sql.make_table` describes (a
test compares the two in PostgreSQL's catalog). On other databases Django
creates the model's table.

As for any app, the table is created on the database ``migrate`` runs on
(``--database``, default ``"default"``) where the project's routers allow
the ``celery_claim`` app (:class:`celery_claim.django.routers.ClaimRouter`
allows it on the claim's alias only). A table that already
exists (made by ``celery-claim schema --apply``, by a worker with
``claim_create_schema``, or by Alembic) is adopted with
``manage.py migrate celery_claim --fake-initial``; one made by an earlier
release is then brought up to date with ``celery-claim schema --upgrade``.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models

from celery_claim.django import conf
from celery_claim.django.models import STATE_CHOICES

TABLE = conf.table_name()

#: The DDL of ``celery-claim schema`` (PostgreSQL), with the table's name as {table}.
POSTGRESQL_DDL = (
    """CREATE TABLE "{table}" (
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    token BIGINT NOT NULL,
    task_name TEXT NOT NULL,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    owner TEXT NOT NULL,
    payload_digest TEXT,
    result BYTEA,
    result_content_type TEXT,
    result_content_encoding TEXT,
    error TEXT,
    duplicates INTEGER DEFAULT '0' NOT NULL,
    lease_expires_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    finished_at TIMESTAMP WITH TIME ZONE,
    expires_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (key)
)""",
    """CREATE INDEX "{table}_expires_idx" ON "{table}" (expires_at)
    WHERE expires_at IS NOT NULL""",
)


class CreateClaimsTable(migrations.CreateModel):  # type: ignore[misc]
    """``CreateModel`` whose PostgreSQL table is ``celery-claim schema``'s.

    Still a ``CreateModel``, so ``migrate --fake-initial`` recognises an
    existing table and records the migration without touching it.
    """

    def _applies(self, app_label: str, schema_editor: Any, state: Any) -> Any:
        model = state.apps.get_model(app_label, self.name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return None
        return model

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any,
                          to_state: Any) -> None:
        model = self._applies(app_label, schema_editor, to_state)
        if model is None:
            return
        if schema_editor.connection.vendor != "postgresql":
            schema_editor.create_model(model)
            return
        for statement in POSTGRESQL_DDL:
            schema_editor.execute(statement.format(table=model._meta.db_table))

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any,
                           to_state: Any) -> None:
        model = self._applies(app_label, schema_editor, from_state)
        if model is not None:
            schema_editor.delete_model(model)

    def describe(self) -> str:
        return f"Create the claims table {TABLE}"


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        CreateClaimsTable(
            name="Claim",
            fields=[
                ("key", models.TextField(primary_key=True, serialize=False)),
                ("state", models.TextField(choices=STATE_CHOICES)),
                ("token", models.BigIntegerField()),
                ("task_name", models.TextField()),
                ("task_id", models.TextField()),
                ("attempt", models.IntegerField()),
                ("owner", models.TextField()),
                ("payload_digest", models.TextField(null=True)),
                ("result", models.BinaryField(null=True)),
                ("result_content_type", models.TextField(null=True)),
                ("result_content_encoding", models.TextField(null=True)),
                ("error", models.TextField(null=True)),
                ("duplicates", models.IntegerField(default=0)),
                ("lease_expires_at", models.DateTimeField(null=True)),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField(null=True)),
                ("expires_at", models.DateTimeField(null=True)),
            ],
            options={
                "db_table": TABLE,
                "ordering": ["key"],
                "verbose_name": "claim",
                "verbose_name_plural": "claims",
            },
        ),
    ]
