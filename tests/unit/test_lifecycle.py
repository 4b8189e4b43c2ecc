"""The claim's life cycle, transition by transition, in seconds: eager tasks
on SQLite whose database clock the test moves (no sleeping, no threads, no
workers, no services). Each test is one row of the semantics table
(docs/guarantees.md, DESIGN.md section 3)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

from celery_claim import (
    ClaimInProgress,
    ClaimLost,
    ClaimRecord,
    ClaimStore,
    ClaimTask,
)

pytestmark = pytest.mark.unit

LEASE = 30.0
TTL = 3600.0


class Clock:
    """The database's clock (SQLite's ``celery_claim_now()``), moved by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(make_app: Callable[..., Celery], tmp_path: Path) -> Celery:
    return make_app(f"sqlite:///{tmp_path}/claims.sqlite3", claim_heartbeat=False,
                    claim_lease_seconds=LEASE, claim_ttl_seconds=TTL)


class Job:
    """A claimed task with a business key, the bodies it ran, and its store."""

    def __init__(self, app: Celery, clock: Clock, **options: Any) -> None:
        self.ran: list[tuple[int, int]] = []  # (n, token) per body run
        self.behaviour: Callable[[Any, int], Any] = lambda task, n: n
        ran, job = self.ran, self

        @app.task(base=ClaimTask, bind=True, claim_key="job:{n}", shared=False, **options)
        def task(self: ClaimTask, n: int) -> Any:
            ran.append((n, self.claim.token))
            return job.behaviour(self, n)

        self.task = task
        self.store: ClaimStore = task.claim_store
        self.store.connector.clock = clock  # type: ignore[attr-defined]
        self.store.create_schema()

    def apply(self, n: int = 1, **options: Any) -> Any:
        return self.task.apply((n,), **options)

    def record(self, n: int = 1) -> ClaimRecord:
        record = self.store.get(f"job:{n}")
        assert record is not None
        return record

    def hold(self, n: int = 1, task_id: str = "elsewhere", **options: Any) -> int:
        """Another worker acquires the key (its body is running meanwhile)."""
        won = self.store.acquire(f"job:{n}", task_name=self.task.name, task_id=task_id,
                                 owner="other-worker/1", payload_digest=None,
                                 lease_seconds=LEASE, **options)
        assert won is not None
        return won.token


def test_first_delivery_runs_the_body_and_stores_the_result(app: Celery, clock: Clock) -> None:
    job = Job(app, clock)
    assert job.apply(7).get() == 7
    assert job.ran == [(7, 1)]
    record = job.record(7)
    assert (record.state, record.token, record.attempt, record.result) == ("succeeded", 1, 1, 7)
    assert record.lease_expires_at is None
    assert record.finished_at is not None
    # Finished within its first lease: kept until that lease's end plus the
    # TTL, the expiry its acquire set (the completion leaves it, a HOT update).
    assert record.expires_at == record.created_at + datetime.timedelta(seconds=LEASE + TTL)
    assert record.expires_at - record.finished_at <= datetime.timedelta(seconds=LEASE + TTL)


def test_a_duplicate_while_the_holder_runs_does_not_run(app: Celery, clock: Clock) -> None:
    job = Job(app, clock)
    job.hold()
    clock.advance(LEASE - 1)  # the lease is still live
    with pytest.raises(ClaimInProgress):
        job.apply().get()
    assert job.ran == []
    assert (job.record().state, job.record().duplicates) == ("running", 1)


def test_a_skipped_duplicate_while_the_holder_runs_is_ignored(app: Celery, clock: Clock) -> None:
    job = Job(app, clock, claim_on_running="skip")
    job.hold()
    assert job.apply().state == "IGNORED"
    assert job.ran == []


def test_a_duplicate_after_success_returns_the_stored_result(app: Celery, clock: Clock) -> None:
    job = Job(app, clock)
    job.behaviour = lambda task, n: {"n": n, "items": [1, 2]}
    first = job.apply().get()
    clock.advance(TTL - 1)  # any time before the claim expires
    assert job.apply().get() == first
    assert job.ran == [(1, 1)]
    assert job.record().duplicates == 1


def _fails(task: Any, n: int) -> Any:
    raise ValueError("the job failed")


