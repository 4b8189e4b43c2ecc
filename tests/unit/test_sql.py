from __future__ import annotations

import json
import re

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from celery_claim import ClaimConfigurationError, errors, sql, sql_settle, statements

pytestmark = pytest.mark.unit

DIALECTS = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("name", statements.STATEMENTS)
def test_every_named_statement_compiles(name: str, dialect: str) -> None:
    description, _ = statements.STATEMENTS[name]
    assert description
    assert "\n" not in description
    text = str(statements.Statements(sql.claims, dialect)[name].compile(dialect=DIALECTS[dialect]))
    assert "celery_claims" in text
    # The clock is the statement's (not the transaction's now()), or SQLite's clock function.
    assert "now()" not in text.lower().replace("statement_timestamp()", "").replace(
        f"{sql.SQLITE_CLOCK}()", "")


def test_acquire_is_one_conditional_upsert() -> None:
    text = str(statements.Statements(sql.claims, "postgresql")["acquire"].compile(
        dialect=DIALECTS["postgresql"]))
    assert text.startswith("INSERT INTO celery_claims")
    assert "ON CONFLICT (key) DO UPDATE" in text
    assert "token = (celery_claims.token +" in text
    assert "RETURNING celery_claims.token, celery_claims.attempt" in text


def test_fenced_writes_check_token_and_running_state() -> None:
    for name in ("complete_with_result", "complete", "release"):
        text = str(statements.Statements(sql.claims, "postgresql")[name].compile(
            dialect=DIALECTS["postgresql"]))
        assert "celery_claims.token = %(p_token)s" in text
        assert "celery_claims.state = " in text


def test_unsupported_dialect() -> None:
    with pytest.raises(ClaimConfigurationError, match="PostgreSQL"):
        statements.Statements(sql.claims, "mysql")


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
    # The purge's index alone: no index may change when a claim completes.
    assert {ix.name for ix in table.indexes} == {"celery_claims_expires_idx"}
    assert not [c for c in table.constraints if isinstance(c, sa.CheckConstraint)]


@pytest.mark.parametrize("cls", [
    errors.ClaimError, errors.ClaimStoreError, errors.ClaimStoreUnavailable,
    errors.ClaimStoreRefused, errors.ClaimLost, errors.ClaimPayloadMismatch,
    errors.ClaimConfigurationError, errors.ClaimInProgress, errors.ClaimKeyError])
def test_every_error_has_a_useful_message(cls: type[errors.ClaimError]) -> None:
    assert str(cls()).strip()
    assert issubclass(cls, errors.ClaimError)
    assert "key='k'" in str(cls(key="k"))


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
@pytest.mark.parametrize("name", statements.STATEMENTS)
def test_every_statement_compiles_to_driver_sql(name: str, driver: str) -> None:
    named = statements.Statements(sql.claims, "postgresql")
    compiled = named.driver(name, statements.driver_dialect(driver))
    assert compiled.name == name
    # Named placeholders, each name one parameter however often it is used.
    assert "%s" not in compiled.sql.replace("%%", "")
    used = set(re.findall(r"%\((\w+)\)s", compiled.sql))
    assert used == set(compiled.order)
    assert len(compiled.order) == len(used)
    binds = named[name].compile(dialect=DIALECTS["postgresql"]).binds  # type: ignore[attr-defined]
    assert set(compiled.order) == {key[2:] for key in binds if key.startswith("p_")}


def test_driver_parameters_follow_the_placeholders() -> None:
    compiled = statements.Statements(sql.claims, "postgresql").driver(
        "complete_with_result", statements.driver_dialect("psycopg"))
    payload = json.dumps({"é": [1]}).encode()
    values = {"state": "succeeded", "result": payload, "result_content_type": "application/json",
              "result_content_encoding": "utf-8", "error": None, "ttl_seconds": 0.25,
              "key": "k", "token": 7}
    by_name = compiled.params(values)
    assert list(by_name) == list(compiled.order)
    assert by_name["key"] == "k"
    assert by_name["token"] == 7
    assert bytes(by_name["result"]) == payload  # the encoded result, as bytea
    psycopg2 = statements.Statements(sql.claims, "postgresql").driver(
        "complete_with_result", statements.driver_dialect("psycopg2")).params(values)
    assert bytes(psycopg2["result"]) == payload


def test_unknown_drivers_are_refused() -> None:
    with pytest.raises(ClaimConfigurationError, match="psycopg2"):
        statements.driver_dialect("asyncpg")
    with pytest.raises(ClaimConfigurationError, match="%\\(name\\)s"):
        statements.Statements(sql.claims, "sqlite").driver("get", DIALECTS["sqlite"])


def test_store_errors_say_whether_to_try_again() -> None:
    assert errors.ClaimStoreUnavailable().transient is True
    assert errors.ClaimStoreRefused().transient is False
    assert errors.ClaimStoreError().transient is True  # raised by hand: assume unavailable
    assert issubclass(errors.ClaimStoreRefused, errors.ClaimStoreError)
    with pytest.raises(AttributeError):
        errors.ClaimStoreError().transient = False  # type: ignore[misc]


@pytest.mark.parametrize("table", ["celery_claims", "bench_claims_0123456789"])
def test_the_acquire_stays_inside_psycopgs_parse_cache(table: str) -> None:
    # psycopg re-parses the placeholders of a statement longer than 4096
    # bytes on every call (about 0.06 ms of client CPU per acquire).
    # claim_many may be longer: it runs once for a whole batch of claims.
    named = statements.Statements(sql.make_table(table), "postgresql")
    for name in statements.STATEMENTS:
        text = named.driver(name, statements.driver_dialect("psycopg")).sql
        assert len(text.encode()) <= (4096 if name != "claim_many" else 8192), name


