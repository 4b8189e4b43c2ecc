from __future__ import annotations

import json
import re

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


def _psycopg_statement(name: str) -> sql.DriverStatement:
    from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

    statement = sql.Statements(sql.claims, "postgresql").driver(name, pg_psycopg.dialect())
    assert statement is not None
    return statement


@pytest.mark.parametrize("name", ["acquire", "complete", "finish", "release"])
def test_libpq_text_numbers_every_parameter_in_order(name: str) -> None:
    statement = _psycopg_statement(name)
    numbered = statement.numbered.decode()
    assert "%s" not in numbered
    assert "%%" not in numbered
    placeholders = [int(n) for n in re.findall(r"\$(\d+)", numbered)]
    assert placeholders == list(range(1, len(statement.order) + 1))
    # The same statement apart from the placeholders.
    assert re.sub(r"\$\d+", "%s", numbered) == statement.sql.replace("%%", "%")


def test_text_values_encode_what_postgresql_reads_as_text() -> None:
    statement = _psycopg_statement("complete")
    payload = json.dumps({"é": [1, 2.5, None]}).encode()
    values = {"state": "succeeded", "result": payload, "result_content_type": "application/json",
              "result_content_encoding": "utf-8", "error": None, "ttl_seconds": 0.25,
              "key": "k", "token": 7}
    dumped = statement.text_values(statement.params(values), "utf-8",
                                   lambda w: json.dumps(w.obj).encode())
    expected = {"state": b"succeeded", "result": b"\\x" + payload.hex().encode(),
                "result_content_type": b"application/json", "result_content_encoding": b"utf-8",
                "error": None, "ttl_seconds": b"0.25", "key": b"k", "token": b"7"}
    assert dumped == [expected[name] for name in statement.order]
    assert statement.binary == {statement.order.index("result")}
    acquire = _psycopg_statement("acquire")
    params = acquire.text_values(acquire.params(
        {"key": "k", "task_name": "t", "task_id": "i", "owner": "o", "payload_digest": None,
         "lease_seconds": 30.0, "retry_failed": True, "check_payload": False}),
        "utf-8", bytes)
    assert params is not None
    assert dict(zip(acquire.order, params, strict=True))["retry_failed"] == b"t"
    assert dict(zip(acquire.order, params, strict=True))["check_payload"] == b"f"


@pytest.mark.parametrize(("name", "value"), [
    ("error", "a\x00b"),  # libpq would cut it short; the driver refuses it clearly
    ("error", object()), ("error", b"bytes"),
    ("error", "\udc80"),  # not encodable
    ("token", 10 ** 5000),  # too many digits for str(); the driver says out of range
], ids=["nul", "object", "bytes", "surrogate", "huge-int"])
def test_text_values_leave_to_the_driver_what_text_cannot_carry(name: str,
                                                                 value: object) -> None:
    statement = _psycopg_statement("release")
    values = {"error": None, "ttl_seconds": 1.0, "key": "k", "token": 1, name: value}
    assert statement.text_values(statement.params(values), "utf-8", bytes) is None
