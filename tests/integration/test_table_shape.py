"""The claims table on PostgreSQL: completions that write no index entry, the
row a duplicate lost to read back whole from the claim statement, and a
table of the earlier shape brought up to date."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from support.stores import store_on_engine

from celery_claim import ClaimStore, errors, records, results, sql_settle, upgrade
from celery_claim.store import Acquired, Lost

pytestmark = pytest.mark.postgres

CLAIM = {"task_name": "t.charge", "owner": "w/1", "payload_digest": "d" * 64,
         "lease_seconds": 30.0, "ttl_seconds": 3600.0}


def _hot_and_all_updates(store: ClaimStore, engine: sa.Engine) -> tuple[int, int]:
    # A backend reports its table statistics at the end of a transaction, at
    # most once a second: one more statement of the store's, a second later.
    time.sleep(1.1)
    store.get("-")
    with engine.connect() as conn:
        hot, updates = conn.execute(sa.text(
            "SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = :t"),
            {"t": store.table_name}).one()
    return int(hot), int(updates)


def test_completions_and_releases_within_the_first_lease_are_hot_updates(
        pg_store: ClaimStore, database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        for i in range(60):
            won = pg_store.acquire(f"k{i}", task_id=f"t{i}", **CLAIM)
            assert won is not None
            if i % 3:
                assert pg_store.complete(f"k{i}", won.token, result=i, has_result=True,
                                         ttl_seconds=3600.0)
            else:
                assert pg_store.release(f"k{i}", won.token, ttl_seconds=3600.0)
        hot, updates = _hot_and_all_updates(pg_store, engine)
        assert updates == 60
        # No index entry written, but where a page had no room left for the
        # new version (a page boundary now and then).
        assert hot >= 56
        # The control: with an index on running leases, as the previous table had,
        # no completion can be a HOT update.
        with engine.begin() as conn:
            conn.execute(sa.text(
                f'CREATE INDEX "{pg_store.table_name}_lease" ON "{pg_store.table_name}" '
                "(lease_expires_at) WHERE state = 'running'"))
        for i in range(60, 90):
            won = pg_store.acquire(f"k{i}", task_id=f"t{i}", **CLAIM)
            assert won is not None
            assert pg_store.complete(f"k{i}", won.token, ttl_seconds=3600.0)
        hot_before = hot
        hot, updates = _hot_and_all_updates(pg_store, engine)
        assert (hot, updates) == (hot_before, 90)
    finally:
        engine.dispose()


@pytest.fixture(params=["UTC", "Asia/Kolkata+escape"])
def session_store(request: pytest.FixtureRequest, database_url: str,
                  table_name: str) -> Iterator[ClaimStore]:
    """A store whose connections have their own time zone and ``bytea_output``."""
    zone, _, output = request.param.partition("+")
    options = f"-c timezone={zone}" + (f" -c bytea_output={output}" if output else "")
    yield from store_on_engine(database_url, table_name, options=options)


def test_the_row_a_duplicate_lost_to_is_the_row_as_read(session_store: ClaimStore) -> None:
    # The claim statement returns that row as one JSON column; it reads back
    # as the same record a plain read gives, bytes, times and all.
    payload = b"\x00\\x\xff" + uuid.uuid4().bytes
    won = session_store.claim("k", task_id="t1", **CLAIM)
    assert isinstance(won, Acquired)
    stored = results.Encoded(payload, "application/data", "binary")
    assert session_store.complete("k", won.token, result=stored, has_result=True,
                                  ttl_seconds=3600.0)
    lost = session_store.claim("k", task_id="t2", **{**CLAIM, "payload_digest": "e" * 64})
    assert isinstance(lost, Lost)
    read = session_store.get("k")
    assert read is not None
    assert (lost.mismatch, lost.takeable) == (True, False)

    def fields(record: Any) -> dict[str, Any]:
        values = dict(vars(record))
        for moving in ("db_now", "duplicates"):
            values.pop(moving)
        return values

    assert fields(lost.record) == fields(read)
    assert lost.record.stored_result is not None
    assert lost.record.stored_result.payload == payload
    assert (lost.record.duplicates, read.duplicates) == (1, 1)
    assert lost.record.db_now.utcoffset() is not None


@pytest.fixture
def odd_store(database_url: str) -> Iterator[ClaimStore]:
    """A claims table named like one of its columns, in a schema of its own."""
    schema = f"s_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield from store_on_engine(database_url, "state", options=f"-c search_path={schema}")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def test_a_duplicate_reads_its_row_from_any_table_name_and_extra_columns(
        odd_store: ClaimStore) -> None:
    # The lost branch returns the whole row as JSON: a table named like a
    # column must still give the row, and a column the package does not know
    # (an operator's own) must not break reading it.
    with odd_store.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE state ADD COLUMN audit text DEFAULT 'kept'"))
    won = odd_store.claim("k", task_id="t1", **CLAIM)
    assert isinstance(won, Acquired)
    assert odd_store.complete("k", won.token, result=5, has_result=True, ttl_seconds=3600.0)
    lost = odd_store.claim("k", task_id="t1", **CLAIM)
    assert isinstance(lost, Lost)
    assert (lost.record.state, lost.record.result, lost.record.duplicates) == ("succeeded", 5, 1)


#: The table as the commits before this release made it: results as bytes,
#: but VARCHAR columns, a check on state and an index on running leases.
EARLIER_DDL = """
CREATE TABLE "{table}" (
    key VARCHAR(512) NOT NULL PRIMARY KEY, state VARCHAR(16) NOT NULL,
    token BIGINT NOT NULL, task_name VARCHAR(255) NOT NULL, task_id VARCHAR(255) NOT NULL,
    attempt INTEGER NOT NULL, owner VARCHAR(255) NOT NULL, payload_digest VARCHAR(64),
    result BYTEA, result_content_type VARCHAR(128), result_content_encoding VARCHAR(32),
    error TEXT, duplicates INTEGER DEFAULT '0' NOT NULL,
    lease_expires_at TIMESTAMP WITH TIME ZONE, created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL, finished_at TIMESTAMP WITH TIME ZONE,
    expires_at TIMESTAMP WITH TIME ZONE,
    CONSTRAINT "{table}_state_check" CHECK (state IN ('running', 'succeeded', 'failed',
                                                      'released')));
