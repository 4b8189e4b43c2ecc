"""The claims table and the two statements of a first delivery as the previous
commit of this release had them, so that ``--suite schema`` measures before
and after in the same run: ``VARCHAR(n)`` columns, a check constraint on
``state``, an index on the leases of running claims beside the purge's, a
completion that always moved ``expires_at``, and the duplicate's branch of
the claim returning the row it lost to as two dozen columns. ``{table}`` is
the table's name.
"""

from __future__ import annotations

DDL = (
    'CREATE TABLE {table} (\n        key VARCHAR(512) NOT NULL, \n        state VARCHAR(16) NOT'
    ' NULL, \n        token BIGINT NOT NULL, \n        task_name VARCHAR(255) NOT NULL,'
    ' \n        task_id VARCHAR(255) NOT NULL, \n        attempt INTEGER NOT NULL, \n        '
    'owner VARCHAR(255) NOT NULL, \n        payload_digest VARCHAR(64), \n        result BYTEA,'
    ' \n        result_content_type VARCHAR(128), \n        result_content_encoding '
    "VARCHAR(32), \n        error TEXT, \n        duplicates INTEGER DEFAULT '0' NOT NULL,"
    ' \n        lease_expires_at TIMESTAMP WITH TIME ZONE, \n        created_at TIMESTAMP WITH '
    'TIME ZONE NOT NULL, \n        updated_at TIMESTAMP WITH TIME ZONE NOT NULL, \n        '
    'finished_at TIMESTAMP WITH TIME ZONE, \n        expires_at TIMESTAMP WITH TIME ZONE,'
    ' \n        PRIMARY KEY (key), \n        CONSTRAINT {table}_state_check CHECK (state IN '
    "('running', 'succeeded', 'failed', 'released'))\n);\n\nCREATE INDEX {table}_expires_idx ON "
    '{table} (expires_at) WHERE expires_at IS NOT NULL;\n\nCREATE INDEX '
    "{table}_running_lease_idx ON {table} (lease_expires_at) WHERE state = 'running';"
)

CLAIM = (
    'WITH won AS \n(INSERT INTO {table} (key, state, token, task_name, task_id, attempt, '
    'owner, payload_digest, duplicates, lease_expires_at, created_at, updated_at) VALUES '
    "(%(key)s::VARCHAR, 'running'::VARCHAR, 1::BIGINT, %(task_name)s::VARCHAR, "
    '%(task_id)s::VARCHAR, 1::INTEGER, %(owner)s::VARCHAR, %(payload_digest)s::VARCHAR, '
    '0::INTEGER, (statement_timestamp() + make_interval(secs => %(lease_seconds)s)), '
    'statement_timestamp(), statement_timestamp()) ON CONFLICT (key) DO UPDATE SET state = '
    "'running'::VARCHAR, token = ({table}.token + 1::BIGINT), task_name = excluded.task_name,"
    ' task_id = excluded.task_id, attempt = ({table}.attempt + 1::INTEGER), owner = '
    'excluded.owner, payload_digest = excluded.payload_digest, result = NULL, '
    'result_content_type = NULL, result_content_encoding = NULL, error = NULL, '
    'lease_expires_at = excluded.lease_expires_at, updated_at = statement_timestamp(), '
    'finished_at = NULL, expires_at = NULL WHERE ({table}.expires_at IS NOT NULL) AND '
    "{table}.expires_at < statement_timestamp() OR ({table}.state = 'released'::VARCHAR OR "
    "{table}.state = 'failed'::VARCHAR AND %(retry_failed)s OR {table}.state = "
    "'running'::VARCHAR AND {table}.lease_expires_at < statement_timestamp()) AND (NOT "
    '%(check_payload)s OR NOT ({table}.payload_digest IS NOT NULL) OR NOT '
    '(excluded.payload_digest IS NOT NULL) OR {table}.payload_digest = '
    'excluded.payload_digest OR {table}.task_id = excluded.task_id) RETURNING {table}.token, '
    '{table}.attempt), \nlost AS \n(UPDATE {table} SET duplicates=({table}.duplicates + '
    '1::INTEGER) WHERE {table}.key = %(key)s::VARCHAR AND NOT (EXISTS (SELECT 1 \nFROM won)) '
    'RETURNING {table}.key, {table}.state, {table}.token, {table}.task_name, {table}.task_id,'
    ' {table}.attempt, {table}.owner, {table}.payload_digest, {table}.result, '
    '{table}.result_content_type, {table}.result_content_encoding, {table}.error, '
    '{table}.duplicates, {table}.lease_expires_at, {table}.created_at, {table}.updated_at, '
    '{table}.finished_at, {table}.expires_at, ({table}.result IS NOT NULL) AS has_result, '
    'statement_timestamp() AS db_now, false AS takeable, NOT (({table}.expires_at IS NOT '
    'NULL) AND {table}.expires_at < statement_timestamp()) AND NOT (NOT %(check_payload)s OR '
    'NOT ({table}.payload_digest IS NOT NULL) OR NOT (%(payload_digest)s::VARCHAR IS NOT '
    'NULL) OR {table}.payload_digest = %(payload_digest)s::VARCHAR OR {table}.task_id = '
    '%(task_id)s::VARCHAR) AS mismatch, CASE WHEN %(own_transaction)s THEN '
    "set_config('synchronous_commit', 'off', true) END AS quick_commit)\n SELECT false AS won,"
    ' lost.token, lost.attempt, lost.key, lost.state, lost.task_name, lost.task_id, '
    'lost.owner, lost.payload_digest, lost.result, lost.result_content_type, '
    'lost.result_content_encoding, lost.error, lost.duplicates, lost.lease_expires_at, '
    'lost.created_at, lost.updated_at, lost.finished_at, lost.expires_at, lost.has_result, '
    'lost.db_now, lost.takeable, lost.mismatch, lost.quick_commit \nFROM lost UNION ALL SELECT'
    ' true AS anon_1, won.token, won.attempt, NULL AS anon_2, NULL AS anon__1, NULL AS '
    'anon__2, NULL AS anon__3, NULL AS anon__4, NULL AS anon__5, NULL AS anon__6, NULL AS '
    'anon__7, NULL AS anon__8, NULL AS anon__9, NULL AS anon__10, NULL AS anon__11, NULL AS '
    'anon__12, NULL AS anon__13, NULL AS anon__14, NULL AS anon__15, NULL AS anon__16, NULL '
    'AS anon__17, NULL AS anon__18, NULL AS anon__19, NULL AS anon__20 \nFROM won'
)

COMPLETE = (
    'UPDATE {table} SET state=%(state)s::VARCHAR, result=%(result)s, '
    'result_content_type=%(result_content_type)s::VARCHAR, '
    'result_content_encoding=%(result_content_encoding)s::VARCHAR, error=%(error)s::VARCHAR, '
    'lease_expires_at=NULL, updated_at=statement_timestamp(), '
    'finished_at=statement_timestamp(), expires_at=(statement_timestamp() + '
    'make_interval(secs => %(ttl_seconds)s)) WHERE {table}.key = %(key)s::VARCHAR AND '
    "{table}.token = %(token)s::BIGINT AND {table}.state = 'running'::VARCHAR RETURNING "
    '{table}.token'
)
