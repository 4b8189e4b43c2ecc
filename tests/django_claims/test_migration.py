"""The app's migration makes the table `celery-claim schema` makes (compared in
PostgreSQL's catalog); an existing table is adopted with --fake-initial; the
migration follows the routers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from django.core.management import call_command
from django.db import connections
from example_project import ExampleProject

from celery_claim import ClaimStore

pytestmark = pytest.mark.postgres

CATALOG = {
    "columns": """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = to_regclass(:table) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum""",
    "constraints": """
        SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid = to_regclass(:table) ORDER BY conname""",
    "indexes": """
        SELECT i.relname, regexp_replace(pg_get_indexdef(i.oid), ' ON \\S+ ', ' ON t ')
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = to_regclass(:table) ORDER BY i.relname""",
}


def catalog(conn: sa.Connection, table: str) -> dict[str, list[Any]]:
    return {part: [tuple(r) for r in conn.execute(sa.text(query), {"table": table})]
            for part, query in CATALOG.items()}


@pytest.fixture
def test_database_url() -> Iterator[str]:
    """SQLAlchemy URL of Django's migrated test database."""
    settings = connections["default"].settings_dict
    return sa.engine.URL.create("postgresql+psycopg", username=settings["USER"],
                               password=settings["PASSWORD"] or None, host=settings["HOST"],
                               port=int(settings["PORT"]), database=settings["NAME"]
                               ).render_as_string(hide_password=False)


def test_the_migrated_table_is_the_one_celery_claim_schema_makes(test_database_url: str) -> None:
    schema = f"cmp_{uuid.uuid4().hex[:8]}"
    store = ClaimStore(test_database_url, table=f"{schema}.celery_claims")
    engine = sa.create_engine(test_database_url)
    try:
        store.create_schema()
        with engine.connect() as conn:
            migrated = catalog(conn, "public.celery_claims")
            made = catalog(conn, f"{schema}.celery_claims")
        assert migrated["columns"], "the migration made no table"
        assert migrated == made
        with engine.connect() as conn:
            settle = {row[0]: row[1:] for row in conn.execute(sa.text(
                "SELECT n.nspname, pg_get_function_identity_arguments(p.oid), p.prosrc "
                "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE p.proname = 'celery_claims_settle' AND n.nspname IN ('public', :schema)"),
                {"schema": schema})}
        assert settle["public"][0] == settle[schema][0]
        assert "UPDATE celery_claims SET duplicates=" in settle["public"][1]
        assert settle["public"][1] == settle[schema][1].replace(f"{schema}.", "")
    finally:
        store.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def test_the_model_needs_no_new_migration() -> None:
    call_command("makemigrations", "celery_claim", "--check", "--dry-run", verbosity=0)


def test_the_router_keeps_the_claims_table_on_the_claims_alias() -> None:
    tables = {alias: connections[alias].introspection.table_names()
              for alias in ("default", "claims")}
    assert "celery_claims" in tables["default"]
    assert "celery_claims" not in tables["claims"]


@pytest.mark.redis
def test_an_existing_table_is_adopted_with_fake_initial(database_url: str,
                                                        redis_url: str) -> None:
    project = ExampleProject(database_url, redis_url)
    try:
        url = project.url.render_as_string(hide_password=False)
        store = ClaimStore(url)  # as `celery-claim schema --apply` makes it
        store.create_schema()
        assert store.acquire("kept", task_name="t", task_id="1", owner="o",
                             payload_digest=None, lease_seconds=60) is not None
        store.dispose()

        refused = project.manage("migrate", "celery_claim", check=False)
        assert refused.returncode != 0
        assert "already exists" in refused.stderr
        project.manage("migrate", "celery_claim", "--fake-initial")
        shown = project.manage("showmigrations", "celery_claim").stdout
        assert "[X] 0001_initial" in shown
        project.manage("migrate")
        assert "[X] 0002_settle_function" in project.manage("showmigrations",
                                                            "celery_claim").stdout
        store = ClaimStore(url, create_schema=False)
        assert store.get("kept") is not None  # the table and its claims are untouched
        store.dispose()
    finally:
        project.close()