def test_after_a_failure_release_lets_the_next_delivery_run(app: Celery, clock: Clock) -> None:
    job = Job(app, clock, claim_on_failure="release")
    job.behaviour = _fails
    with pytest.raises(ValueError, match="the job failed"):
        job.apply().get()
    assert (job.record().state, job.record().error) == ("failed", "ValueError: the job failed")
    job.behaviour = lambda task, n: "second"
    assert job.apply().get() == "second"
    assert job.ran == [(1, 1), (1, 2)]
    assert (job.record().state, job.record().token, job.record().attempt) == ("succeeded", 2, 2)


def test_after_a_failure_keep_runs_nothing_again(app: Celery, clock: Clock) -> None:
    job = Job(app, clock, claim_on_failure="keep")
    job.behaviour = _fails
    with pytest.raises(ValueError, match="the job failed"):
        job.apply().get()
    assert job.apply().state == "IGNORED"
    assert job.ran == [(1, 1)]
    assert (job.record().state, job.record().token) == ("failed", 1)


def test_a_lapsed_lease_is_taken_over_with_the_next_token(app: Celery, clock: Clock) -> None:
    job = Job(app, clock)
    held = job.hold()
    clock.advance(LEASE + 1)  # the holder died: its lease lapsed
    assert job.record().is_stale
    assert job.apply().get() == 1
    assert job.ran == [(1, held + 1)]
    assert (job.record().state, job.record().token) == ("succeeded", held + 1)


