-- Claims whose holder is gone or paused: running, lease lapsed.
-- The next delivery of the job (a re-delivered or deferred message) takes them over.
SELECT key, task_name, task_id, owner, token, attempt,
       statement_timestamp() - lease_expires_at AS lapsed_for
FROM celery_claims
WHERE state = 'running' AND lease_expires_at < statement_timestamp()
ORDER BY lease_expires_at
LIMIT 100;
