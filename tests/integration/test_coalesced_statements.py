"""The coalesced statements on PostgreSQL: a batch's rows, sent as one JSON
parameter, claim and complete exactly as the one-row statements do.

The one-row statements are the oracle: the same deliveries, on twin keys,
go through ``claim`` and ``complete_with_result`` one by one, and each
batch row must read back the same (times aside).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from celery_claim import ClaimStore, errors, results
from celery_claim.store import Acquired, Lost

pytestmark = pytest.mark.postgres

CLAIM = {"task_name": "t.charge", "owner": "w/1", "lease_seconds": 30.0,
         "ttl_seconds": 3600.0, "retry_failed": True, "check_payload": True}
#: Keys JSON must escape, and text beyond ASCII.
AWKWARD = ['k "quoted" \\ back/slash', "k ünïcødé 🎉", "k\ttab\nnewline", "k plain"]
#: A result's bytes that are not text, and one that is.
BINARY = results.Encoded(b"\x00\xff\x80\x01binary", "application/x-python-serialize", "binary")
TEXT = results.Encoded(b'{"amount": "12.50"}', "application/json", "utf-8")


def _params(key: str, task_id: str, digest: str | None, n: int = 0) -> dict[str, Any]:
    # A lease and a retention of each row's own, so that a batch that mixed
    # them up, between rows or between the two, would store other times.
    return {**CLAIM, "key": key, "task_id": task_id, "payload_digest": digest,
            "lease_seconds": 30.0 + n, "ttl_seconds": 3600.0 + 60 * n}


def _claims(store: ClaimStore, batch: list[dict[str, Any]], *, coalesced: bool) -> list[Any]:
    assert store.coalesced is not None
    if coalesced:
        return store.coalesced._claim_many(batch)
    return [store._run("acquire", "claim", params).first() for params in batch]


def _completions(store: ClaimStore, batch: list[dict[str, Any]], *,
                 coalesced: bool) -> list[bool]:
    assert store.coalesced is not None
    if coalesced:
        return store.coalesced._complete_many(batch)
    return [store.coalesced._complete_one(params) for params in batch]


def _record(store: ClaimStore, key: str) -> dict[str, Any]:
    found = store.get(key)
    assert found is not None, key
    values = _fields(found)
    # Times as spans from the row's last write: the same on either side.
    for name in ("lease_expires_at", "expires_at", "finished_at"):
        at = values.pop(name)
        values[f"{name} - updated_at"] = (
            None if at is None else round((at - found.updated_at).total_seconds()))
    for name in ("key", "created_at", "updated_at", "db_now"):
        values.pop(name)
    return values


def _fields(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def _answer(row: Any) -> tuple[Any, ...]:
    """What a caller reads of a claim's row: won, or lost with its verdict."""
    if row is None:
        return (None,)
    settled = getattr(row, "settled", None)  # claim: the key had a row
    outcome = Lost.settled(settled) if settled is not None else None
    if isinstance(outcome, Acquired) or (settled is None and getattr(row, "won", True)):
        won = outcome or row
        return ("won", won.token, won.attempt)
    lost = outcome if isinstance(outcome, Lost) else Lost.from_row(row)
    record = {k: v for k, v in _fields(lost.record).items()
              if k in ("state", "token", "task_id", "attempt", "payload_digest", "duplicates",
                       "has_result", "stored_result", "error")}
    return ("lost", lost.takeable, lost.mismatch, record)


def _task_id(key: str, n: int) -> str:
    """The same task id on either side of the comparison."""
    return f"{key.split(':', 1)[1]}-{n}"


