"""The row a duplicate lost to, as the claim's settle function answers it:
what the duplicate reads at once, and the record built only when asked."""

from __future__ import annotations

import collections
import copy
import datetime
import json
import pickle
from typing import Any

import pytest

from celery_claim import reporting, results, signals
from celery_claim.records import Acquired, ClaimRecord, Lost
from celery_claim.states import Outcome

ROW = {
    "key": "charge:1", "state": "succeeded", "token": 3, "task_name": "charge",
    "task_id": "holder", "attempt": 2, "owner": "w1@host/10", "payload_digest": "ab12",
    "result": "\\x7b2261223a20317d", "result_content_type": results.JSON,
    "result_content_encoding": "utf-8", "error": None, "duplicates": 4,
    "lease_expires_at": None, "created_at": "2026-12-07T23:09:27.44501+00:00",
    "updated_at": "2026-12-07T23:09:27.447439+00:00",
    "finished_at": "2026-12-07T23:09:27.447439+00:00",
    "expires_at": "2026-12-08T00:10:27.4+00:00",
}
NOW = "2026-12-07T23:09:28.5+00:00"


def _answer(row: dict[str, object], mismatch: bool = False) -> str:
    # [won, token, attempt, row, database time, mismatch, quick_commit]
    return json.dumps([False, row["token"], row["attempt"], row, NOW, mismatch, "off"])


def test_a_duplicate_reads_state_holder_and_result_without_the_record() -> None:
    lost = Lost.settled(_answer(ROW))
    assert isinstance(lost, Lost)
    assert (lost.state, lost.task_id, lost.token, lost.takeable, lost.mismatch) == (
        "succeeded", "holder", 3, False, False)
    assert lost.stored_result == results.Encoded(b'{"a": 1}', results.JSON, "utf-8")
    assert lost._record is None  # nothing asked for the whole record yet


def test_the_record_is_built_once_when_read_and_agrees_with_the_accessors() -> None:
    lost = Lost.settled(_answer(ROW, mismatch=True))
    assert isinstance(lost, Lost)
    record = lost.record
    assert record is lost.record
    assert record == ClaimRecord.from_json(json.dumps(ROW), record.db_now)
    assert (record.state, record.task_id, record.token, record.duplicates) == (
        lost.state, lost.task_id, lost.token, 4)
    assert record.stored_result == lost.stored_result
    assert record.result == {"a": 1}
    assert record.db_now.isoformat() == "2026-12-07T23:09:28.500000+00:00"
    assert (lost.mismatch, lost.takeable) == (True, False)
    # Equal to a Lost built from the same record; its repr shows the record.
    assert lost == Lost(record, False, True)
    assert hash(lost) == hash(Lost(record, False, True))
    assert "state='succeeded'" in repr(lost)
    with pytest.raises(AttributeError):
        lost.takeable = True  # type: ignore[misc]


def test_a_row_without_a_result_has_none() -> None:
    row = {**ROW, "result": None, "result_content_type": None, "result_content_encoding": None}
    lost = Lost.settled(_answer(row))
    assert isinstance(lost, Lost)
    assert lost.stored_result is None
    assert (lost.record.stored_result, lost.record.has_result) == (None, False)


def test_a_taken_row_is_acquired() -> None:
    assert Lost.settled(json.dumps([True, 5, 3])) == Acquired(token=5, attempt=3)


def test_the_previous_statements_record_column_is_read_the_same_way() -> None:
    # claim_conflict's lost branch: the row as JSON text, the database's clock
    # as the driver gives it (naive from SQLite-like drivers: taken as UTC).
    Row = collections.namedtuple("Row", "record db_now mismatch")
    lost = Lost.from_row(Row(json.dumps(ROW), datetime.datetime(2026, 12, 7, 23, 9, 28), 0))
    assert (lost.state, lost.task_id, lost.token, lost.takeable, lost.mismatch) == (
        "succeeded", "holder", 3, False, False)
    assert lost.record.db_now == datetime.datetime(2026, 12, 7, 23, 9, 28,
                                                   tzinfo=datetime.timezone.utc)
    assert lost.stored_result == lost.record.stored_result


