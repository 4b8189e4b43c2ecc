"""Every row of the semantics table, through ``.apply()`` (eager mode runs the
same code as a worker), on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.exceptions import Ignore

from celery_claim import (
    ClaimInProgress,
    ClaimLost,
    ClaimPayloadMismatch,
    ClaimResultUnavailable,
    ClaimStore,
    ClaimStoreError,
    ClaimTask,
    signals,
)
from celery_claim.store import Acquired, Lost


@pytest.fixture
def app(make_app: Callable[..., Celery], any_url: str) -> Celery:
    return make_app(any_url)


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    receivers = []
    for name in ("claim_acquired", "claim_duplicate", "claim_completed", "claim_released",
                 "claim_lost", "claim_store_error"):
        def receiver(sender: Any = None, _name: str = name, **kw: Any) -> None:
            seen.append((_name, kw))
        getattr(signals, name).connect(receiver, weak=False)
        receivers.append((name, receiver))
    yield seen
    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver)


def names(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in events]


def effects_table(app: Celery) -> tuple[sa.Engine, sa.Table]:
    """A table the task bodies write to, in the claim database."""
    engine = app.tasks  # finalize
    url = app.conf.claim_database_url
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    table = sa.Table(f"{app.conf.claim_table}_fx", meta,
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                     sa.Column("key", sa.String(100)), sa.Column("token", sa.Integer))
    meta.create_all(engine)
    return engine, table


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


# --- first delivery and duplicates ----------------------------------------------------

def test_first_delivery_runs_and_stores_the_result(app: Celery, events: list) -> None:
    runs = []

    @app.task(base=ClaimTask, bind=True, claim_key="charge:{order_id}", shared=False)
    def charge(self: ClaimTask, order_id: int, amount: int) -> dict[str, int]:
        runs.append((self.claim.key, self.claim.token, self.claim.attempt))
        return {"charged": amount}

    result = charge.apply((7, 100))
    assert result.get() == {"charged": 100}
    assert runs == [("charge:7", 1, 1)]
    record = charge.claim_store.get("charge:7")
    assert record is not None
    assert (record.state, record.token, record.result, record.lease_expires_at) == (
        "succeeded", 1, {"charged": 100}, None)
    assert record.finished_at is not None
    assert record.expires_at is not None
    assert names(events) == ["claim_acquired", "claim_completed"]


def test_duplicate_after_success_returns_stored_result_without_running(
        app: Celery, events: list) -> None:
    runs = []

    @app.task(base=ClaimTask, bind=True, claim_key="charge:{order_id}", shared=False)
    def charge(self: ClaimTask, order_id: int) -> list[int]:
        runs.append(order_id)
        return [order_id, len(runs)]

    assert charge.apply((1,)).get() == [1, 1]
    for _ in range(3):
        assert charge.apply((1,)).get() == [1, 1]
    assert runs == [1]
    assert charge.claim_store.get("charge:1").duplicates == 3  # type: ignore[union-attr]
    duplicates = [kw for name, kw in events if name == "claim_duplicate"]
    assert [d["outcome"] for d in duplicates] == ["succeeded"] * 3
    # Its receivers get the whole row each duplicate lost to, as it was counted.
    assert [(d["record"].state, d["record"].token, d["record"].duplicates, d["record"].result)
            for d in duplicates] == [("succeeded", 1, n, [1, 1]) for n in (1, 2, 3)]
    assert [d["token"] for d in duplicates] == [1, 1, 1]


def test_same_task_id_is_a_duplicate_with_the_default_key(app: Celery) -> None:
    runs = []

    @app.task(base=ClaimTask, bind=True, shared=False)
    def job(self: ClaimTask, x: int) -> int:
        runs.append(self.claim.key)
        return x * 2

    assert job.apply((2,), task_id="same").get() == 4
    assert job.apply((2,), task_id="same").get() == 4
    assert job.apply((2,), task_id="other").get() == 4
    assert runs == [f"{job.name}:same", f"{job.name}:other"]


def test_payload_mismatch_raises_and_runs_nothing(app: Celery, events: list) -> None:
    runs = []

    @app.task(base=ClaimTask, bind=True, claim_key="charge:{order_id}", shared=False)
    def charge(self: ClaimTask, order_id: int, amount: int) -> int:
        runs.append(amount)
        return amount

    charge.apply((1, 100)).get()
    assert charge.apply((1,), {"amount": 100}).get() == 100  # same payload, other spelling
    with pytest.raises(ClaimPayloadMismatch, match="different task arguments"):
        charge.apply((1, 999)).get()
    assert runs == [100]
    assert [kw["outcome"] for n, kw in events if n == "claim_duplicate"] == [
        "succeeded", "mismatch"]


def test_payload_check_can_be_turned_off(app: Celery) -> None:
    @app.task(base=ClaimTask, bind=True, claim_key="c:{order_id}", claim_check_payload=False,
              shared=False)
    def charge(self: ClaimTask, order_id: int, amount: int) -> int:
        return amount

    assert charge.apply((1, 100)).get() == 100
    assert charge.apply((1, 999)).get() == 100


# --- running duplicates --------------------------------------------------------

def hold_running(task: Any, args: tuple, release: threading.Event) -> threading.Thread:
    """Run ``task`` in a thread; it holds its claim until ``release`` is set."""
    started = threading.Event()
    task._test_started = started
    task._test_release = release
    thread = threading.Thread(target=lambda: task.apply(args).get())
    thread.start()
    assert started.wait(10), "the holder did not start"
    return thread


def blocking_task(app: Celery, **options: Any) -> Any:
    @app.task(base=ClaimTask, bind=True, claim_key="k:{n}", shared=False, **options)
    def job(self: ClaimTask, n: int) -> str:
        self._test_started.set()  # type: ignore[attr-defined]
        self._test_release.wait(20)  # type: ignore[attr-defined]
        return f"done {n}"
    return app.tasks[job.name]


@pytest.mark.parametrize("policy", ["raise", "defer"])
def test_duplicate_while_running_raises_in_progress(app: Celery, policy: str,
                                                    events: list) -> None:
    # defer re-publishes through the broker; in eager mode there is none to
    # wait on, so it raises like "raise" (a worker test covers the re-publish).
    job = blocking_task(app, claim_on_running=policy)
    release = threading.Event()
    holder = hold_running(job, (1,), release)
    try:
        with pytest.raises(ClaimInProgress) as info:
            job.apply((1,)).get()
        assert "lease_remaining" in str(info.value)
    finally:
        release.set()
        holder.join()
    assert job.claim_store.get("k:1").state == "succeeded"  # type: ignore[union-attr]
    assert [kw["outcome"] for n, kw in events if n == "claim_duplicate"] == ["running-raised"]


def test_duplicate_while_running_skip_is_ignored(app: Celery, events: list) -> None:
    job = blocking_task(app, claim_on_running="skip")
    release = threading.Event()
    holder = hold_running(job, (2,), release)
    try:
        result = job.apply((2,))
        assert result.state == "IGNORED"
    finally:
        release.set()
        holder.join()
    assert [kw["outcome"] for n, kw in events if n == "claim_duplicate"] == ["running-skipped"]


# --- failures -------------------------------------------------------------------

def failing_task(app: Celery, runs: list, **options: Any) -> Any:
    @app.task(base=ClaimTask, bind=True, claim_key="f:{n}", shared=False, **options)
    def job(self: ClaimTask, n: int) -> int:
        runs.append(self.claim.token)
        if len(runs) == 1:
            raise ValueError("card declined")
        return n
    return job


def test_failure_with_release_lets_a_later_delivery_run(app: Celery) -> None:
    runs: list[int] = []
    job = failing_task(app, runs)
    with pytest.raises(ValueError, match="card declined"):
        job.apply((5,)).get()
    record = job.claim_store.get("f:5")
    assert (record.state, record.error) == ("failed", "ValueError: card declined")
    assert job.apply((5,)).get() == 5
    assert runs == [1, 2]  # the second delivery acquired with token + 1


def test_failure_with_keep_is_terminal(app: Celery, events: list) -> None:
    runs: list[int] = []
    job = failing_task(app, runs, claim_on_failure="keep")
    with pytest.raises(ValueError, match="card declined"):
        job.apply((5,)).get()
    assert job.apply((5,)).state == "IGNORED"
    assert runs == [1]
    assert [kw["outcome"] for n, kw in events if n == "claim_duplicate"] == ["failed"]


# --- retries --------------------------------------------------------------------

def test_self_retry_releases_before_the_next_attempt_is_published(
        app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worst overlap: the next attempt starts inside retry(), before unwinding."""
    from celery.canvas import Signature

    runs: list[int] = []
    seen_at_publish: list[str] = []

    @app.task(base=ClaimTask, bind=True, claim_key="r:{n}", max_retries=3, shared=False)
    def job(self: ClaimTask, n: int) -> int:
        runs.append(self.claim.token)
        if len(runs) == 1:
            self.retry(countdown=0)
        return n

    def publish_and_run_now(sig: Signature, *a: Any, **kw: Any) -> Any:
        record = job.claim_store.get("r:1")
        seen_at_publish.append(record.state if record else "missing")
        # A second worker picks the retry up at once, in another thread.
        thread = threading.Thread(target=lambda: job.apply(sig.args, task_id=sig.id).get())
        thread.start()
        thread.join()

    monkeypatch.setattr(Signature, "apply_async", publish_and_run_now)
    # A request as a worker builds it (not eager), so retry() really publishes.
    job.push_request(id="attempt-1", retries=0, is_eager=False, called_directly=False,
                     delivery_info={"routing_key": "celery", "exchange": ""}, args=(1,),
                     kwargs={}, headers=None)
    try:
        from celery.exceptions import Retry
        with pytest.raises(Retry):
            job.__call__(1)
    finally:
        job.pop_request()
    assert seen_at_publish == ["released"]
    assert runs == [1, 2]
    assert job.claim_store.get("r:1").state == "succeeded"  # type: ignore[union-attr]


