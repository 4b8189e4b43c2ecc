from __future__ import annotations

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from celery_claim import ClaimConfigurationError, errors, sql

DIALECTS = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("name", sql.STATEMENTS)
def test_every_named_statement_compiles(name: str, dialect: str) -> None:
    description, _ = sql.STATEMENTS[name]
    assert description
    assert "\n" not in description
    text = str(sql.Statements(sql.claims, dialect)[name].compile(dialect=DIALECTS[dialect]))
    assert "celery_claims" in text
    assert "now()" not in text.lower().replace("statement_timestamp()", "")


def test_acquire_is_one_conditional_upsert() -> None:
    text = str(sql.Statements(sql.claims, "postgresql")["acquire"].compile(
        dialect=DIALECTS["postgresql"]))
    assert text.startswith("INSERT INTO celery_claims")
    assert "ON CONFLICT (key) DO UPDATE" in text
    assert "token = (celery_claims.token +" in text
    assert "RETURNING celery_claims.token, celery_claims.attempt" in text


def test_fenced_writes_check_token_and_running_state() -> None:
    for name in ("complete", "finish", "release"):
        text = str(sql.Statements(sql.claims, "postgresql")[name].compile(
            dialect=DIALECTS["postgresql"]))
        assert "celery_claims.token = %(p_token)s" in text
        assert "celery_claims.state = " in text


def test_unsupported_dialect() -> None:
    with pytest.raises(ClaimConfigurationError, match="PostgreSQL"):
        sql.Statements(sql.claims, "mysql")


@pytest.mark.parametrize("name", ["ops.claims", "claims", "_x1"])
def test_valid_table_names(name: str) -> None:
    table = sql.make_table(name)
    assert table.fullname == name


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a.b.c", "x" * 64, 'a"; drop', None])
def test_invalid_table_names(name: str) -> None:
    with pytest.raises(ClaimConfigurationError, match="claim_table"):
        sql.make_table(name)


def test_metadata_for_alembic_has_the_default_table_and_indexes() -> None:
    table = sql.metadata.tables["celery_claims"]
    assert {c.name for c in table.c} >= {
        "key", "state", "token", "task_name", "task_id", "attempt", "owner", "payload_digest",
        "result", "error", "lease_expires_at", "created_at", "updated_at", "finished_at",
        "expires_at"}
    assert {ix.name for ix in table.indexes} == {
        "celery_claims_expires_idx", "celery_claims_running_lease_idx"}


@pytest.mark.parametrize("cls", [
    errors.ClaimError, errors.ClaimStoreError, errors.ClaimLost, errors.ClaimPayloadMismatch,
    errors.ClaimConfigurationError, errors.ClaimInProgress, errors.ClaimKeyError])
def test_every_error_has_a_useful_message(cls: type[errors.ClaimError]) -> None:
    assert str(cls()).strip()
    assert issubclass(cls, errors.ClaimError)
    assert "key='k'" in str(cls(key="k"))
