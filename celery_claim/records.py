"""The rows of the claims table as the store hands them out: a record, and
what an acquire found (:class:`Acquired`, :class:`Lost`)."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
from typing import Any

from celery_claim import results, sql

__all__ = ["Acquired", "ClaimRecord", "Lost"]

_UTC = datetime.timezone.utc


def _aware(value: datetime.datetime | None) -> datetime.datetime | None:
    # SQLite hands back naive UTC; PostgreSQL timestamptz is already aware.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=_UTC)
    return value


#: The row's times (PostgreSQL ``timestamptz``).
_TIMES = ("lease_expires_at", "created_at", "updated_at", "finished_at", "expires_at")
_FRACTION = re.compile(r"\.(\d{1,5})(?=\D|$)")


def _json_time(text: str | None) -> datetime.datetime | None:
    """A ``timestamptz`` as ``row_to_json`` writes it (ISO 8601, the fraction
    without its trailing zeros, which Python 3.10 does not read)."""
    if text is None:
        return None
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        return datetime.datetime.fromisoformat(
            _FRACTION.sub(lambda m: "." + m.group(1).ljust(6, "0"), text, count=1))


def _json_bytea(text: str) -> bytes:
    """A ``bytea`` as ``row_to_json`` writes it: the session's ``bytea_output``."""
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    from psycopg import pq

    return bytes(pq.Escaping().unescape_bytea(text.encode()))


def _stored(payload: bytes, content_type: str | None,
            content_encoding: str | None) -> results.Encoded:
    """A stored result, its content type and encoding as the row holds them
    (a row written before those columns existed holds JSON)."""
    return results.Encoded(payload, content_type or results.JSON, content_encoding or "utf-8")


class _Values(dict[str, Any]):
    """A row's values by name, as ``from_row`` reads them."""

    def _asdict(self) -> dict[str, Any]:
        return dict(self)


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
        for name in (*_TIMES, "db_now"):
            values[name] = _aware(values[name])
        values["has_result"] = bool(values["has_result"])
        payload = values.pop("result")
        content_type = values.pop("result_content_type")
        content_encoding = values.pop("result_content_encoding")
        values["stored_result"] = (
            None if payload is None else _stored(bytes(payload), content_type, content_encoding))
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | dict[str, Any], db_now: datetime.datetime) -> ClaimRecord:
        """From the row as PostgreSQL's ``row_to_json`` wrote it (the ``claim``
        statement's lost branch), read at ``db_now``."""
        row = json.loads(text) if isinstance(text, str) else text
        # The table's columns, less any the package does not know (a column
        # an operator added, or one a later release adds during an upgrade).
        values = {name: row.get(name) for name in _json_columns()}
        for name in _TIMES:
            values[name] = _json_time(values.get(name))
        result = values.get("result")
        values["result"] = None if result is None else _json_bytea(result)
        values["has_result"] = result is not None
        values["db_now"] = db_now
        return cls.from_row(_Values(values))

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
        """Finished and past its retention time: the next acquire treats it as new."""
        return self.state != sql.RUNNING and self.expires_at is not None \
            and self.expires_at < self.db_now

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


