"""One job's key and payload digest survive every trip a message makes: the
first delivery, the retry's re-publish, a deferred duplicate's re-publish and a
fresh duplicate, through the json, pickle and msgpack task serializers (a real
``celery worker``). A digest that changed on the way would fail a duplicate
with ``ClaimPayloadMismatch``; a key that changed would run the body twice."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.core_apps import AppModule, app_module
from support.core_values import ARGUMENTS, KEY, job

from celery_claim import keys

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

SOURCE = '''
import time
import sqlalchemy as sa

SERIALIZER = os.environ["CORE_SERIALIZER"]
app.conf.update(task_serializer=SERIALIZER, accept_content=["json", SERIALIZER],
                claim_lease_seconds=1)


@app.task(base=ClaimTask, bind=True, name="ser.job", claim_key=os.environ["CORE_KEY"])
def job(self, when, day, ident, amount, raw, text, pair, nested):
    if self.request.retries == 0:
        raise self.retry(countdown=0.1)  # re-published by Celery from the decoded args
    time.sleep(1.5)  # a duplicate arriving now is deferred: re-published by the claim
    with self.claim.atomic() as conn:
        conn.execute(sa.text(f'INSERT INTO "{os.environ["CORE_TABLE"]}_fx" VALUES (1)'))
    return self.claim.key
'''

@pytest.fixture(params=sorted(ARGUMENTS))
def republish(request: pytest.FixtureRequest, tmp_path: Path, database_url: str,
              redis_url: str, table_name: str) -> Iterator[AppModule]:
    for module in app_module(tmp_path, SOURCE, redis_url=redis_url, database_url=database_url,
                             table=table_name, CORE_SERIALIZER=request.param, CORE_KEY=KEY,
                             C_FORCE_ROOT="1"):
        module.rows("CREATE TABLE {fx} (n integer NOT NULL)")
        yield module


def test_key_and_digest_survive_retry_and_defer_republishes(republish: AppModule) -> None:
    serializer = republish.env["CORE_SERIALIZER"]
    arguments = ARGUMENTS[serializer]
    builder = keys.KeyBuilder("ser.job", inspect.signature(job), KEY)
    key = builder.build("", (), arguments)
    digest = keys.payload_digest(builder.bind((), arguments))
    producer = republish.producer(task_serializer=serializer,
                                  accept_content=["json", serializer])
    with republish.worker(pool="threads", concurrency=2) as worker:
        first = republish.send(producer, "ser.job", **{"kwargs": arguments})
        time.sleep(0.8)  # the retry holds the claim, sleeping
        deferred = republish.send(producer, "ser.job", *arguments.values())
        assert first.get(timeout=30) == key
        assert deferred.get(timeout=30) == key
        fresh = republish.send(producer, "ser.job", *arguments.values())
        assert fresh.get(timeout=30) == key
        logs = worker.logs()
    assert "ClaimPayloadMismatch" not in logs
    assert "outcome=running-deferred" in logs, logs
    assert republish.rows("SELECT count(*) AS n FROM {fx}")[0].n == 1  # one body run
    (row,) = republish.rows("SELECT key, payload_digest, attempt, duplicates FROM {table}")
    assert (row.key, row.payload_digest) == (key, digest)
    assert row.attempt == 2  # the first attempt, then its retry
    assert row.duplicates >= 2
