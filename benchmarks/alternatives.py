"""Claim statements that were measured and not adopted, kept so that
``--suite schema`` shows why. ``{table}`` is the table's name.

``SINGLE_STATEMENT`` makes the claim one ``INSERT ... ON CONFLICT DO UPDATE``
without a ``WHERE`` and without the duplicate's second CTE: each ``SET``
writes the takeover's value where the acquire's rule lets the delivery take
the row (``CASE WHEN <rule> THEN <new> ELSE <old> END``) and counts a
duplicate otherwise; a losing delivery's ``CASE`` branch writes the call's
``nonce`` to a setting local to the transaction, which ``RETURNING`` reads
to tell a loser from a takeover. It is correct: while it was the claim
statement, the race suite (``tests/integration/test_race.py``) passed on it,
losers told apart and counted, and failed when the loser's branch no longer
wrote the setting; the suite now runs the adopted statement. But PostgreSQL
builds the sixteen ``CASE``
expressions, each with the rule, for every execution of the prepared
statement: a first delivery, which never evaluates them, and a duplicate
both cost more PostgreSQL CPU than with the second CTE (docs/performance.md).

``without_verdict`` is the adopted claim statement with one column less in
its duplicate's branch: the ``mismatch`` verdict (does the row hold another
job under this key). PostgreSQL builds the executor's state for every
``RETURNING`` expression of that branch on each execution, a first delivery
included, which never reaches it. A client could derive the verdict from
the row the branch returns, at the price of the acquire's rule written
twice, once in SQL and once in Python; the schema suite measures what
that would save a first delivery (docs/performance.md).

The schema suite passes ``SINGLE_STATEMENT`` one constant nonce: each of its statements runs in
a transaction of its own (autocommit), which the setting does not outlive. A
caller that runs several claims in one transaction needs a nonce per call.
"""

from __future__ import annotations

from celery_claim import sql, sql_claim
from celery_claim.statements import DriverStatement, driver_dialect


def without_verdict(table: str) -> str:
    """The claim statement without the ``mismatch`` column in its lost branch
    (psycopg's ``%(name)s`` placeholders), on ``table``."""
    statement = sql_claim._claim_conflict(sql.make_table(table), "postgresql", verdict=False)
    return DriverStatement.compile("claim", statement, driver_dialect("psycopg")).sql


