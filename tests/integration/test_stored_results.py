"""Stored results on each dialect: what a duplicate returns or raises, the table
a worker refuses to run against, and the upgrade of a table of release 0.1."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from click.testing import CliRunner

from celery_claim import ClaimResultUnavailable, ClaimStore, ClaimTask, upgrade
from celery_claim.cli import claim

RESULT = {"amount": Decimal("12.50"), "at": datetime.datetime(2026, 1, 2, 3, 4, 5),
          "pair": (1, 2)}


@pytest.fixture
def app(make_app: Callable[..., Celery], any_url: str) -> Celery:
    return make_app(any_url)


@pytest.mark.parametrize(("serializer", "pair"), [("json", [1, 2]), ("pickle", (1, 2))])
def test_a_duplicate_returns_the_first_result_as_the_backend_encodes_it(
        make_app: Callable[..., Celery], any_url: str, serializer: str, pair: Any) -> None:
    app = make_app(any_url, result_serializer=serializer,
                   result_accept_content=["json", serializer])

    @app.task(base=ClaimTask, bind=True, claim_key="bill:{order}", shared=False)
    def bill(self: ClaimTask, order: int) -> dict[str, Any]:
        return RESULT

    assert bill.apply((1,)).get() == RESULT
    duplicate = bill.apply((1,)).get()  # its own task id
    assert duplicate == {**RESULT, "pair": pair}
    assert type(duplicate["amount"]) is Decimal
    assert type(duplicate["pair"]) is type(pair)
    stored = bill.claim_store.get("bill:1").stored_result  # type: ignore[union-attr]
    assert stored is not None
    assert stored.content_type == app.backend.content_type


def test_a_result_no_longer_accepted_fails_the_duplicate_with_the_reason(
        make_app: Callable[..., Celery], any_url: str) -> None:
    app = make_app(any_url, result_serializer="pickle",
                   result_accept_content=["json", "pickle"])

    @app.task(base=ClaimTask, bind=True, claim_key="k:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> tuple[int, int]:
        return (n, n)

    job.apply((1,)).get()
    # A later worker accepts json results only (a fresh task runtime reads it).
    app.backend.accept = {"application/json"}
    job.__dict__.pop("_claim_rt", None)
    duplicate = job.apply((1,))
    assert duplicate.state == "FAILURE"
    assert isinstance(duplicate.result, ClaimResultUnavailable)
    assert "cannot be decoded" in str(duplicate.result)


def test_without_a_stored_result_a_redelivery_of_the_holders_task_id_is_ignored(
        app: Celery) -> None:
    @app.task(base=ClaimTask, bind=True, claim_key="k:{n}", shared=False,
              claim_store_result=False)
    def job(self: ClaimTask, n: int) -> int:
        return n

    first = job.apply((1,))
    assert first.get() == 1
    # The same task id again: its result is in the result backend already, so
    # nothing is written over it.
    assert job.apply((1,), task_id=first.id).state == "IGNORED"
    other = job.apply((1,))
    assert isinstance(other.result, ClaimResultUnavailable)
    assert other.result.context == {"key": "k:1", "holder_task_id": first.id}


# --- the schema of release 0.1 ----------------------------------------------------

#: The table as release 0.1 created it (``celery-claim schema`` of 0.1), results as JSON.
LEGACY_DDL = """
CREATE TABLE "{table}" (
    key VARCHAR(512) NOT NULL PRIMARY KEY, state VARCHAR(16) NOT NULL,
    token BIGINT NOT NULL, task_name VARCHAR(255) NOT NULL, task_id VARCHAR(255) NOT NULL,
    attempt INTEGER NOT NULL, owner VARCHAR(255) NOT NULL, payload_digest VARCHAR(64),
    result {json}, error TEXT, duplicates INTEGER DEFAULT '0' NOT NULL,
    lease_expires_at {stamp}, created_at {stamp} NOT NULL, updated_at {stamp} NOT NULL,
    finished_at {stamp}, expires_at {stamp},
    CONSTRAINT "{table}_state_check" CHECK (state IN ('running', 'succeeded', 'failed',
                                                      'released')));
