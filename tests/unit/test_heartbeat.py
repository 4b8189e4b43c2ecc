"""The heartbeat: holding and dropping a claim take no lock, yet every held
lease is renewed in time and a dropped one never comes back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest

from celery_claim import errors
from celery_claim.lease import Heartbeat

pytestmark = pytest.mark.unit


class Store:
    """Renews what it is asked to, except keys it was told are gone."""

    def __init__(self) -> None:
        self.renewed: list[tuple[float, str]] = []
        self.gone: set[str] = set()
        self.during_renewal: Any = None

    def renew(self, pairs: Iterable[tuple[str, int]], lease_seconds: float) -> set[tuple[str, int]]:
        pairs = list(pairs)
        if self.during_renewal is not None:
            self.during_renewal()
        self.renewed += [(time.monotonic(), key) for key, _ in pairs]
        return {(key, token) for key, token in pairs if key not in self.gone}


class Leased:
    def __init__(self, store: Store, key: str, lease_seconds: float) -> None:
        self.store = store
        self.key = key
        self.token = 1
        self.lease_seconds = lease_seconds
        self.lost: list[str] = []

    def mark_lost(self, where: str) -> None:
        self.lost.append(where)

    def renewal_failed(self, exc: errors.ClaimStoreError) -> None:
        pass


def _wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_held_lease_is_renewed_a_third_of_the_way_and_again() -> None:
    beat, store = Heartbeat(), Store()
    claim = Leased(store, "k", lease_seconds=0.3)
    started = time.monotonic()
    beat.hold(claim)  # type: ignore[arg-type]
    _wait_for(lambda: len(store.renewed) >= 3)
    first = store.renewed[0][0] - started
    assert 0.09 <= first < 0.3  # before the lease lapses
    beat.drop(claim)  # type: ignore[arg-type]
    assert beat.held() == 0
    count = len(store.renewed)
    time.sleep(0.35)
    assert len(store.renewed) <= count + 1  # at most the renewal already under way
    assert claim.lost == []


def test_a_shorter_lease_than_any_before_wakes_the_thread() -> None:
    # The thread sleeps up to the shortest renewal interval it has seen (10 s
    # here); a claim with a 0.3 s lease must not wait for that.
    beat, store = Heartbeat(), Store()
    beat.hold(Leased(store, "long", lease_seconds=30.0))  # type: ignore[arg-type]
    time.sleep(0.05)
    short = Leased(store, "short", lease_seconds=0.3)
    beat.hold(short)  # type: ignore[arg-type]
    _wait_for(lambda: any(key == "short" for _, key in store.renewed), timeout=1.0)


def test_a_claim_dropped_while_it_is_renewed_stays_dropped_and_is_not_lost() -> None:
    beat, store = Heartbeat(), Store()
    claim = Leased(store, "k", lease_seconds=0.3)
    store.gone.add("k")  # the renewal does not return it: completed meanwhile
    dropped = threading.Event()

    def drop_now() -> None:
        beat.drop(claim)  # type: ignore[arg-type]
        dropped.set()

    store.during_renewal = drop_now
    beat.hold(claim)  # type: ignore[arg-type]
    assert dropped.wait(2.0)
    time.sleep(0.3)
    assert beat.held() == 0
    assert claim.lost == []
    assert len(store.renewed) == 1


def test_a_claim_the_renewal_misses_is_lost_once() -> None:
    beat, store = Heartbeat(), Store()
    claim = Leased(store, "k", lease_seconds=0.3)
    store.gone.add("k")  # taken over by another worker
    beat.hold(claim)  # type: ignore[arg-type]
    _wait_for(lambda: claim.lost == ["heartbeat"])
    time.sleep(0.3)
    assert claim.lost == ["heartbeat"]
    assert beat.held() == 0


def test_a_renewal_that_fails_is_tried_again_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_claim import lease

    monkeypatch.setattr(lease, "RETRY_AFTER", 0.05)
    beat, store = Heartbeat(), Store()
    failures = [errors.ClaimStoreUnavailable("down")]

    def failing() -> None:
        if failures:
            raise failures.pop()

    store.during_renewal = failing
    claim = Leased(store, "k", lease_seconds=0.3)
    beat.hold(claim)  # type: ignore[arg-type]
    _wait_for(lambda: len(store.renewed) >= 1)
    beat.drop(claim)  # type: ignore[arg-type]
    assert claim.lost == []


# The thread is ended by an exception on purpose: pytest reports it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_that_ended_is_started_again_by_the_next_hold() -> None:
    # A heartbeat thread can end in ways no `except Exception` catches (a
    # greenlet killed, GreenletExit, SystemExit): the next hold must start a
    # new one, or no lease would be renewed again in this process.
    beat, store = Heartbeat(), Store()
    ended: list[threading.Thread] = []

    def end_the_thread() -> None:
        ended.append(threading.current_thread())
        raise SystemExit

    store.during_renewal = end_the_thread
    first = Leased(store, "first", lease_seconds=0.15)
    beat.hold(first)
    _wait_for(lambda: beat._thread is None)
    # Joined: its exception is reported within this test, not a later one.
    ended[0].join(timeout=5)
    assert not ended[0].is_alive()
    store.during_renewal = None
    beat.drop(first)
    second = Leased(store, "second", lease_seconds=30.0)  # no shorter than before
    beat.hold(second)
    assert beat._thread is not None
    assert beat._thread.is_alive()
    third = Leased(store, "third", lease_seconds=0.15)
    beat.hold(third)
    _wait_for(lambda: any(key == "third" for _, key in store.renewed))
    beat.drop(second)
    beat.drop(third)