def test_eager_retry_runs_the_next_attempt_under_a_new_token(app: Celery, events: list) -> None:
    runs: list[int] = []

    @app.task(base=ClaimTask, bind=True, claim_key="r:{n}", max_retries=3, shared=False)
    def job(self: ClaimTask, n: int) -> int:
        runs.append(self.claim.token)
        if len(runs) < 3:
            raise self.retry(countdown=0)
        return n

    assert job.apply((1,)).get() == 1
    assert runs == [1, 2, 3]
    assert [kw["reason"] for n, kw in events if n == "claim_released"] == ["retry", "retry"]


def test_autoretry_for(app: Celery) -> None:
    runs: list[int] = []

    @app.task(base=ClaimTask, bind=True, claim_key="a:{n}", autoretry_for=(ConnectionError,),
              retry_kwargs={"max_retries": 5, "countdown": 0}, shared=False)
    def job(self: ClaimTask, n: int) -> int:
        runs.append(self.claim.token)
        if len(runs) < 3:
            raise ConnectionError("flaky")
        return n

    assert job.apply((4,)).get() == 4
    assert runs == [1, 2, 3]


def test_retries_exhausted_records_the_failure(app: Celery) -> None:
    runs: list[int] = []

    @app.task(base=ClaimTask, bind=True, claim_key="x:{n}", max_retries=1,
              claim_on_failure="keep", shared=False)
    def job(self: ClaimTask, n: int) -> int:
        runs.append(self.claim.token)
        raise self.retry(exc=RuntimeError("still down"), countdown=0)

    with pytest.raises(RuntimeError, match="still down"):
        job.apply((1,)).get()
    assert runs == [1, 2]
    record = job.claim_store.get("x:1")
    assert (record.state, record.token) == ("failed", 2)  # type: ignore[union-attr]


