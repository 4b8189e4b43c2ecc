"""The handle a task body sees as ``self.claim``."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from celery_claim import errors
from celery_claim.connectors.base import Transaction
from celery_claim.store import ClaimStore

if TYPE_CHECKING:
    from sqlalchemy import orm

__all__ = ["Claim"]

logger = logging.getLogger("celery_claim")
_LOST_LOCK = threading.Lock()


class Claim:
    """The claim the running body holds.

    ``key`` and ``token`` are what an external system should get as its
    idempotency key: the key names the job, the token names this acquisition
    (it grows by one on every takeover).
    """

    def __init__(self, *, store: ClaimStore | None, key: str, token: int, attempt: int,
                 task_id: str, lease_seconds: float,
                 on_lost: Callable[[Claim, str], None] | None = None,
                 claimed: bool = True) -> None:
        self._store = store
        #: False for a direct call or with ``claim_enabled=False``: no claim
        #: is held, and ``atomic()`` is a plain transaction committed when the
        #: body returns.
        self.claimed = claimed
        self.key = key
        self.token = token
        self.attempt = attempt
        self.task_id = task_id
        self.lease_seconds = lease_seconds
        self.acquired_at = time.monotonic()
        self.released = False
        self._lost: str | None = None
        self._on_lost = on_lost
        self._transaction: Transaction | None = None

    @property
    def store(self) -> ClaimStore:
        if self._store is None:
            raise errors.ClaimConfigurationError(
                "self.claim.atomic() needs a claim store: set claim_database_url or claim_engine")
        return self._store

    def __repr__(self) -> str:
        return f"<Claim {self.key!r} token={self.token} attempt={self.attempt}>"

    @property
    def lost(self) -> bool:
        """True once the heartbeat saw another worker take the claim over."""
        return self._lost is not None

    @property
    def idempotency_key(self) -> str:
        """``"<key>#<token>"``: unique per acquisition, for external systems."""
        return f"{self.key}#{self.token}"

    def check(self) -> None:
        """Raise :class:`ClaimLost` if the claim is known to be lost."""
        if self._lost is not None:
            raise errors.ClaimLost(key=self.key, token=self.token, noticed_by=self._lost)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Any]:
        """A transaction whose writes commit together with the claim's completion.

        Gives the connector's handle: a SQLAlchemy ``Connection`` with the
        SQLAlchemy connector; ``None`` where the body writes through its own
        library (Django's ORM). The writes become visible only when the body
        has returned and the fenced completion succeeded, in the same
        transaction. If the body raises, or the claim was lost, they are
        rolled back. A block that raises leaves no writes of its own; earlier
        blocks are kept.
        """
        self.check()
        if self._transaction is None:
            self._transaction = transaction = self.store.begin(key=self.key)
            try:
                yield transaction.handle
            except BaseException:
                self.rollback()
                raise
            return
        with self._transaction.savepoint() as handle:
            yield handle

    @contextlib.contextmanager
    def session(self, **options: Any) -> Iterator[orm.Session]:
        """An ORM ``Session`` on the :meth:`atomic` connection, flushed at the end.

        ``session.commit()`` inside only flushes; the transaction commits with
        the claim's completion.
        """
        from sqlalchemy import orm

        with self.atomic() as connection:
            if connection is None:
                raise errors.ClaimConfigurationError(
                    "self.claim.session() is a SQLAlchemy session: this claim store's connector "
                    "has no SQLAlchemy connection; write through your own library inside "
                    "self.claim.atomic()", connector=type(self.store.connector).__name__)
            with orm.Session(bind=connection, **options) as session:
                yield session
                # Ends the session's own transaction (a savepoint, or nothing);
                # the connection's transaction commits with the completion.
                session.commit()

    # --- used by ClaimTask ---------------------------------------------------

    @property
    def connection(self) -> Transaction | None:
        """The open atomic() transaction, if the body opened one: the store
        runs the completion in it (``ClaimStore.complete(connection=...)``)."""
        return self._transaction

    def commit(self) -> None:
        transaction, self._transaction = self._transaction, None
        if transaction is not None:
            transaction.commit(key=self.key)

    def rollback(self) -> None:
        transaction, self._transaction = self._transaction, None
        if transaction is not None:
            transaction.rollback()

    # Leased protocol (the heartbeat)
    def mark_lost(self, where: str) -> None:
        with _LOST_LOCK:  # rare: one lock for every claim of the process
            if self._lost is not None:
                return
            self._lost = where
        if self._on_lost is not None:
            self._on_lost(self, where)

    def renewal_failed(self, exc: errors.ClaimStoreError) -> None:
        logger.debug("lease renewal of %s failed: %s", self.key, exc)
