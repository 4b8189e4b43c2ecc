"""The heartbeat: one thread per process renews every lease the process holds.

Each claim is renewed a third of its lease after its last renewal. Claims that
fall due together are renewed in one statement per store and lease length.
A claim the statement does not return was taken over (or released by an
operator): it is marked lost, ``claim_lost`` is sent, and its completion will
raise :class:`~celery_claim.errors.ClaimLost`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from typing import Protocol

from celery_claim import errors
from celery_claim.store import ClaimStore

__all__ = ["Heartbeat", "Leased", "heartbeat"]

logger = logging.getLogger("celery_claim")

#: How soon to try again after the store could not be reached.
RETRY_AFTER = 1.0


class Leased(Protocol):
    """What the heartbeat needs of a held claim."""

    key: str
    token: int
    lease_seconds: float

    @property
    def store(self) -> ClaimStore: ...

    def mark_lost(self, where: str) -> None: ...

    def renewal_failed(self, exc: errors.ClaimStoreError) -> None: ...


class Heartbeat:
    """Renews leases in the background. Safe to use from many threads."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._due: dict[int, tuple[float, Leased]] = {}
        self._thread: threading.Thread | None = None
        # When the waiting thread wakes by itself; None while it is not waiting.
        self._sleeping_until: float | None = None
        # How long the thread waits with nothing to renew: the shortest renewal
        # interval seen, so that the next claim's renewal does not need a wake-up.
        self._idle_wait = 3600.0

    def _check_fork(self) -> None:
        # A forked child inherits the parent's bookkeeping but not its thread.
        if self._pid != os.getpid():
            self._reset()

    def hold(self, claim: Leased) -> None:
        """Start renewing ``claim``'s lease."""
        self._check_fork()
        with self._cond:
            due = time.monotonic() + claim.lease_seconds / 3
            self._due[id(claim)] = (due, claim)
            self._idle_wait = min(self._idle_wait, claim.lease_seconds / 3)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celery-claim-heartbeat", daemon=True)
                self._thread.start()
            # Wake the thread only if it would sleep past this claim's renewal:
            # a wake-up per task costs a thread switch on the task's hot path.
            if self._sleeping_until is not None and due < self._sleeping_until:
                self._cond.notify()

    def drop(self, claim: Leased) -> None:
        """Stop renewing ``claim``'s lease (it completed or was released)."""
        self._check_fork()
        with self._cond:
            self._due.pop(id(claim), None)

    def held(self) -> int:
        """How many claims this process is renewing."""
        with self._cond:
            return len(self._due)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [c for at, c in self._due.values() if at <= now]
                if not due:
                    timeout = max(min((at for at, _ in self._due.values()),
                                      default=now + self._idle_wait) - now, 0.01)
                    self._sleeping_until = now + timeout
                    self._cond.wait(timeout=timeout)
                    self._sleeping_until = None
                    continue
            self._renew(due)

    def _renew(self, due: list[Leased]) -> None:
        groups: dict[tuple[int, float], list[Leased]] = defaultdict(list)
        for claim in due:
            groups[(id(claim.store), claim.lease_seconds)].append(claim)
        for (_, lease_seconds), claims in groups.items():
            store = claims[0].store
            try:
                held = store.renew([(c.key, c.token) for c in claims], lease_seconds)
            except errors.ClaimStoreError as exc:
                logger.warning("claim heartbeat could not renew %d lease(s): %s", len(claims), exc)
                self._reschedule(claims, RETRY_AFTER)
                for claim in claims:
                    claim.renewal_failed(exc)
                continue
            except Exception:  # never let the thread die
                logger.exception("claim heartbeat failed")
                self._reschedule(claims, RETRY_AFTER)
                continue
            renewed = [c for c in claims if (c.key, c.token) in held]
            self._reschedule(renewed, lease_seconds / 3)
            for claim in claims:
                if (claim.key, claim.token) not in held and self._forget(claim):
                    claim.mark_lost("heartbeat")

    def _reschedule(self, claims: list[Leased], after: float) -> None:
        at = time.monotonic() + after
        with self._cond:
            for claim in claims:
                if id(claim) in self._due:
                    self._due[id(claim)] = (at, claim)

    def _forget(self, claim: Leased) -> bool:
        # Dropped meanwhile (completed): not lost, just finished.
        with self._cond:
            return self._due.pop(id(claim), None) is not None


#: The process's heartbeat.
heartbeat = Heartbeat()