# --- leases, takeover and fencing -----------------------------------------------------

def test_paused_holder_gets_claim_lost_and_its_atomic_writes_roll_back(
        app: Celery, events: list) -> None:
    engine, fx = effects_table(app)
    resume = threading.Event()
    paused = threading.Event()
    outcome: list[BaseException | object] = []

    # SQLite has one writer: an open atomic() transaction would block the
    # takeover, so there the paused holder writes only after it resumes.
    write_before_pause = app.conf.claim_database_url.startswith("postgresql")

    @app.task(base=ClaimTask, bind=True, claim_key="p:{n}", claim_lease_seconds=1,
              claim_heartbeat=False, shared=False)
    def job(self: ClaimTask, n: int) -> int:
        if write_before_pause or self.claim.token > 1:
            with self.claim.atomic() as conn:
                conn.execute(fx.insert().values(key=self.claim.key, token=self.claim.token))
        if self.claim.token == 1:
            paused.set()
            resume.wait(20)  # paused past the lease, no heartbeat: like SIGSTOP
            with self.claim.atomic() as conn:
                conn.execute(fx.insert().values(key=self.claim.key, token=self.claim.token))
        return self.claim.token

    def first() -> None:
        try:
            outcome.append(job.apply((1,)).get())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    assert paused.wait(10)
    time.sleep(1.3)  # the lease lapses
    assert job.apply((1,)).get() == 2  # taken over with token + 1
    resume.set()
    thread.join()
    assert isinstance(outcome[0], ClaimLost)
    with engine.connect() as conn:
        assert conn.execute(sa.select(fx.c.token)).scalars().all() == [2]
    assert ("claim_lost", "complete") in [(n, kw.get("where")) for n, kw in events]
    record = job.claim_store.get("p:1")
    assert (record.state, record.token, record.result) == ("succeeded", 2, 2)
    engine.dispose()