def _run_story(store: ClaimStore, prefix: str, *, coalesced: bool) -> dict[str, Any]:
    """Earlier claims one by one, then a batch of deliveries: fresh awkward
    keys, a duplicate of a finished claim, the same key with other arguments,
    and a released claim taken over; then their completions as a batch, with
    one fenced out (a stale token for a claim held elsewhere)."""
    done, other, released, held = (f"{prefix}{name}"
                                   for name in ("done", "other", "released", "held"))
    for key in (done, other, released, held):
        won = store.acquire(key, task_id=_task_id(key, 1),
                            **{**CLAIM, "payload_digest": "a" * 64})
        assert isinstance(won, Acquired)
        if key == released:
            assert store.release(key, won.token, ttl_seconds=3600.0)
        elif key != held:
            assert store.complete(key, won.token, result=TEXT, has_result=True,
                                  ttl_seconds=3600.0)
    fresh = [f"{prefix}{key}" for key in AWKWARD]
    batch = [_params(key, f"task-{n}", None, n) for n, key in enumerate(fresh)]
    batch += [_params(done, _task_id(done, 1), "a" * 64),  # the same job again
              _params(other, _task_id(other, 2), "b" * 64),  # another job, same key
              _params(released, _task_id(released, 2), "a" * 64)]  # released: taken over
    rows = _claims(store, batch, coalesced=coalesced)
    answers = [_answer(row) for row in rows]
    # The last fresh key stays running: its lease and expiry as the batch set them.
    taken = [(p, answer) for p, answer in zip(batch, answers, strict=True)
             if answer[0] == "won" and p["key"] != fresh[-1]]
    completions = []
    for n, (params, answer) in enumerate(taken):
        completion: dict[str, Any] = {"key": params["key"], "token": answer[1],
                                      "state": "succeeded", "error": None,
                                      "ttl_seconds": 7200.0 + 60 * n}
        if n == 2:  # a failure, with an error beyond ASCII
            completion.update(state="failed", error="Karte abgelehnt: «Limit» überschritten")
        if n % 3 == 0:
            completion.update(result=BINARY.payload, result_content_type=BINARY.content_type,
                              result_content_encoding=BINARY.content_encoding)
        elif n % 3 == 1:
            completion.update(result=TEXT.payload, result_content_type=TEXT.content_type,
                              result_content_encoding=TEXT.content_encoding)
        completions.append(completion)
    # A completion fenced out: not the holder's token.
    completions.append({"key": held, "token": 5, "state": "succeeded", "error": None,
                        "ttl_seconds": 3600.0})
    completed = _completions(store, completions, coalesced=coalesced)
    return {"answers": answers, "completed": completed,
            "records": [_record(store, key) for key in (*fresh, done, other, released, held)]}


def test_a_batch_claims_and_completes_each_delivery_as_the_one_row_statements_do(
        pg_store: ClaimStore) -> None:
    one_by_one = _run_story(pg_store, "single:", coalesced=False)
    batched = _run_story(pg_store, "batch:", coalesced=True)
    # The story did what it says, one row at a time ...
    answers = one_by_one["answers"]
    assert [a[0] for a in answers] == ["won"] * 4 + ["lost", "lost", "won"]
    assert answers[4][2] is False  # the same job: no mismatch
    assert answers[5][2] is True  # other arguments under the key: mismatch
    assert answers[4][3]["stored_result"] == TEXT  # a duplicate reads the stored result
    assert answers[6][1:] == (2, 2)  # the released claim taken over: token 2, attempt 2
    assert one_by_one["completed"] == [True] * 4 + [False]
    records = one_by_one["records"]
    assert records[2]["state"] == "failed"
    assert records[2]["error"] == "Karte abgelehnt: «Limit» überschritten"
    # Each completion's own retention, and the running one's own lease and expiry.
    assert [r["expires_at - updated_at"] for r in records[:3]] == [7200, 7260, 7320]
    assert records[3]["state"] == "running"
    assert records[3]["lease_expires_at - updated_at"] == 33
    assert records[3]["expires_at - updated_at"] == 33 + 3780
    stored = [r["stored_result"] for r in one_by_one["records"][:4]]
    assert stored == [BINARY, TEXT, None, None]
    assert [r["task_id"] for r in one_by_one["records"][:4]] == [f"task-{n}" for n in range(4)]
    assert one_by_one["records"][-1]["state"] == "running"  # the fenced-out one's holder
    # ... and the batch did exactly the same, row for row.
    assert batched == one_by_one


def test_a_batch_the_database_refuses_is_an_error_not_a_partial_batch(
        pg_store: ClaimStore) -> None:
    # A NUL cannot be stored in text: the batch is refused whole, here by
    # psycopg before it is sent (the coalescer then runs each call's own
    # statement, which gets the refusal).
    batch = [_params("fine", "t-1", None), _params("bad\x00key", "t-2", None)]
    assert pg_store.coalesced is not None
    with pytest.raises(errors.ClaimStoreRefused, match=r"NUL|Unicode"):
        pg_store.coalesced._claim_many(batch)
    assert pg_store.get("fine") is None
    # A lease JSON cannot carry (not a number): refused before it is sent.
    with pytest.raises(ValueError, match="JSON"):
        pg_store.coalesced._claim_many([{**_params("fine", "t-1", None),
                                         "lease_seconds": float("nan")}])
