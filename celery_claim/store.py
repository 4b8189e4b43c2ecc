"""ClaimStore: the claim table's operations, one statement each.

The store knows which statement each operation runs and what its answer
means, and nothing of Celery. Each method runs one named statement from
:mod:`celery_claim.sql` through the store's connector
(:mod:`celery_claim.connectors`): in one round trip in autocommit, or inside
the ``atomic()`` transaction it is given (``connection=``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celery_claim import errors, results, sql
from celery_claim.coalesce import CoalescedStatements
from celery_claim.connectors.base import Connector, Result, Transaction
from celery_claim.statements import Statements

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["Acquired", "ClaimRecord", "ClaimStore", "Lost"]

_UTC = datetime.timezone.utc


def _aware(value: datetime.datetime | None) -> datetime.datetime | None:
    # SQLite hands back naive UTC; PostgreSQL timestamptz is already aware.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=_UTC)
    return value


@dataclasses.dataclass(frozen=True)
class ClaimRecord:
    """One row of the claims table, read at ``db_now`` (the database's clock)."""

    key: str
    state: str
    token: int
    task_name: str
    task_id: str
    attempt: int
    owner: str
    payload_digest: str | None
    #: The result as its serializer encoded it (see :mod:`celery_claim.results`).
    stored_result: results.Encoded | None
    has_result: bool
    error: str | None
    duplicates: int
    lease_expires_at: datetime.datetime | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    finished_at: datetime.datetime | None
    expires_at: datetime.datetime | None
    db_now: datetime.datetime

    @classmethod
    def from_row(cls, row: Any) -> ClaimRecord:
        """From a SQLAlchemy ``Row`` or a driver's named tuple."""
        values = row._asdict()
        for name in _NOT_RECORD:
            values.pop(name, None)
        for name in ("lease_expires_at", "created_at", "updated_at", "finished_at",
                     "expires_at", "db_now"):
            values[name] = _aware(values[name])
        values["has_result"] = bool(values["has_result"])
        payload = values.pop("result")
        content_type = values.pop("result_content_type")
        content_encoding = values.pop("result_content_encoding")
        values["stored_result"] = (
            None if payload is None else results.Encoded(
                bytes(payload), content_type or results.JSON, content_encoding or "utf-8"))
        return cls(**values)

    @property
    def result(self) -> Any:
        """The stored result, decoded (json, msgpack or yaml; a pickled result is
        decoded only by :meth:`celery_claim.results.Encoded.decode` with pickle accepted)."""
        if self.stored_result is None:
            return None
        return self.stored_result.decode(results.READABLE)

    @property
    def lease_remaining(self) -> float:
        """Seconds until the lease lapses (0 when not running or already lapsed)."""
        if self.state != sql.RUNNING or self.lease_expires_at is None:
            return 0.0
        return max(0.0, (self.lease_expires_at - self.db_now).total_seconds())

    @property
    def is_live(self) -> bool:
        """Running under a lease that has not lapsed."""
        return self.state == sql.RUNNING and self.lease_remaining > 0

    @property
    def is_stale(self) -> bool:
        """Running, but the lease has lapsed: the holder is gone or paused."""
        return self.state == sql.RUNNING and not self.is_live

    @property
    def is_expired(self) -> bool:
        """Past its retention time: the next acquire treats it as new."""
        return self.expires_at is not None and self.expires_at < self.db_now

    def as_dict(self) -> dict[str, Any]:
        values = {
            f.name: (v.isoformat() if isinstance(v, datetime.datetime) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }
        del values["stored_result"]
        stored = self.stored_result
        text = stored.text if stored is not None else None
        # JSON as JSON (kombu's typed values stay {"__type__": ..., "__value__": ...}).
        values["result"] = (json.loads(text) if text is not None and stored is not None
                            and stored.content_type == results.JSON else text)
        values["result_content_type"] = stored.content_type if stored is not None else None
        return values


@dataclasses.dataclass(frozen=True)
class Acquired:
    """A won claim: the fencing token and the number of this acquisition."""

    token: int
    attempt: int


@dataclasses.dataclass(frozen=True)
class Lost:
    """A delivery that did not win the claim: the row it lost to, and the
    acquire's own verdict on it (:func:`celery_claim.sql._takes`), read in the
    same statement that counted the duplicate."""

    record: ClaimRecord
    #: The row may be taken now (it changed since the acquire): try again.
    takeable: bool
    #: The row holds another job under this key (other arguments, another task id).
    mismatch: bool

    @classmethod
    def from_row(cls, row: Any) -> Lost:
        return cls(ClaimRecord.from_row(row), bool(row.takeable), bool(row.mismatch))


#: Columns a statement may return beside a record's (the acquire's verdict).
_NOT_RECORD = ("won", "takeable", "mismatch", "quick_commit")


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
        #: The claims and completions that this process's threads make at
        #: once share one statement (see :mod:`celery_claim.coalesce`);
        #: ``None`` where the connector cannot coalesce, or ``coalesce=False``.
        self.coalesced = CoalescedStatements(self._run) \
            if coalesce and connector.coalesces else None

    def __repr__(self) -> str:
        return f"<ClaimStore {self.table_name} at {self.connector.describe()}>"

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
                retry_failed: bool = True, check_payload: bool = True) -> Acquired | None:
        """Claim ``key`` in one statement. ``None``: someone else holds it."""
        rows = self._run("acquire", "acquire", {
            "key": key, "task_name": task_name, "task_id": task_id, "owner": owner[:255],
            "payload_digest": payload_digest, "lease_seconds": lease_seconds,
            "retry_failed": retry_failed, "check_payload": check_payload,
        }).rows
        return Acquired(token=rows[0].token, attempt=rows[0].attempt) if rows else None

    def claim(self, key: str, *, task_name: str, task_id: str, owner: str,
              payload_digest: str | None, lease_seconds: float,
              retry_failed: bool = True, check_payload: bool = True) -> Acquired | Lost | None:
        """Claim ``key``, or count the duplicate and read the row it lost to, in
        one statement (on PostgreSQL).

        ``None``: lost, and the statement could not read the row (SQLite, or a
        row committed after the statement's snapshot): :meth:`lost_to` reads it.
        """
        params = {
            "key": key, "task_name": task_name, "task_id": task_id, "owner": owner[:255],
            "payload_digest": payload_digest, "lease_seconds": lease_seconds,
            "retry_failed": retry_failed, "check_payload": check_payload,
        }
        if self.coalesced is not None:
            row = self.coalesced.claim(key, params, (retry_failed, check_payload))
        else:
            row = self._run("acquire", "claim", params).first()
        if row is None:
            return None
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