def test_heartbeat_keeps_a_long_body_claimed(app: Celery) -> None:
    release = threading.Event()
    job = blocking_task(app, claim_lease_seconds=1, claim_on_running="raise")
    holder = hold_running(job, (3,), release)
    try:
        time.sleep(2.5)  # more than two leases
        with pytest.raises(ClaimInProgress):
            job.apply((3,)).get()
    finally:
        release.set()
        holder.join()
    record = job.claim_store.get("k:3")
    assert (record.state, record.token) == ("succeeded", 1)  # type: ignore[union-attr]


def test_heartbeat_notices_a_lost_claim(app: Celery, events: list) -> None:
    release = threading.Event()
    job = blocking_task(app, claim_lease_seconds=1)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            job.apply((4,)).get()
        except BaseException as exc:
            outcome.append(exc)

    started = threading.Event()
    job._test_started, job._test_release = started, release
    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(10)
    # An operator releases it by force; the heartbeat sees the token is gone.
    assert job.claim_store.force_release("k:4", 1, force=True)
    deadline = time.monotonic() + 5
    while "claim_lost" not in names(events) and time.monotonic() < deadline:
        time.sleep(0.05)
    release.set()
    thread.join()
    assert ("claim_lost", "heartbeat") in [(n, kw.get("where")) for n, kw in events]
    assert isinstance(outcome[0], ClaimLost)


# --- atomic writes ----------------------------------------------------------------------

def test_atomic_writes_commit_with_completion_and_roll_back_on_failure(app: Celery) -> None:
    engine, fx = effects_table(app)
    seen_inside: list[int] = []

    @app.task(base=ClaimTask, bind=True, claim_key="w:{n}", shared=False)
    def job(self: ClaimTask, n: int, fail: bool) -> int:
        with self.claim.atomic() as conn:
            conn.execute(fx.insert().values(key=self.claim.key, token=self.claim.token))
        seen_inside.append(count(engine, fx))  # not visible before completion
        with self.claim.session() as session:
            session.execute(fx.insert().values(key="orm", token=self.claim.token))
        if fail:
            raise RuntimeError("after the writes")
        return n

    with pytest.raises(RuntimeError):
        job.apply((1, True)).get()
    assert count(engine, fx) == 0
    assert job.apply((2, False)).get() == 2
    assert count(engine, fx) == 2
    assert seen_inside == [0, 0]
    engine.dispose()


def test_a_failing_atomic_block_leaves_earlier_blocks(app: Celery) -> None:
    engine, fx = effects_table(app)

    @app.task(base=ClaimTask, bind=True, claim_key="b:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> int:
        with self.claim.atomic() as conn:
            conn.execute(fx.insert().values(key="first", token=1))
        try:
            with self.claim.atomic() as conn:
                conn.execute(fx.insert().values(key="second", token=1))
                raise KeyError("oops")
        except KeyError:
            pass
        return n

    assert job.apply((1,)).get() == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(fx.c.key)).scalars().all() == ["first"]
    engine.dispose()


# --- results ------------------------------------------------------------------------------

