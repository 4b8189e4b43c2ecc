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
from typing import Any, Protocol

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
    """Renews leases in the background. Safe to use from many threads.

    :meth:`hold` and :meth:`drop` run on every task's path, so they take no
    lock: each is one dictionary operation, atomic on its own. The thread
    never sleeps longer than the shortest renewal interval it has seen, so a
    claim held while it sleeps is renewed on time without waking it; only a
    claim with a shorter lease than any before (or the first claim) wakes it.
    Each entry is a mutable ``[due, claim]`` pair that the thread updates in
    place: a claim dropped meanwhile is never put back.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._due: dict[int, list[Any]] = {}
        self._thread: threading.Thread | None = None
        # The longest the thread sleeps: the shortest renewal interval seen.
        self._idle_wait = 3600.0

    def _check_fork(self) -> None:
        # A forked child inherits the parent's bookkeeping but not its thread.
        if self._pid != os.getpid():
            self._reset()

    def hold(self, claim: Leased) -> None:
        """Start renewing ``claim``'s lease."""
        self._check_fork()
        interval = claim.lease_seconds / 3
        self._due[id(claim)] = [time.monotonic() + interval, claim]
        if interval < self._idle_wait or self._thread is None:
            self._start(interval)

    def _start(self, interval: float) -> None:
        """Start the thread, or wake it to sleep no longer than ``interval``."""
        with self._cond:
            self._idle_wait = min(self._idle_wait, interval)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celery-claim-heartbeat", daemon=True)
                self._thread.start()
            self._cond.notify()

    def drop(self, claim: Leased) -> None:
        """Stop renewing ``claim``'s lease (it completed or was released)."""
        self._due.pop(id(claim), None)

    def held(self) -> int:
        """How many claims this process is renewing."""
        return len(self._due)

    def _run(self) -> None:
        try:
            while True:
                try:
                    self._beat()
                except Exception:  # never let the thread die: holders do not restart it
                    logger.exception("claim heartbeat failed")
                    time.sleep(RETRY_AFTER)
        finally:
            # Ended all the same (a greenlet killed, an interpreter shutting
            # down): the next hold starts a new thread.
            if self._thread is threading.current_thread():
                self._thread = None

    def _beat(self) -> None:
        """Renew what is due, or sleep until something is."""
        entries = list(self._due.values())  # one atomic copy: holders go on meanwhile
        now = time.monotonic()
        due = [claim for at, claim in entries if at <= now]
        if not due:
            wake = min((at for at, _ in entries), default=now + self._idle_wait)
            with self._cond:
                self._cond.wait(timeout=max(min(wake, now + self._idle_wait) - now, 0.01))
            return
        try:
            self._renew(due)
        except Exception:
            logger.exception("claim heartbeat failed")
            self._reschedule(due, RETRY_AFTER)

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
        for claim in claims:
            entry = self._due.get(id(claim))
            if entry is not None and entry[1] is claim:
                entry[0] = at  # in place: a claim dropped meanwhile stays dropped

    def _forget(self, claim: Leased) -> bool:
        # Dropped meanwhile (completed): not lost, just finished.
        entry = self._due.get(id(claim))
        return entry is not None and entry[1] is claim and \
            self._due.pop(id(claim), None) is entry


#: The process's heartbeat.
heartbeat = Heartbeat()