class Lost:
    """A delivery that did not win the claim: the row it lost to, and the
    acquire's own verdict on it (:func:`celery_claim.sql._takes`), read in the
    same statement that counted the duplicate.

    From the claim statement's JSON, :attr:`record` is built when first read:
    a duplicate of a finished claim needs only the row's state, holder and
    stored result (:attr:`state`, :attr:`task_id`, :attr:`token`,
    :attr:`stored_result`), and building the whole record costs a worker
    more than the rest of the duplicate's answer (docs/performance.md).
    """

    __slots__ = ("_db_now", "_mismatch", "_record", "_row", "_takeable")
    __match_args__ = ("record", "takeable", "mismatch")

    def __init__(self, record: ClaimRecord, takeable: bool, mismatch: bool) -> None:
        self._record: ClaimRecord | None = record
        self._row: dict[str, Any] = {}
        self._db_now: str | datetime.datetime | None = None
        self._takeable = takeable
        self._mismatch = mismatch

    @classmethod
    def _from_json(cls, row: dict[str, Any], db_now: str | datetime.datetime | None,
                   mismatch: bool) -> Lost:
        """The row as ``row_to_json`` wrote it (parsed), never takeable: the
        statement that counted the duplicate refused that very version."""
        lost = cls.__new__(cls)
        lost._record = None
        lost._row = row
        lost._db_now = db_now
        lost._takeable = False
        lost._mismatch = mismatch
        return lost

    @property
    def takeable(self) -> bool:
        """The row may be taken now (it changed since the acquire): try again."""
        return self._takeable

    @property
    def mismatch(self) -> bool:
        """The row holds another job under this key (other arguments, another task id)."""
        return self._mismatch

    @property
    def record(self) -> ClaimRecord:
        """The row it lost to, read at the database's clock."""
        if self._record is None:
            db_now = self._db_now
            self._record = ClaimRecord.from_json(
                self._row, _json_time(db_now) if isinstance(db_now, str) else db_now)  # type: ignore[arg-type]
        return self._record

    @property
    def state(self) -> str:
        return self._record.state if self._record is not None else self._row["state"]

    @property
    def task_id(self) -> str:
        """The task id of the delivery that holds (or held) the row."""
        return self._record.task_id if self._record is not None else self._row["task_id"]

    @property
    def token(self) -> int:
        return self._record.token if self._record is not None else self._row["token"]

    @property
    def stored_result(self) -> results.Encoded | None:
        """The holder's stored result as its serializer encoded it, or ``None``."""
        if self._record is not None:
            return self._record.stored_result
        row = self._row
        payload = row.get("result")
        if payload is None:
            return None
        return _stored(_json_bytea(payload), row.get("result_content_type"),
                       row.get("result_content_encoding"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Lost):
            return NotImplemented
        return (self.record, self.takeable, self.mismatch) == (
            other.record, other.takeable, other.mismatch)

    def __hash__(self) -> int:
        return hash((self.record, self.takeable, self.mismatch))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Lost, (self.record, self.takeable, self.mismatch))

    def __repr__(self) -> str:
        return (f"Lost(record={self.record!r}, takeable={self.takeable!r}, "
                f"mismatch={self.mismatch!r})")

    @staticmethod
    def settled(answer: str) -> Acquired | Lost:
        """The claim's settle function's answer (a JSON array,
        :func:`celery_claim.sql_settle.settle_function`): the row taken over,
        or the duplicate counted on the row it lost to (never takeable: the
        count's ``WHERE`` refused it on that very version)."""
        won, token, attempt, *lost = json.loads(answer)
        if won:
            return Acquired(token=token, attempt=attempt)
        row, db_now, mismatch = lost[:3]
        return Lost._from_json(row, db_now, bool(mismatch))

    @classmethod
    def from_row(cls, row: Any) -> Lost:
        record = getattr(row, "record", None)
        if record is not None:  # the claim statement's lost branch: never takeable
            return cls._from_json(json.loads(record) if isinstance(record, str) else record,
                                  _aware(row.db_now), bool(row.mismatch))
        return cls(ClaimRecord.from_row(row), bool(row.takeable), bool(row.mismatch))


@functools.cache
def _json_columns() -> tuple[str, ...]:
    """The columns ``from_json`` reads: the record's own, and the result's three."""
    known = tuple(f.name for f in dataclasses.fields(ClaimRecord)
                  if f.name not in ("stored_result", "has_result", "db_now"))
    return (*known, "result", "result_content_type", "result_content_encoding")


#: Columns a statement may return beside a record's (the acquire's verdict).
_NOT_RECORD = ("won", "takeable", "mismatch", "quick_commit", "record")
