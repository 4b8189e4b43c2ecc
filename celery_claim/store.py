"""ClaimStore: the claim table's operations, one statement each.

The store knows which statement each operation runs and what its answer
means, and nothing of Celery. Each method runs one named statement from
:mod:`celery_claim.sql` through the store's connector
(:mod:`celery_claim.connectors`): in one round trip in autocommit, or inside
the ``atomic()`` transaction it is given (``connection=``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celery_claim import errors, results, sql
from celery_claim.coalesce import CoalescedStatements
from celery_claim.connectors.base import Connector, Result, Transaction
from celery_claim.records import Acquired, ClaimRecord, Lost
from celery_claim.statements import Statements

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["Acquired", "ClaimRecord", "ClaimStore", "Lost"]

#: How long a finished claim is kept when the caller does not say (``claim_ttl_seconds``).
DEFAULT_TTL = 7 * 24 * 3600.0


class ClaimStore:
    """The claims table in one database, reached through a connector.

    Give it a SQLAlchemy URL or engine (the SQLAlchemy connector), or a
    ``connector`` of your own (:class:`~celery_claim.connectors.base.Connector`).
    """

    def __init__(self, url: str | None = None, *, engine: sa.Engine | None = None,
                 table: str = sql.DEFAULT_TABLE, create_schema: bool = True,
                 connector: Connector | None = None, coalesce: bool = True) -> None:
        if connector is None:
            from celery_claim.connectors.sqlalchemy import SQLAlchemyConnector

            connector = SQLAlchemyConnector(url, engine=engine)
        elif url is not None or engine is not None:
            raise errors.ClaimConfigurationError(
                "give the claim store a URL, an engine or a connector: one of them")
        self.url = url
        self.connector = connector
        self.table = sql.make_table(table)
        self.table_name = table
        self.create_schema_on_start = create_schema
        self.statements = Statements(self.table, connector.dialect)
        self._schema_ready = False
        #: The statement a claim runs: ``claim``, or ``claim_conflict`` for a
        #: table created before the settle function (set by
        #: :func:`celery_claim.upgrade.check_current` until the upgrade).
        self.claim_statement = "claim"
        #: The claims and completions that this process's threads make at
        #: once share one statement (see :mod:`celery_claim.coalesce`);
        #: ``None`` where the connector cannot coalesce, or ``coalesce=False``.
        self.coalesced = CoalescedStatements(self._run) \
            if coalesce and connector.coalesces else None

    def __repr__(self) -> str:
        return f"<ClaimStore {self.table_name} at {self.connector.describe()}>"

    def use_claim_statement(self, name: str) -> None:
        """Claim with ``name``: ``claim``, or ``claim_conflict`` where the table
        has no settle function yet (:mod:`celery_claim.upgrade`)."""
        self.claim_statement = name
        if self.coalesced is not None:
            self.coalesced.claim_statement = name

    def one_task_at_a_time(self) -> None:
        """This process runs one task at a time (a prefork child, a solo
        worker): nothing can share a statement, so each goes straight to the
        connector, without the coalescing layer's locks."""
        self.coalesced = None

    # --- connections -------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """This process's SQLAlchemy engine (SQLAlchemy connector only)."""
        engine: sa.Engine = self._sqlalchemy().engine
        return engine

    def connect(self) -> sa.Connection:
        """A new SQLAlchemy connection in transactional mode (SQLAlchemy connector only)."""
        connection: sa.Connection = self._sqlalchemy().connect()
        return connection

    def begin(self, **context: object) -> Transaction:
        """Open a transaction for ``atomic()``; it commits with the completion."""
        return self.connector.begin(**context)

    def _sqlalchemy(self) -> Any:
        from celery_claim.connectors.sqlalchemy import SQLAlchemyConnector

        if not isinstance(self.connector, SQLAlchemyConnector):
            raise errors.ClaimConfigurationError(
                "this claim store has no SQLAlchemy engine",
                connector=type(self.connector).__name__)
        return self.connector

    def _run(self, operation: str, name: str, params: dict[str, Any],
             transaction: Transaction | None = None) -> Result:
        statement = self.statements.get(name)
        if transaction is None:
            return self.connector.execute(operation, statement, params, key=params.get("key"))
        return transaction.execute(operation, statement, params, key=params.get("key"))

    def dispose(self) -> None:
        """Close this process's connections."""
        self.connector.dispose()

    # --- schema ----------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the table and its indexes if missing (safe to race)."""
        self.connector.create_schema(self.statements)
        self._schema_ready = True

    def ensure_schema(self) -> None:
        """Create the schema once per store when ``create_schema`` is on."""
        if self.create_schema_on_start and not self._schema_ready:
            self.create_schema()

    def drop_schema(self) -> None:
        """Drop the table (tests and ``celery-claim schema --drop``)."""
        self.connector.drop_schema(self.statements)
        self._schema_ready = False

    def ddl(self) -> str:
        """The CREATE statements for this table on this dialect."""
        return sql.ddl(self.table, self.statements.dialect)

    # --- the claim life cycle ------------------------------------------------

    def acquire(self, key: str, *, task_name: str, task_id: str, owner: str,
                payload_digest: str | None, lease_seconds: float,
                retry_failed: bool = True, check_payload: bool = True,
                ttl_seconds: float = DEFAULT_TTL) -> Acquired | None:
        """Claim ``key`` in one statement. ``None``: someone else holds it.

        ``ttl_seconds``: how long the claim is kept once it finishes (its
        expiry is set now, a lease and ``ttl_seconds`` ahead; see
        :func:`celery_claim.sql.kept_until`)."""
        rows = self._run("acquire", "acquire", {
            "key": key, "task_name": task_name, "task_id": task_id, "owner": owner[:255],
            "payload_digest": payload_digest, "lease_seconds": lease_seconds,
            "retry_failed": retry_failed, "check_payload": check_payload,
            "ttl_seconds": ttl_seconds,
        }).rows
        return Acquired(token=rows[0].token, attempt=rows[0].attempt) if rows else None

    def claim(self, key: str, *, task_name: str, task_id: str, owner: str,
              payload_digest: str | None, lease_seconds: float,
              retry_failed: bool = True, check_payload: bool = True,
              ttl_seconds: float = DEFAULT_TTL) -> Acquired | Lost | None:
        """Claim ``key``, or count the duplicate and read the row it lost to, in
        one statement (on PostgreSQL).

        ``None``: lost, and the statement could not read the row (SQLite; or,
        with ``claim_conflict``, a row committed after the statement's
        snapshot): :meth:`lost_to` reads it.
        """
        params = {
            "key": key, "task_name": task_name, "task_id": task_id, "owner": owner[:255],
            "payload_digest": payload_digest, "lease_seconds": lease_seconds,
            "retry_failed": retry_failed, "check_payload": check_payload,
            "ttl_seconds": ttl_seconds,
        }
        if self.coalesced is not None:
            row = self.coalesced.claim(key, params, (retry_failed, check_payload))
        else:
            row = self._run("acquire", self.claim_statement, params).first()
        if row is None:
            return None
        settled = getattr(row, "settled", None)
        if settled is not None:  # claim: the key had a row
            return Lost.settled(settled)
        if getattr(row, "won", True):
            return Acquired(token=row.token, attempt=row.attempt)
        return Lost.from_row(row)

    def lost_to(self, key: str, *, task_id: str, payload_digest: str | None,
                retry_failed: bool = True, check_payload: bool = True) -> Lost | None:
        """Count a duplicate delivery of ``key`` and read the row it lost to,
        with the acquire's verdict on it. ``None``: there is no row (purged)."""
        row = self._run("note_duplicate", "lost_to", {
            "key": key, "task_id": task_id, "payload_digest": payload_digest,
            "retry_failed": retry_failed, "check_payload": check_payload}).first()
        return Lost.from_row(row) if row is not None else None

    def note_duplicate(self, key: str) -> ClaimRecord | None:
        """Count a duplicate delivery of ``key`` and read the row it lost to."""
        row = self._run("note_duplicate", "note_duplicate", {"key": key}).first()
        return ClaimRecord.from_row(row) if row is not None else None

    def get(self, key: str) -> ClaimRecord | None:
        """Read one claim."""
        row = self._run("get", "get", {"key": key}).first()
        return ClaimRecord.from_row(row) if row is not None else None

    def complete(self, key: str, token: int, *, result: Any = None, has_result: bool = False,
                 state: str = sql.SUCCEEDED, error: str | None = None,
                 ttl_seconds: float,
                 connection: Transaction | sa.Connection | None = None) -> bool:
        """Mark the claim finished, fenced by ``token``. ``False``: the claim was lost.

        ``result`` is a :class:`celery_claim.results.Encoded` (what a task
        stores), or a value, stored through kombu's json serializer.
        ``connection``: the open ``atomic()`` transaction to run it in (a
        :class:`~celery_claim.connectors.base.Transaction`, or a SQLAlchemy
        connection in a transaction); its owner commits it.
        """
        params = {"key": key, "token": token, "state": state, "error": error,
                  "ttl_seconds": ttl_seconds}
        if has_result:
            encoded = result if isinstance(result, results.Encoded) else results.encode_json(result)
            params.update(result=encoded.payload, result_content_type=encoded.content_type,
                          result_content_encoding=encoded.content_encoding)
        if connection is None and self.coalesced is not None:
            return bool(self.coalesced.complete(key, params))
        name = "complete_with_result" if has_result else "complete"
        transaction: Transaction | None = None
        if isinstance(connection, Transaction):
            transaction = connection
        elif connection is not None:
            transaction = self._sqlalchemy().join(connection)
        return self._run("complete", name, params, transaction).first() is not None

    def release(self, key: str, token: int, *, ttl_seconds: float,
                error: str | None = None) -> bool:
        """Give the claim back, fenced by ``token``. ``False``: it was not ours any more."""
        return self._run("release", "release", {
            "key": key, "token": token, "error": error, "ttl_seconds": ttl_seconds,
        }).first() is not None

    def renew(self, pairs: Iterable[tuple[str, int]], lease_seconds: float) -> set[tuple[str, int]]:
        """Extend many leases at once; returns the (key, token) pairs still held."""
        pairs = list(pairs)
        if not pairs:
            return set()
        rows = self._run("renew", "renew", {"keys": [key for key, _ in pairs],
                                            "tokens": [token for _, token in pairs],
                                            "lease_seconds": lease_seconds})
        return {(row.key, row.token) for row in rows.rows}

    # --- operations --------------------------------------------------------------

    def force_release(self, key: str, token: int, *, force: bool = False,
                      ttl_seconds: float = 7 * 24 * 3600.0,
                      reason: str = "released by operator") -> bool:
        """Release a claim by hand, fenced by ``token``; refuses a live lease unless forced."""
        return self._run("force_release", "force_release", {
            "key": key, "token": token, "force": force, "error": reason,
            "ttl_seconds": ttl_seconds,
        }).first() is not None

    def purge(self, batch_size: int = 1000, max_batches: int | None = None) -> int:
        """Delete finished claims past their expiry, in short batches. Returns the count."""
        deleted = batches = 0
        while max_batches is None or batches < max_batches:
            count = self._run("purge", "purge", {"batch_size": batch_size}).rowcount
            deleted += count
            batches += 1
            if count < batch_size:
                break
        return deleted

    def list_claims(self, *, state: str | None = None, task_name: str | None = None,
             stale: bool = False, limit: int = 50, after_key: str = "") -> list[ClaimRecord]:
        """One page of claims ordered by key; pass the last key as ``after_key``."""
        rows = self._run("list", "list", {
            "state": state, "task_name": task_name, "stale": stale, "limit": limit,
            "after_key": after_key,
        })
        return [ClaimRecord.from_row(row) for row in rows.rows]

    def stats(self) -> list[dict[str, Any]]:
        """Claims, duplicates, acquisitions and stale leases by task and state."""
        return [dict(row._asdict()) for row in self._run("stats", "stats", {}).rows]