def test_unencodable_result_is_not_stored_and_duplicates_fail_with_the_reason(
        app: Celery) -> None:
    @app.task(base=ClaimTask, bind=True, claim_key="j:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> object:
        return {n, "a set is not JSON"}

    assert isinstance(job.apply((1,)).get(), set)
    record = job.claim_store.get("j:1")
    assert (record.state, record.has_result) == ("succeeded", False)  # type: ignore[union-attr]
    duplicate = job.apply((1,))  # its own task id: its caller must not wait for nothing
    assert duplicate.state == "FAILURE"
    assert isinstance(duplicate.result, ClaimResultUnavailable)
    assert duplicate.result.context["holder_task_id"] == record.task_id  # type: ignore[union-attr]


def test_none_result_is_stored_as_json_null(app: Celery) -> None:
    @app.task(base=ClaimTask, bind=True, claim_key="n:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> None:
        return None

    job.apply((1,)).get()
    assert job.claim_store.get("n:1").has_result  # type: ignore[union-attr]
    duplicate = job.apply((1,))
    assert (duplicate.state, duplicate.result) == ("SUCCESS", None)


# --- modes ------------------------------------------------------------------------------------

def test_direct_call_is_a_plain_function_call(app: Celery) -> None:
    engine, fx = effects_table(app)

    @app.task(base=ClaimTask, bind=True, claim_key="d:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> bool:
        with self.claim.atomic() as conn:
            conn.execute(fx.insert().values(key="direct", token=self.claim.token))
        return self.claim.claimed

    job.claim_store.create_schema()
    assert job(1) is False
    assert job(1) is False
    assert count(engine, fx) == 2
    assert job.claim_store.get("d:1") is None
    engine.dispose()


def test_always_eager_delay_has_worker_semantics(make_app: Callable[..., Celery],
                                                 any_url: str) -> None:
    app = make_app(any_url, task_always_eager=True)
    runs = []

    @app.task(base=ClaimTask, bind=True, claim_key="e:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> int:
        runs.append(n)
        return n

    assert job.delay(1).get() == 1
    assert job.delay(1).get() == 1
    assert runs == [1]


def test_claim_enabled_false_runs_every_time(make_app: Callable[..., Celery],
                                             any_url: str) -> None:
    app = make_app(any_url, claim_enabled=False)
    engine, fx = effects_table(app)

    @app.task(base=ClaimTask, bind=True, claim_key="o:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> int:
        with self.claim.atomic() as conn:
            conn.execute(fx.insert().values(key="off", token=0))
        return n

    job.apply((1,)).get()
    job.apply((1,)).get()
    assert count(engine, fx) == 2
    engine.dispose()


def test_self_claim_outside_a_body_is_a_clear_error(app: Celery) -> None:
    @app.task(base=ClaimTask, bind=True, shared=False)
    def job(self: ClaimTask) -> None: ...

    with pytest.raises(Exception, match="only while the body runs"):
        _ = job.claim


# --- fail closed -----------------------------------------------------------------------------

def test_unreachable_store_runs_no_body(make_app: Callable[..., Celery]) -> None:
    app = make_app("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    runs = []

    @app.task(base=ClaimTask, bind=True, shared=False)
    def job(self: ClaimTask) -> None:
        runs.append(1)

    with pytest.raises(ClaimStoreError, match="claim store"):
        job.apply().get()
    assert runs == []


def test_ignore_raised_by_the_body_releases(app: Celery) -> None:
    runs = []

    @app.task(base=ClaimTask, bind=True, claim_key="i:{n}", shared=False)
    def job(self: ClaimTask, n: int) -> int:
        runs.append(self.claim.token)
        if len(runs) == 1:
            raise Ignore()
        return n

    assert job.apply((1,)).state == "IGNORED"
    assert job.apply((1,)).get() == 1
    assert runs == [1, 2]


def _claim(store: ClaimStore, key: str, task_id: str, digest: str | None) -> object:
    return store.claim(key, task_name="t", task_id=task_id, owner="w", payload_digest=digest,
                       lease_seconds=30, retry_failed=True, check_payload=True)


def test_a_duplicate_reads_the_row_it_lost_to_in_the_acquire(store: ClaimStore) -> None:
    won = _claim(store, "k", "t1", "d")
    assert isinstance(won, Acquired)
    held = _claim(store, "k", "t2", "d")
    if store.connector.dialect == "sqlite":  # no data-modifying CTE: lost_to reads it
        assert held is None
        held = store.lost_to("k", task_id="t2", payload_digest="d")
    assert isinstance(held, Lost)
    assert (held.record.state, held.record.token, held.takeable, held.mismatch) == (
        "running", 1, False, False)
    assert held.record.lease_remaining > 25
    assert store.complete("k", won.token, result={"n": 1}, has_result=True, ttl_seconds=60)
    done = _claim(store, "k", "t3", "d") or store.lost_to("k", task_id="t3", payload_digest="d")
    assert isinstance(done, Lost)
    assert (done.record.state, done.record.result, done.takeable, done.mismatch) == (
        "succeeded", {"n": 1}, False, False)
    other = _claim(store, "k", "t4", "e") or store.lost_to("k", task_id="t4", payload_digest="e")
    assert isinstance(other, Lost)
    assert (other.mismatch, other.takeable) == (True, False)
    # Each losing delivery counted once, in the statement that read the row.
    assert store.get("k").duplicates == 3  # type: ignore[union-attr]
    assert store.release("k", won.token, ttl_seconds=60) is False  # finished: not released