def test_the_acquire_and_the_duplicates_verdict_share_one_rule() -> None:
    named = statements.Statements(sql.claims, "postgresql")
    dialect = statements.driver_dialect("psycopg")
    conflict = named.driver("claim_conflict", dialect).sql
    lost_to = named.driver("lost_to", dialect).sql
    # The combined statement's loser part counts the duplicate as lost_to
    # does, with lost_to's mismatch verdict; the row it returns as one JSON
    # column, never takeable (the conflict check has just locked and refused it).
    assert conflict.startswith("WITH won AS \n(INSERT INTO celery_claims")
    mismatch = re.search(r"NOT \(\(celery_claims\.expires_at IS NOT NULL.* AS mismatch", lost_to)
    assert mismatch is not None
    assert mismatch.group(0) in conflict
    assert "CAST(row_to_json(celery_claims.*) AS TEXT) AS record" in conflict
    assert " AS takeable" in lost_to
    assert " AS mismatch" in lost_to
    sqlite = statements.Statements(sql.claims, "sqlite")
    assert str(sqlite["claim"].compile(dialect=DIALECTS["sqlite"])).startswith("INSERT INTO")


def test_the_settle_function_decides_by_the_acquires_rule() -> None:
    # lost_to's verdicts, with the function's arguments for the parameters:
    # the count refuses exactly the rows the takeover takes (IS NOT true /
    # the rule itself), and returns lost_to's mismatch verdict.
    dialect = statements.driver_dialect("psycopg")
    lost_to = statements.Statements(sql.claims, "postgresql").driver("lost_to", dialect).sql
    as_arguments = re.sub(r"%\((\w+)\)s", r"p_\1", lost_to)
    takes = re.search(r" AS db_now, (.*?) AS takeable", as_arguments)
    mismatch = re.search(r"(NOT \(\(celery_claims\.expires_at IS NOT NULL.*) AS mismatch",
                         as_arguments)
    assert takes is not None
    assert mismatch is not None
    function = sql_settle.settle_function(sql.claims)
    count, take, insert = re.findall(r"^    ((?:UPDATE|INSERT) .*) INTO answer;$", function, re.M)
    assert f"AND ({takes.group(1)}) IS NOT true RETURNING" in count
    assert mismatch.group(1) in count
    assert take.endswith(f"AND ({takes.group(1)}) RETURNING CAST(json_build_array(true, "
                         "celery_claims.token, celery_claims.attempt) AS TEXT) "
                         "AS json_build_array_1")
    assert "ON CONFLICT (key) DO NOTHING" in insert
    # Nothing a driver reads as a placeholder.
    assert "%" not in function
    claim = statements.Statements(sql.claims, "postgresql").driver("claim", dialect).sql
    assert "ON CONFLICT (key) DO NOTHING" in claim
    assert "THEN celery_claims_settle(%(key)s, %(task_name)s" in claim


@pytest.mark.parametrize("dialect", DIALECTS)
def test_only_a_duplicates_count_may_skip_its_flush(dialect: str) -> None:
    # set_config(synchronous_commit) belongs to the duplicate's count alone:
    # never to a statement that claims, completes, releases, renews or
    # counts a batch (claim_many), in statements.STATEMENTS with the rest.
    named = statements.Statements(sql.claims, dialect)
    counts = {"claim_conflict", "lost_to", "note_duplicate"} if dialect == "postgresql" \
        else set()
    for name in statements.STATEMENTS:
        text = str(named[name].compile(dialect=DIALECTS[dialect]))
        assert ("set_config" in text) == (name in counts), name
    if dialect == "postgresql":  # in the claim, in the lost branch's RETURNING
        function = sql_settle.settle_function(sql.claims)
        count, take, insert = re.findall(r"^    ((?:UPDATE|INSERT) .*) INTO answer;$",
                                         function, re.M)
        assert "set_config" in count
        assert "set_config" not in take + insert
        assert "SET duplicates=" in count
        claim = str(named["claim_conflict"].compile(dialect=DIALECTS[dialect]))
        won, lost = claim.split("lost AS", 1)
        assert "set_config" not in won
        assert re.search(r"RETURNING .*CASE WHEN %\(p_own_transaction\)s THEN set_config",
                         lost, re.S)


def test_the_duplicates_statements_are_the_ones_that_take_own_transaction() -> None:
    table = sql.make_table("t")
    takes = {d: {name for name in statements.STATEMENTS
                 if statements.Statements(table, d).get(name).own_transaction}
             for d in ("postgresql", "sqlite")}
    assert takes == {"postgresql": {"claim", "claim_conflict", "lost_to", "note_duplicate"},
                     "sqlite": set()}


def test_a_table_name_too_long_for_its_settle_function_is_refused() -> None:
    # PostgreSQL would cut "<table>_settle" short: two tables could share it.
    assert sql_settle.settle_name(sql.make_table("a" * 56)).endswith('a_settle')
    with pytest.raises(ClaimConfigurationError, match="at most 56 characters"):
        sql_settle.settle_name(sql.make_table("a" * 57))
    with pytest.raises(ClaimConfigurationError, match="at most 56 characters"):
        statements.Statements(sql.make_table("b" * 57), "postgresql").get("claim")