CREATE INDEX "{table}_expires_idx" ON "{table}" (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX "{table}_running_lease_idx" ON "{table}" (lease_expires_at)
    WHERE state = 'running'
"""

CATALOG = """
SELECT 'column', a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
       || a.attnotnull::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = to_regclass(:table) AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', contype::text FROM pg_constraint WHERE conrelid = to_regclass(:table)
UNION ALL
SELECT 'index', regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', '')
FROM pg_index WHERE indrelid = to_regclass(:table)
ORDER BY 1, 2"""


def test_a_table_of_the_earlier_shape_works_and_is_brought_up_to_date(
        database_url: str, table_name: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = sa.create_engine(database_url)
    fresh = f"{table_name}_new"
    store = ClaimStore(database_url, table=table_name, create_schema=False)
    made = ClaimStore(database_url, table=fresh)
    try:
        with engine.begin() as conn:
            for statement in EARLIER_DDL.format(table=table_name).split(";"):
                conn.execute(sa.text(statement))
        # Not required: a worker starts on it, and says once what the upgrade would do.
        with caplog.at_level("WARNING", logger="celery_claim"):
            upgrade.check_current(store)
        assert "celery-claim schema --upgrade" in caplog.text
        # Without the settle function, the claim statement that needs none.
        assert store.claim_statement == "claim_conflict"
        won = store.claim("k", task_id="t1", **CLAIM)
        assert isinstance(won, Acquired)
        assert store.complete("k", won.token, result=1, has_result=True, ttl_seconds=60.0)
        lost = store.claim("k", task_id="t1", **CLAIM)
        assert isinstance(lost, Lost)
        assert lost.record.result == 1
        steps = upgrade.pending(store)
        assert steps == ["make key, owner, payload_digest, result_content_encoding, "
                         "result_content_type, state, task_id, task_name text",
                         "drop the check constraint on state",
                         "drop the index on running leases",
                         "create the claim's settle function"]
        assert upgrade.upgrade(store) == steps
        assert upgrade.pending(store) == []
        assert store.claim_statement == "claim"
        lost = store.claim("k", task_id="t1", **CLAIM)
        assert isinstance(lost, Lost)
        assert (lost.record.result, lost.record.duplicates) == (1, 2)
        made.create_schema()
        with engine.connect() as conn:
            upgraded = conn.execute(sa.text(CATALOG), {"table": table_name}).all()
            created = conn.execute(sa.text(CATALOG), {"table": fresh}).all()
            bodies = dict(conn.execute(sa.text(
                "SELECT proname, prosrc FROM pg_proc WHERE proname IN (:a, :b)"),
                {"a": f"{table_name}_settle", "b": f"{fresh}_settle"}).all())
        assert upgraded == created
        assert bodies[f"{table_name}_settle"] == \
            bodies[f"{fresh}_settle"].replace(fresh, table_name)
        record = store.get("k")
        assert record is not None
        assert (record.state, record.result) == ("succeeded", 1)
    finally:
        store.drop_schema()  # and the settle function
        made.drop_schema()
        store.dispose()
        made.dispose()
        engine.dispose()


def test_the_upgrade_gives_up_on_a_busy_table_instead_of_holding_up_claims(
        database_url: str, table_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # An ALTER waiting for its lock holds up every claim queued behind it, so
    # the upgrade's steps wait a bounded time, then fail and change nothing.
    monkeypatch.setattr(upgrade, "LOCK_TIMEOUT", "300ms")
    engine = sa.create_engine(database_url)
    store = ClaimStore(database_url, table=table_name, create_schema=False)
    holder = engine.connect()
    try:
        with engine.begin() as conn:
            for statement in EARLIER_DDL.format(table=table_name).split(";"):
                conn.execute(sa.text(statement))
        steps = upgrade.pending(store)
        assert len(steps) == 4
        holder.begin()
        holder.execute(sa.text(f'SELECT count(*) FROM "{table_name}"'))  # a reader's lock
        started = time.monotonic()
        with pytest.raises(errors.ClaimStoreError, match="lock timeout"):
            upgrade.upgrade(store)
        assert time.monotonic() - started < 5
        assert upgrade.pending(store) == steps
        # The control: the same step without the bound is still waiting later.
        with engine.connect() as conn:
            conn.execute(sa.text("SET statement_timeout = '1500ms'"))
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                conn.execute(sa.text(
                    f'ALTER TABLE "{table_name}" DROP CONSTRAINT "{table_name}_state_check"'))
        holder.rollback()
        assert upgrade.upgrade(store) == steps
        assert upgrade.pending(store) == []
    finally:
        holder.close()
        store.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table_name}"'))
        engine.dispose()


def _settle(store: ClaimStore, key: str, **params: Any) -> list[Any]:
    """The table's settle function called directly, as the claim statement calls it."""
    values = {"key": key, "task_name": "t.charge", "task_id": "t1", "owner": "w/1",
              "payload_digest": "d" * 64, "lease_seconds": 30.0, "ttl_seconds": 3600.0,
              "retry_failed": True, "check_payload": True, "own_transaction": True, **params}
    call = ", ".join(f":{name}" for name, _ in sql_settle.SETTLE_ARGUMENTS)
    with store.engine.begin() as conn:
        answer = conn.execute(sa.text(
            f"SELECT {sql_settle.settle_name(store.table)}({call})"), values).scalar_one()
    return list(json.loads(answer))


def test_the_settle_function_counts_takes_over_or_inserts(pg_store: ClaimStore) -> None:
    # The claim statement calls it only for a key that has a row; called for
    # one that has none (purged in between), it inserts the row.
    assert _settle(pg_store, "k") == [True, 1, 1]
    # A live claim: a duplicate, counted, with the row and the verdicts.
    won, token, attempt, row, db_now, mismatch, _ = _settle(pg_store, "k")
    assert (won, token, attempt, row["duplicates"], mismatch) == (False, 1, 1, 1, False)
    assert records._json_time(db_now).utcoffset() is not None  # type: ignore[union-attr]
    assert _settle(pg_store, "k", task_id="t2", payload_digest="e" * 64)[5] is True
    # Given back: taken over, with the next token; no duplicate counted.
    assert pg_store.release("k", 1, ttl_seconds=60.0)
    assert _settle(pg_store, "k") == [True, 2, 2]
    record = pg_store.get("k")
    assert record is not None
    assert (record.state, record.token, record.duplicates) == ("running", 2, 2)
    # The store reads each answer as the claim's outcome.
    assert isinstance(pg_store.claim("k", task_id="t1", **CLAIM), Lost)
    assert pg_store.release("k", 2, ttl_seconds=60.0)
    taken = pg_store.claim("k", task_id="t1", **CLAIM)
    assert taken == Acquired(token=3, attempt=3)


def test_a_schema_named_with_capitals_gets_its_settle_function_called(
        database_url: str) -> None:
    # The function's name is written as the table's is, quoted where
    # PostgreSQL needs it: a schema with capitals stays that schema.
    schema = f"Claims{uuid.uuid4().hex[:8]}"
    store = ClaimStore(database_url, table=f"{schema}.Tasks")
    try:
        store.create_schema()
        assert upgrade.pending(store) == []
        won = store.claim("k", task_id="t1", **CLAIM)
        assert won == Acquired(token=1, attempt=1)
        assert store.release("k", won.token, ttl_seconds=60.0)
        assert store.claim("k", task_id="t1", **CLAIM) == Acquired(token=2, attempt=2)
        assert isinstance(store.claim("k", task_id="t1", **CLAIM), Lost)
    finally:
        store.drop_schema()
        with store.engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        store.dispose()


def test_an_upgrade_that_only_creates_the_function_takes_no_lock_on_the_table(
        pg_store: ClaimStore, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader holds the table: an ALTER would wait for it (and time out);
    # creating the function does not.
    monkeypatch.setattr(upgrade, "LOCK_TIMEOUT", "300ms")
    pg_store.create_schema()
    with pg_store.engine.begin() as conn:
        conn.exec_driver_sql(sql_settle.drop_settle_function(pg_store.table))
    assert upgrade.pending(pg_store) == ["create the claim's settle function"]
    engine = sa.create_engine(database_url)
    holder = engine.connect()
    try:
        holder.begin()
        holder.execute(sa.text(f'SELECT count(*) FROM "{pg_store.table_name}"'))
        assert upgrade.upgrade(pg_store) == ["create the claim's settle function"]
        assert upgrade.pending(pg_store) == []
        # The control: an ALTER of the same table waits for the reader.
        with engine.connect() as conn:
            conn.execute(sa.text("SET lock_timeout = '300ms'"))
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                conn.execute(sa.text(
                    f'ALTER TABLE "{pg_store.table_name}" DROP CONSTRAINT IF EXISTS nothing'))
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
