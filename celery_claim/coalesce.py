"""Coalesced claims: the calls that a process's threads make at the same
moment share one statement and one commit, as group commit does.

A call finds either no statement of its kind in flight, and runs its own
at once, alone (a single-threaded process never waits and never batches),
or one in flight. Then it queues, and when that statement ends the first of
the queue runs everything queued by then as one multi-row statement
(:mod:`celery_claim.sql_claim`), on the process's connection, and hands the
answers out. Nothing waits for company: a batch is what queued while the
database was busy anyway. (``in_flight`` allows more statements at once;
two measured no better than one, within the spread.)

Each call keeps its own answer and its own errors. A batch holds distinct
keys (a second call for a key waits for the next batch, where it meets the
first one's row); a batch that fails is not retried as a batch: each call
in it runs its own one-row statement again, so the call whose arguments
the database refused gets the refusal, and the others their answers.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

__all__ = ["CoalescedStatements", "Coalescer"]


class _Call:
    __slots__ = ("answer", "done", "group", "key", "lead", "params", "woken")

    def __init__(self, key: str, group: Hashable, params: dict[str, Any]) -> None:
        self.key = key
        self.group = group
        self.params = params
        # Held until this call is woken (a lock as a one-shot signal: cheaper
        # than an Event, and green-thread libraries patch it as well).
        self.woken = threading.Lock()
        self.woken.acquire()
        self.done = False  # answered by a batch
        self.lead = False  # run the next batch
        self.answer: Any = None


class Coalescer:
    """Runs concurrent calls of one operation as one statement.

    ``one(params)`` runs a single call; ``many(calls)`` runs a batch of
    distinct keys and returns each call's answer, in order. Calls of
    different ``group`` (the statement's scalar options) never share a batch.
    """

    def __init__(self, one: Callable[[dict[str, Any]], Any],
                 many: Callable[[Sequence[dict[str, Any]]], list[Any]],
                 *, limit: int = 64, in_flight: int = 1) -> None:
        self._one = one
        self._many = many
        self._limit = limit
        self._lock = threading.Lock()
        self._max_in_flight = in_flight
        self._in_flight = 0
        self._queue: list[_Call] = []
        self._pid = os.getpid()
        #: Calls answered by batches of more than one, and those batches.
        self.batched_calls = 0
        self.batches = 0

    def __call__(self, key: str, params: dict[str, Any], group: Hashable = None) -> Any:
        if self._pid != os.getpid():
            self._after_fork()
        call = None
        with self._lock:
            if self._in_flight >= self._max_in_flight:
                call = _Call(key, group, params)
                self._queue.append(call)
            else:
                self._in_flight += 1
        if call is None:  # room in flight: at once, alone
            try:
                return self._one(params)
            finally:
                self._next()
        call.woken.acquire()
        if not call.lead:  # answered, or its batch failed: then on its own
            return call.answer if call.done else self._one(params)
        return self._lead(call)

    def _lead(self, own: _Call) -> Any:
        """Run the queue's batch (``own`` among it), then wake the next leader."""
        with self._lock:
            batch: list[_Call] = []
            keys: set[str] = set()
            for call in self._queue:
                # Not another leader's call: that one is on its way to its own batch.
                if len(batch) < self._limit and call.key not in keys \
                        and call.group == own.group and (call is own or not call.lead):
                    batch.append(call)
                    keys.add(call.key)
            self._queue = [call for call in self._queue if call not in batch]
        try:
            if len(batch) == 1:
                return self._one(own.params)
            try:
                answers = self._many([call.params for call in batch])
            except Exception:
                # Each call runs its own statement: its own answer or error.
                for call in batch:
                    if call is not own:
                        call.woken.release()
                return self._one(own.params)
            except BaseException:  # interrupted (a soft time limit): the others go on
                for call in batch:
                    if call is not own:
                        call.woken.release()
                raise
            self.batches += 1
            self.batched_calls += len(batch)
            for call, answer in zip(batch, answers, strict=True):
                call.answer, call.done = answer, True
                if call is not own:
                    call.woken.release()
            return own.answer
        finally:
            self._next()

    def _after_fork(self) -> None:
        """A forked child starts empty: the parent's statements in flight, and
        the threads waiting on them, are not in this process."""
        self._lock = threading.Lock()
        self._in_flight = 0
        self._queue = []
        self._pid = os.getpid()

    def _next(self) -> None:
        """The statement ended: the first queued call leads the next batch."""
        with self._lock:
            queue = self._queue
            leader = next((call for call in queue if not call.lead), None)
            if leader is None:
                self._in_flight -= 1
                return
            leader.lead = True
        leader.woken.release()


Run = Callable[[str, str, dict[str, Any]], Any]


def _json(rows: list[dict[str, Any]]) -> str:
    """A batch's rows as the statement's one JSON parameter. Floats that JSON
    cannot hold (NaN, infinity) raise here, and the batch's calls then run
    their own statements, as for any refused batch. Text goes as it is, not
    as ``\\u`` escapes: encoded to the connection's encoding like any other
    parameter (a string that cannot be, such as a lone surrogate, refuses the
    batch), never decoded by PostgreSQL's JSON parser into something else."""
    return json.dumps(rows, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


class CoalescedStatements:
    """The store's ``claim`` and its plain completion, coalesced.

    ``run(operation, statement name, params)`` runs one named statement (the
    store's own). A claim's answer is its row of ``claim`` (or ``None``); a
    completion's, whether it completed.
    """

    def __init__(self, run: Run) -> None:
        self._run = run
        #: The store's one-claim statement (``ClaimStore.claim_statement``).
        self.claim_statement = "claim"
        self.claim = Coalescer(
            lambda params: run("acquire", self.claim_statement, params).first(),
            self._claim_many)
        self.complete = Coalescer(self._complete_one, self._complete_many)

    def _claim_many(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        first = batch[0]
        params = {
            "batch": _json([{
                "key": p["key"], "task_name": p["task_name"], "task_id": p["task_id"],
                "owner": p["owner"], "payload_digest": p["payload_digest"],
                "lease_seconds": float(p["lease_seconds"]),
                "ttl_seconds": float(p["ttl_seconds"])} for p in batch]),
            "keys": [p["key"] for p in batch],
            "retry_failed": first["retry_failed"], "check_payload": first["check_payload"],
        }
        rows = {row.key: row for row in self._run("acquire", "claim_many", params).rows}
        return [rows.get(p["key"]) for p in batch]

    def _complete_one(self, params: dict[str, Any]) -> bool:
        name = "complete_with_result" if "result" in params else "complete"
        return self._run("complete", name, params).first() is not None

    def _complete_many(self, batch: Sequence[dict[str, Any]]) -> list[bool]:
        params = {"batch": _json([{
            "key": p["key"], "token": p["token"], "state": p["state"], "error": p["error"],
            "ttl_seconds": float(p["ttl_seconds"]),
            "result": None if p.get("result") is None else p["result"].hex(),
            "result_content_type": p.get("result_content_type"),
            "result_content_encoding": p.get("result_content_encoding")} for p in batch]),
            "keys": [p["key"] for p in batch]}
        done = {(row.key, row.token)
                for row in self._run("complete", "complete_many", params).rows}
        return [(p["key"], p["token"]) in done for p in batch]