SINGLE_STATEMENT = (
    'INSERT INTO {table} (key, state, token, task_name, task_id, attempt, owner, payload_dige'
    'st, duplicates, lease_expires_at, created_at, updated_at, expires_at) VALUES (%(key)s::V'
    "ARCHAR, 'running'::VARCHAR, 1::BIGINT, %(task_name)s::VARCHAR, %(task_id)s::VARCHAR, 1::"
    'INTEGER, %(owner)s::VARCHAR, %(payload_digest)s::VARCHAR, 0::INTEGER, (statement_timesta'
    'mp() + make_interval(secs => %(lease_seconds)s)), statement_timestamp(), statement_times'
    'tamp(), (statement_timestamp() + make_interval(secs => %(lease_seconds)s + %(ttl_seconds'
    ')s))) ON CONFLICT (key) DO UPDATE SET state = CASE WHEN (({table}.expires_at IS NOT NULL'
    ") AND {table}.expires_at < statement_timestamp() AND {table}.state != 'running'::VARCHAR"
    " OR ({table}.state = 'released'::VARCHAR OR {table}.state = 'failed'::VARCHAR AND %(retr"
    "y_failed)s OR {table}.state = 'running'::VARCHAR AND {table}.lease_expires_at < statemen"
    't_timestamp()) AND (NOT %(check_payload)s OR NOT ({table}.payload_digest IS NOT NULL) OR'
    ' NOT (excluded.payload_digest IS NOT NULL) OR {table}.payload_digest = excluded.payload_'
    "digest OR {table}.task_id = excluded.task_id)) THEN 'running'::VARCHAR ELSE {table}.stat"
    'e END, token = CASE WHEN (({table}.expires_at IS NOT NULL) AND {table}.expires_at < stat'
    "ement_timestamp() AND {table}.state != 'running'::VARCHAR OR ({table}.state = 'released'"
    "::VARCHAR OR {table}.state = 'failed'::VARCHAR AND %(retry_failed)s OR {table}.state = '"
    "running'::VARCHAR AND {table}.lease_expires_at < statement_timestamp()) AND (NOT %(check"
    '_payload)s OR NOT ({table}.payload_digest IS NOT NULL) OR NOT (excluded.payload_digest I'
    'S NOT NULL) OR {table}.payload_digest = excluded.payload_digest OR {table}.task_id = exc'
    'luded.task_id)) THEN {table}.token + 1::BIGINT ELSE {table}.token END, task_name = CASE '
    'WHEN (({table}.expires_at IS NOT NULL) AND {table}.expires_at < statement_timestamp() AN'
    "D {table}.state != 'running'::VARCHAR OR ({table}.state = 'released'::VARCHAR OR {table}"
    ".state = 'failed'::VARCHAR AND %(retry_failed)s OR {table}.state = 'running'::VARCHAR AN"
    'D {table}.lease_expires_at < statement_timestamp()) AND (NOT %(check_payload)s OR NOT ({'
    'table}.payload_digest IS NOT NULL) OR NOT (excluded.payload_digest IS NOT NULL) OR {tabl'
    'e}.payload_digest = excluded.payload_digest OR {table}.task_id = excluded.task_id)) THEN'
    ' excluded.task_name ELSE {table}.task_name END, task_id = CASE WHEN (({table}.expires_at'
    " IS NOT NULL) AND {table}.expires_at < statement_timestamp() AND {table}.state != 'runni"
    "ng'::VARCHAR OR ({table}.state = 'released'::VARCHAR OR {table}.state = 'failed'::VARCHA"
    "R AND %(retry_failed)s OR {table}.state = 'running'::VARCHAR AND {table}.lease_expires_a"
    't < statement_timestamp()) AND (NOT %(check_payload)s OR NOT ({table}.payload_digest IS '
    'NOT NULL) OR NOT (excluded.payload_digest IS NOT NULL) OR {table}.payload_digest = exclu'
    'ded.payload_digest OR {table}.task_id = excluded.task_id)) THEN excluded.task_id ELSE {t'
    'able}.task_id END, attempt = CASE WHEN (({table}.expires_at IS NOT NULL) AND {table}.exp'
    "ires_at < statement_timestamp() AND {table}.state != 'running'::VARCHAR OR ({table}.stat"
    "e = 'released'::VARCHAR OR {table}.state = 'failed'::VARCHAR AND %(retry_failed)s OR {ta"
    "ble}.state = 'running'::VARCHAR AND {table}.lease_expires_at < statement_timestamp()) AN"
    'D (NOT %(check_payload)s OR NOT ({table}.payload_digest IS NOT NULL) OR NOT (excluded.pa'
    'yload_digest IS NOT NULL) OR {table}.payload_digest = excluded.payload_digest OR {table}'
    '.task_id = excluded.task_id)) THEN {table}.attempt + 1::INTEGER ELSE {table}.attempt END'
    ', owner = CASE WHEN (({table}.expires_at IS NOT NULL) AND {table}.expires_at < statement'
    "_timestamp() AND {table}.state != 'running'::VARCHAR OR ({table}.state = 'released'::VAR"
    "CHAR OR {table}.state = 'failed'::VARCHAR AND %(retry_failed)s OR {table}.state = 'runni"
    "ng'::VARCHAR AND {table}.lease_expires_at < statement_timestamp()) AND (NOT %(check_payl"
    'oad)s OR NOT ({table}.payload_digest IS NOT NULL) OR NOT (excluded.payload_digest IS NOT'
    ' NULL) OR {table}.payload_digest = excluded.payload_digest OR {table}.task_id = excluded'
    '.task_id)) THEN excluded.owner ELSE {table}.owner END, payload_digest = CASE WHEN (({tab'
    'le}.expires_at IS NOT NULL) AND {table}.expires_at < statement_timestamp() AND {table}.s'
    "tate != 'running'::VARCHAR OR ({table}.state = 'released'::VARCHAR OR {table}.state = 'f"
    "ailed'::VARCHAR AND %(retry_failed)s OR {table}.state = 'running'::VARCHAR AND {table}.l"
    'ease_expires_at < statement_timestamp()) AND (NOT %(check_payload)s OR NOT ({table}.payl'
    'oad_digest IS NOT NULL) OR NOT (excluded.payload_digest IS NOT NULL) OR {table}.payload_'
    'digest = excluded.payload_digest OR {table}.task_id = excluded.task_id)) THEN excluded.p'
    'ayload_digest ELSE {table}.payload_digest END, result = CASE WHEN (({table}.expires_at I'
    "S NOT NULL) AND {table}.expires_at < statement_timestamp() AND {table}.state != 'running"
    "'::VARCHAR OR ({table}.state = 'released'::VARCHAR OR {table}.state = 'failed'::VARCHAR "
    "AND %(retry_failed)s OR {table}.state = 'running'::VARCHAR AND {table}.lease_expires_at "
    '< statement_timestamp()) AND (NOT %(check_payload)s OR NOT ({table}.payload_digest IS NO'
    'T NULL) OR NOT (excluded.payload_digest IS NOT NULL) OR {table}.payload_digest = exclude'
    'd.payload_digest OR {table}.task_id = excluded.task_id)) THEN NULL ELSE {table}.result E'
    'ND, result_content_type = CASE WHEN (({table}.expires_at IS NOT NULL) AND {table}.expire'
    "s_at < statement_timestamp() AND {table}.state != 'running'::VARCHAR OR ({table}.state ="
    " 'released'::VARCHAR OR {table}.state = 'failed'::VARCHAR AND %(retry_failed)s OR {table"
    "}.state = 'running'::VARCHAR AND {table}.lease_expires_at < statement_timestamp()) AND ("
    'NOT %(check_payload)s OR NOT ({table}.payload_digest IS NOT NULL) OR NOT (excluded.paylo'
    'ad_digest IS NOT NULL) OR {table}.payload_digest = excluded.payload_digest OR {table}.ta'
    'sk_id = excluded.task_id)) THEN NULL ELSE {table}.result_content_type END, result_conten'
    't_encoding = CASE WHEN (({table}.expires_at IS NOT NULL) AND {table}.expires_at < statem'
    "ent_timestamp() AND {table}.state != 'running'::VARCHAR OR ({table}.state = 'released'::"
    "VARCHAR OR {table}.state = 'failed'::VARCHAR AND %(retry_failed)s OR {table}.state = 'ru"
    "nning'::VARCHAR AND {table}.lease_expires_at < statement_timestamp()) AND (NOT %(check_p"
    'ayload)s OR NOT ({table}.payload_digest IS NOT NULL) OR NOT (excluded.payload_digest IS '
    'NOT NULL) OR {table}.payload_digest = excluded.payload_digest OR {table}.task_id = exclu'
    'ded.task_id)) THEN NULL ELSE {table}.result_content_encoding END, error = CASE WHEN (({t'
    'able}.expires_at IS NOT NULL) AND {table}.expires_at < statement_timestamp() AND {table}'
    ".state != 'running'::VARCHAR OR ({table}.state = 'released'::VARCHAR OR {table}.state = "
    "'failed'::VARCHAR AND %(retry_failed)s OR {table}.state = 'running'::VARCHAR AND {table}"
    '.lease_expires_at < statement_timestamp()) AND (NOT %(check_payload)s OR NOT ({table}.pa'
    'yload_digest IS NOT NULL) OR NOT (excluded.payload_digest IS NOT NULL) OR {table}.payloa'
    'd_digest = excluded.payload_digest OR {table}.task_id = excluded.task_id)) THEN NULL ELS'
    'E {table}.error END, duplicates = CASE WHEN (({table}.expires_at IS NOT NULL) AND {table'
    "}.expires_at < statement_timestamp() AND {table}.state != 'running'::VARCHAR OR ({table}"
    ".state = 'released'::VARCHAR OR {table}.state = 'failed'::VARCHAR AND %(retry_failed)s O"
    "R {table}.state = 'running'::VARCHAR AND {table}.lease_expires_at < statement_timestamp("
    ')) AND (NOT %(check_payload)s OR NOT ({table}.payload_digest IS NOT NULL) OR NOT (exclud'
    'ed.payload_digest IS NOT NULL) OR {table}.payload_digest = excluded.payload_digest OR {t'
    'able}.task_id = excluded.task_id)) THEN {table}.duplicates ELSE {table}.duplicates + 1::'
    "INTEGER + length(set_config('celery_claim.lost', %(nonce)s::VARCHAR, true)) * 0::INTEGER"
    ' END, lease_expires_at = CASE WHEN (({table}.expires_at IS NOT NULL) AND {table}.expires'
    "_at < statement_timestamp() AND {table}.state != 'running'::VARCHAR OR ({table}.state = "
    "'released'::VARCHAR OR {table}.state = 'failed'::VARCHAR AND %(retry_failed)s OR {table}"
    ".state = 'running'::VARCHAR AND {table}.lease_expires_at < statement_timestamp()) AND (N"
    'OT %(check_payload)s OR NOT ({table}.payload_digest IS NOT NULL) OR NOT (excluded.payloa'
    'd_digest IS NOT NULL) OR {table}.payload_digest = excluded.payload_digest OR {table}.tas'
    'k_id = excluded.task_id)) THEN excluded.lease_expires_at ELSE {table}.lease_expires_at E'
    'ND, updated_at = CASE WHEN (({table}.expires_at IS NOT NULL) AND {table}.expires_at < st'
    "atement_timestamp() AND {table}.state != 'running'::VARCHAR OR ({table}.state = 'release"
    "d'::VARCHAR OR {table}.state = 'failed'::VARCHAR AND %(retry_failed)s OR {table}.state ="
    " 'running'::VARCHAR AND {table}.lease_expires_at < statement_timestamp()) AND (NOT %(che"
    'ck_payload)s OR NOT ({table}.payload_digest IS NOT NULL) OR NOT (excluded.payload_digest'
    ' IS NOT NULL) OR {table}.payload_digest = excluded.payload_digest OR {table}.task_id = e'
    'xcluded.task_id)) THEN statement_timestamp() ELSE {table}.updated_at END, finished_at = '
    'CASE WHEN (({table}.expires_at IS NOT NULL) AND {table}.expires_at < statement_timestamp'
    "() AND {table}.state != 'running'::VARCHAR OR ({table}.state = 'released'::VARCHAR OR {t"
    "able}.state = 'failed'::VARCHAR AND %(retry_failed)s OR {table}.state = 'running'::VARCH"
    'AR AND {table}.lease_expires_at < statement_timestamp()) AND (NOT %(check_payload)s OR N'
    'OT ({table}.payload_digest IS NOT NULL) OR NOT (excluded.payload_digest IS NOT NULL) OR '
    '{table}.payload_digest = excluded.payload_digest OR {table}.task_id = excluded.task_id))'
    ' THEN NULL ELSE {table}.finished_at END, expires_at = CASE WHEN (({table}.expires_at IS '
    "NOT NULL) AND {table}.expires_at < statement_timestamp() AND {table}.state != 'running':"
    ":VARCHAR OR ({table}.state = 'released'::VARCHAR OR {table}.state = 'failed'::VARCHAR AN"
    "D %(retry_failed)s OR {table}.state = 'running'::VARCHAR AND {table}.lease_expires_at < "
    'statement_timestamp()) AND (NOT %(check_payload)s OR NOT ({table}.payload_digest IS NOT '
    'NULL) OR NOT (excluded.payload_digest IS NOT NULL) OR {table}.payload_digest = excluded.'
    'payload_digest OR {table}.task_id = excluded.task_id)) THEN excluded.expires_at ELSE {ta'
    "ble}.expires_at END RETURNING coalesce(current_setting('celery_claim.lost', true), ''::V"
    'ARCHAR) != %(nonce)s::VARCHAR AS won, {table}.token, {table}.attempt, CASE WHEN (coalesc'
    "e(current_setting('celery_claim.lost', true), ''::VARCHAR) = %(nonce)s::VARCHAR) THEN CA"
    "ST(row_to_json({table}.*) AS TEXT) END AS record, CASE WHEN (coalesce(current_setting('c"
    "elery_claim.lost', true), ''::VARCHAR) = %(nonce)s::VARCHAR) THEN statement_timestamp() "
    "END AS db_now, CASE WHEN (coalesce(current_setting('celery_claim.lost', true), ''::VARCH"
    'AR) = %(nonce)s::VARCHAR) THEN NOT (({table}.expires_at IS NOT NULL) AND {table}.expires'
    "_at < statement_timestamp() AND {table}.state != 'running'::VARCHAR) AND NOT (NOT %(chec"
    'k_payload)s OR NOT ({table}.payload_digest IS NOT NULL) OR NOT (%(payload_digest)s::VARC'
    'HAR IS NOT NULL) OR {table}.payload_digest = %(payload_digest)s::VARCHAR OR {table}.task'
    "_id = %(task_id)s::VARCHAR) END AS mismatch, CASE WHEN (coalesce(current_setting('celery"
    "_claim.lost', true), ''::VARCHAR) = %(nonce)s::VARCHAR) THEN CASE WHEN %(own_transaction"
    ")s THEN set_config('synchronous_commit', 'off', true) END END AS quick_commit"
)