def test_a_result_in_bytea_escape_format_reads_the_same_as_the_record() -> None:
    # bytea_output = 'escape': printable bytes as themselves, a backslash doubled.
    row = {**ROW, "result": '{"a": "\\\\\\\\"}'}
    lost = Lost.settled(_answer(row))
    assert isinstance(lost, Lost)
    assert lost.stored_result is not None
    assert lost.stored_result.payload == b'{"a": "\\\\"}'
    assert lost.stored_result == lost.record.stored_result


def test_lost_pickles_and_matches_as_the_dataclass_did() -> None:
    lost = Lost.settled(_answer(ROW, mismatch=True))
    assert isinstance(lost, Lost)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(lost, protocol)) == lost
    assert copy.copy(lost) == lost
    match lost:
        case Lost(record, takeable, mismatch):
            assert (record.state, takeable, mismatch) == ("succeeded", False, True)
        case _:
            pytest.fail("Lost did not match positionally")


def _reported(receiver: Any, outcome: Outcome, task: Any = None) -> Lost:
    """A duplicate's answer, reported with ``receiver`` connected to ``claim_duplicate``."""
    signals.claim_duplicate.connect(receiver, weak=False)
    try:
        lost = Lost.settled(_answer(ROW))
        assert isinstance(lost, Lost)
        reporting.duplicate(task, "charge:1", "copy", lost, outcome)
        return lost
    finally:
        signals.claim_duplicate.disconnect(receiver)


def test_a_duplicate_builds_the_record_only_for_a_receiver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals.claim_duplicate, "receivers", [])
    quiet = Lost.settled(_answer(ROW))
    assert isinstance(quiet, Lost)
    reporting.duplicate(None, "charge:1", "copy", quiet, Outcome.SUCCEEDED)
    assert quiet._record is None

    got: list[dict[str, Any]] = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        got.append(kwargs)

    heard = _reported(receiver, Outcome.SUCCEEDED)
    assert [(k["key"], k["token"], k["outcome"], k["record"]) for k in got] == [
        ("charge:1", 3, "succeeded", heard.record)]
    assert got[0]["record"].duplicates == 4


def test_the_metrics_count_a_duplicate_without_its_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry

    from celery_claim import metrics

    monkeypatch.setattr(signals.claim_duplicate, "receivers", [])
    registry = CollectorRegistry()
    installed = metrics.ClaimMetrics.create(registry)

    class Charge:
        name = "billing.charge"

    def counted() -> float:
        return registry.get_sample_value("celery_claim_duplicates_total",
                                         {"task": "billing.charge", "outcome": "succeeded"}) or 0
    try:
        installed.connect()
        assert not signals.claim_duplicate.receivers  # the metrics are no receiver of it
        lost = Lost.settled(_answer(ROW))
        assert isinstance(lost, Lost)
        reporting.duplicate(Charge(), "charge:1", "copy", lost, Outcome.SUCCEEDED)
        assert counted() == 1
        assert lost._record is None
        # The row vanished in between: still counted.
        reporting.duplicate(Charge(), "charge:1", "copy", None, Outcome.SUCCEEDED)
        assert counted() == 2
        # A receiver of the signal beside them: it gets the whole record, and
        # the duplicate is counted once.
        got: list[Any] = []
        heard = _reported(lambda sender=None, **kw: got.append(kw["record"]),
                          Outcome.SUCCEEDED, Charge())
        assert counted() == 3
        assert got == [heard.record]
    finally:
        installed.disconnect()
    reporting.duplicate(Charge(), "charge:1", "copy", lost, Outcome.SUCCEEDED)
    assert counted() == 3  # disconnected: no longer counted
    assert installed.on_duplicate not in reporting._observers["duplicate"]


def test_an_observer_that_raises_is_logged_and_the_duplicate_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    heard: list[str] = []

    def broken(sender: Any = None, outcome: str = "") -> None:
        raise RuntimeError("registry full")

    def receiver(sender: Any = None, outcome: str = "", **_: Any) -> None:
        heard.append(outcome)

    reporting.observe("duplicate", broken)
    try:
        _reported(receiver, Outcome.FAILED)
    finally:
        reporting.unobserve("duplicate", broken)
    assert heard == ["failed"]
    assert "registry full" in caplog.text
    assert broken not in reporting._observers["duplicate"]