def test_a_paused_holder_loses_its_completion_and_its_atomic_writes(
        app: Celery, clock: Clock, tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/claims.sqlite3")
    effects = sa.Table("effects", sa.MetaData(), sa.Column("token", sa.Integer))
    effects.metadata.create_all(engine)
    job = Job(app, clock)
    taken_over: list[int] = []

    def paused_past_its_lease(task: Any, n: int) -> Any:
        clock.advance(LEASE + 1)  # like SIGSTOP: no heartbeat, the lease lapses
        taken_over.append(job.hold(task_id="successor"))  # another worker takes over
        with task.claim.atomic() as conn:  # then the holder resumes and writes
            conn.execute(effects.insert().values(token=task.claim.token))
        return n

    job.behaviour = paused_past_its_lease
    with pytest.raises(ClaimLost):
        job.apply().get()
    assert taken_over == [2]
    with engine.connect() as conn:
        assert conn.execute(sa.select(effects.c.token)).all() == []  # rolled back
    record = job.record()
    assert (record.state, record.token, record.task_id) == ("running", 2, "successor")
    assert not job.store.complete("job:1", 1, ttl_seconds=TTL)  # fenced: token 1 is stale
    engine.dispose()


def test_retry_releases_the_claim_for_the_next_attempt(app: Celery, clock: Clock) -> None:
    job = Job(app, clock, max_retries=1)

    def retry_once(task: Any, n: int) -> Any:
        if task.request.retries == 0:
            raise task.retry(countdown=0)
        return task.request.retries

    job.behaviour = retry_once
    job.apply()  # eager: the retry runs inside retry()
    assert job.ran == [(1, 1), (1, 2)]
    record = job.record()
    assert (record.state, record.token, record.attempt, record.result) == ("succeeded", 2, 2, 1)


def test_force_release_refuses_a_live_lease_unless_forced(app: Celery, clock: Clock) -> None:
    job = Job(app, clock)
    token = job.hold()
    assert not job.store.force_release("job:1", token)
    assert job.record().state == "running"
    assert not job.store.force_release("job:1", token + 1, force=True)  # fenced by token
    assert job.store.force_release("job:1", token, force=True)
    assert (job.record().state, job.record().error) == ("released", "released by operator")
    assert job.apply().get() == 1  # released: the next delivery runs
    assert job.ran == [(1, token + 1)]


def test_force_release_of_a_lapsed_lease_needs_no_force(app: Celery, clock: Clock) -> None:
    job = Job(app, clock)
    token = job.hold()
    clock.advance(LEASE + 1)
    assert job.store.force_release("job:1", token)
    assert job.record().state == "released"


def test_expired_claims_are_purged_and_start_again(app: Celery, clock: Clock) -> None:
    job = Job(app, clock)
    job.apply(1).get()
    job.apply(2).get()
    clock.advance(LEASE + TTL - 1)  # finished at once: kept until the first lease's end + TTL
    assert job.store.purge() == 0
    assert job.apply(1).get() == 1  # still a duplicate
    clock.advance(2)
    assert job.record(1).is_expired
    assert job.apply(1).get() == 1  # expired: a new job under the same key
    assert job.ran == [(1, 1), (2, 1), (1, 2)]
    assert job.store.purge() == 1  # only key 2 is still expired
    assert job.store.get("job:2") is None
    assert job.record(1).state == "succeeded"


def test_renewal_extends_only_the_leases_still_held(app: Celery, clock: Clock) -> None:
    job = Job(app, clock)
    one, two = job.hold(1), job.hold(2)
    clock.advance(LEASE - 1)
    assert job.store.renew([("job:1", one), ("job:2", two + 1)], LEASE) == {("job:1", one)}
    clock.advance(2)
    assert job.record(1).is_live
    assert job.record(2).is_stale


# --- retention: what expires_at becomes --------------------------------------------


def _seconds(later: datetime.datetime | None, earlier: datetime.datetime | None) -> float:
    assert later is not None
    assert earlier is not None
    return (later - earlier).total_seconds()


def test_a_claim_that_outlives_its_first_lease_is_kept_ttl_after_it_finished(
        app: Celery, clock: Clock) -> None:
    job = Job(app, clock)
    token = job.hold(ttl_seconds=TTL)
    clock.advance(LEASE - 1)
    assert job.store.renew([("job:1", token)], LEASE) == {("job:1", token)}
    clock.advance(LEASE - 1)  # past the first lease's end, within the renewed one
    assert job.store.complete("job:1", token, result=1, has_result=True, ttl_seconds=TTL)
    record = job.record()
    assert _seconds(record.expires_at, record.finished_at) == pytest.approx(TTL, abs=0.01)


def test_a_completion_asking_a_shorter_ttl_than_its_acquire_gets_it(
        app: Celery, clock: Clock) -> None:
    # The acquire's expiry stands only if it keeps the claim between ttl and
    # ttl plus the rest of the lease: a completion's own ttl is never cut or
    # stretched by more than that.
    job = Job(app, clock)
    token = job.hold(ttl_seconds=TTL)
    assert job.store.complete("job:1", token, ttl_seconds=0.0)
    record = job.record()
    assert record.expires_at == record.finished_at
    clock.advance(0.01)
    assert job.store.purge() == 1


def test_a_release_keeps_the_claim_by_the_same_rule(app: Celery, clock: Clock) -> None:
    job = Job(app, clock)
    token = job.hold(ttl_seconds=TTL)
    assert job.store.release("job:1", token, ttl_seconds=TTL)
    record = job.record()
    assert _seconds(record.expires_at, record.created_at) == pytest.approx(LEASE + TTL, abs=0.01)


def test_a_running_claim_never_expires_only_its_lease_lapses(app: Celery, clock: Clock) -> None:
    # Its expiry was set at acquire (lease + ttl ahead); a holder that keeps
    # renewing runs past it, and still holds the claim.
    job = Job(app, clock)
    token = job.hold(ttl_seconds=1.0)
    for _ in range(3):
        clock.advance(LEASE - 1)
        assert job.store.renew([("job:1", token)], LEASE) == {("job:1", token)}
    record = job.record()
    assert record.expires_at is not None
    assert record.expires_at < record.db_now
    assert record.is_live
    assert not record.is_expired
    with pytest.raises(ClaimInProgress):
        job.apply().get()
    assert job.ran == []
    assert job.store.purge() == 0


def test_the_default_key_stores_no_digest_and_a_business_key_does(
        app: Celery, clock: Clock) -> None:
    # A key made of the task id names one message: other arguments under it
    # are a retry of that message, which the payload check lets through anyway.
    job = Job(app, clock)
    assert job.apply(3).get() == 3
    assert job.record(3).payload_digest is not None

    @app.task(base=ClaimTask, bind=True, shared=False)
    def by_message(self: ClaimTask, n: int) -> int:
        return n

    by_message.claim_store.connector.clock = clock  # type: ignore[attr-defined]
    outcome = by_message.apply((4,))
    assert outcome.get() == 4
    record = by_message.claim_store.get(f"{by_message.name}:{outcome.id}")
    assert record is not None
    assert record.payload_digest is None