CREATE INDEX "{table}_expires_idx" ON "{table}" (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX "{table}_running_lease_idx" ON "{table}" (lease_expires_at)
    WHERE state = 'running'
"""
_LEGACY_ROW = ("INSERT INTO \"{table}\" (key, state, token, task_name, task_id, attempt, owner, "
               "result, created_at, updated_at, finished_at, expires_at) VALUES (:key, "
               "'succeeded', 1, 't', :task_id, 1, 'o', :result, '2026-01-01 00:00:00.000000', "
               "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000', "
               "'2999-01-01 00:00:00.000000')")


def _create_legacy(conn: sa.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    postgres = conn.dialect.name == "postgresql"
    for statement in LEGACY_DDL.format(
            table=table, json="JSONB" if postgres else "JSON",
            stamp="TIMESTAMP WITH TIME ZONE" if postgres else "DATETIME").split(";"):
        conn.execute(sa.text(statement))
    insert = _LEGACY_ROW.format(table=table)
    if postgres:
        insert = insert.replace(":result,", "CAST(:result AS JSONB),")
    conn.execute(sa.text(insert), rows)


@pytest.fixture
def legacy(any_url: str, table_name: str) -> Iterator[ClaimStore]:
    """A table of release 0.1 with three finished claims, and a store on it."""
    engine = sa.create_engine(any_url)
    with engine.begin() as conn:
        _create_legacy(conn, table_name, [
            {"key": "dict", "task_id": "a", "result": '{"z": 1, "a": [1, 2.5, null]}'},
            {"key": "null", "task_id": "b", "result": "null"},  # JSON null: a result
            {"key": "none", "task_id": "c", "result": None},  # no result
        ])
    engine.dispose()
    store = ClaimStore(any_url, table=table_name, create_schema=False)
    yield store
    store.dispose()
    engine = sa.create_engine(any_url)  # upgraded or not, the table goes
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table_name}"'))
    engine.dispose()


def test_upgrade_keeps_old_json_results_readable_and_is_idempotent(
        legacy: ClaimStore, make_app: Callable[..., Celery], any_url: str) -> None:
    assert upgrade.pending(legacy)
    with pytest.raises(Exception, match="celery-claim schema --upgrade"):
        upgrade.check_current(legacy)
    runner = CliRunner()
    args = ["--database-url", any_url, "--table", legacy.table_name, "schema", "--upgrade"]
    done = runner.invoke(claim, args)
    assert done.exit_code == 0, done.output
    assert "upgraded" in done.output
    again = runner.invoke(claim, args)
    assert (again.exit_code, "up to date" in again.output) == (0, True), again.output
    assert upgrade.pending(legacy) == []
    upgrade.check_current(legacy)

    record = legacy.get("dict")
    assert record is not None
    assert record.has_result
    assert record.result == {"z": 1, "a": [1, 2.5, None]}
    assert json.loads(record.stored_result.text or "") == record.result  # type: ignore[union-attr]
    null = legacy.get("null")
    assert null is not None
    assert null.has_result
    assert null.result is None
    none = legacy.get("none")
    assert none is not None
    assert not none.has_result

    # A task on the upgraded table: old results are returned, new ones stored.
    app = make_app(any_url)

    @app.task(base=ClaimTask, bind=True, name="t", claim_key="{k}", shared=False)
    def job(self: ClaimTask, k: str) -> Any:
        return {"new": (1, 2)}

    assert job.apply(("dict",)).get() == {"z": 1, "a": [1, 2.5, None]}
    assert job.apply(("fresh",)).get() == {"new": (1, 2)}
    assert job.apply(("fresh",)).get() == {"new": [1, 2]}


def test_a_task_never_runs_its_body_against_a_table_that_needs_the_upgrade(
        legacy: ClaimStore, make_app: Callable[..., Celery], any_url: str) -> None:
    app = make_app(any_url)
    ran: list[str] = []

    @app.task(base=ClaimTask, bind=True, claim_key="{k}", shared=False)
    def job(self: ClaimTask, k: str) -> str:
        ran.append(k)
        return k

    outcome = job.apply(("fresh",))
    assert outcome.state == "FAILURE"
    assert "schema --upgrade" in str(outcome.result)
    assert ran == []


@pytest.mark.postgres
def test_the_documented_alembic_steps_upgrade_a_table_of_release_0_1(
        database_url: str, table_name: str) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from examples_loader import load

    step = load("operations/alembic_upgrade_results.py")
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            _create_legacy(conn, table_name, [{"key": "k", "task_id": "a",
                                               "result": '{"z": [1, 2]}'}])
            operations = Operations(MigrationContext.configure(conn))
            step.upgrade_claim_results(operations, table_name)
            step.upgrade_claims_table(operations, table_name)
            step.create_settle_function(operations, table_name)
        store = ClaimStore(database_url, table=table_name, create_schema=False)
        assert upgrade.pending(store) == []
        assert store.get("k").result == {"z": [1, 2]}  # type: ignore[union-attr]
        store.dispose()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table_name}"'))
        engine.dispose()


def test_the_command_line_on_a_table_of_release_0_1_says_to_upgrade(
        legacy: ClaimStore, any_url: str) -> None:
    result = CliRunner().invoke(claim, ["--database-url", any_url, "--table",
                                        legacy.table_name, "status", "dict"])
    assert result.exit_code == 1
    assert "celery-claim schema --upgrade" in result.output
