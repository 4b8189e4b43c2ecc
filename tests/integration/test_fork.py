"""Prefork children must never share the parent's database connections."""

from __future__ import annotations

import os
import signal
import time

import pytest

from celery_claim import ClaimStore
from celery_claim.connectors import Connector


def child_work(store: ClaimStore, child: int) -> int:
    for n in range(300):
        key = f"c{child}-{n}"
        try:
            won = store.acquire(key, task_name="t", task_id=key, owner=str(os.getpid()),
                                payload_digest=None, lease_seconds=30)
            if won is None:
                return 2
            record = store.note_duplicate(key)
            if record is None or record.key != key:
                return 3  # another process's reply on a shared socket
            if not store.complete(key, won.token, result={"n": n}, has_result=True,
                                  ttl_seconds=60):
                return 4
        except Exception:
            return 5
    return 0


def fork_children(store: ClaimStore) -> list[int]:
    # The parent used the store (as a worker does at start), so its pool
    # holds a live connection when the children are forked.
    assert store.stats() == []
    pids = []
    for child in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                code = child_work(store, child)
            finally:
                os._exit(code)
        pids.append(pid)
    # A child reading another's reply on a shared socket can wait forever.
    codes: dict[int, int] = {}
    deadline = time.monotonic() + 15
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    for pid in pids:
        if pid not in codes:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            codes[pid] = -9
    return [codes[pid] for pid in pids]


def test_forked_children_open_their_own_connections(pg_store: ClaimStore) -> None:
    assert fork_children(pg_store) == [0, 0, 0]
    assert len(pg_store.list_claims(limit=1000)) == 900


@pytest.mark.control
def test_control_children_sharing_the_parents_socket_get_wrong_replies(
        pg_store: ClaimStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # The naive store: no fork check, so the children keep the parent's pool.
    monkeypatch.setattr(Connector, "_check_fork", lambda self: None)
    assert fork_children(pg_store) != [0, 0, 0], "the harness cannot see a shared socket"
