"""Results encoded as the result backend encodes them, and decoded back: each
serializer's round trip through kombu's real registry."""

from __future__ import annotations

import datetime
import sys
import uuid
from decimal import Decimal
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from kombu import serialization
from kombu.exceptions import ContentDisallowed

from celery_claim import results

DATE = datetime.datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")

#: Per serializer: a value it carries, and what its decoder gives back (what
#: the first delivery's caller reads from the result backend).
CASES: dict[str, tuple[Any, Any]] = {
    "json": (
        {"amount": Decimal("12.50"), "at": DATE, "day": DATE.date(), "time": DATE.timetz(),
         "id": ID, "raw": b"\x00\xff", "text": b"abc", "pair": (1, 2),
         "nested": {"z": 1, "a": [{"b": (3,)}]}, "none": None, "float": 0.1},
        {"amount": Decimal("12.50"), "at": DATE, "day": DATE.date(), "time": DATE.timetz(),
         "id": ID, "raw": b"\x00\xff", "text": b"abc", "pair": [1, 2],
         "nested": {"z": 1, "a": [{"b": [3]}]}, "none": None, "float": 0.1},
    ),
    "pickle": (
        {"amount": Decimal("12.50"), "at": DATE, "id": ID, "pair": (1, 2), "set": {1, 2},
         "raw": b"\x00\xff"},
        {"amount": Decimal("12.50"), "at": DATE, "id": ID, "pair": (1, 2), "set": {1, 2},
         "raw": b"\x00\xff"},
    ),
    "msgpack": (
        {"z": 1, "a": [1, 2.5, None, True], "pair": (1, 2), "raw": b"\x00\xff", "s": "é"},
        {"z": 1, "a": [1, 2.5, None, True], "pair": [1, 2], "raw": b"\x00\xff", "s": "é"},
    ),
    "yaml": (
        {"z": 1, "a": [1, 2.5, None, True], "s": "é", "at": DATE},
        {"z": 1, "a": [1, 2.5, None, True], "s": "é", "at": DATE},
    ),
}


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return (type(value), sorted(map(repr, (_types(v) for v in value))))
    return type(value)


@pytest.mark.parametrize("serializer", sorted(CASES))
def test_a_result_round_trips_to_what_the_backend_gives_with_the_same_bytes(
        serializer: str) -> None:
    value, expected = CASES[serializer]
    encoded = results.encode(value, serializer)
    content_type, content_encoding, data = serialization.dumps(value, serializer=serializer)
    assert encoded.content_type == content_type
    assert encoded.payload == (data.encode() if isinstance(data, str) else data)
    decoded = encoded.decode({content_type})
    # What kombu itself decodes: the value the first delivery's caller reads.
    assert decoded == serialization.loads(data, content_type, content_encoding,
                                          accept={content_type})
    assert decoded == expected
    assert _types(decoded) == _types(expected)
    # A replay encodes to the first delivery's bytes (chord members, caches).
    assert results.encode(decoded, serializer) == encoded


def test_json_keeps_key_order_and_shows_as_text() -> None:
    encoded = results.encode({"z": 1, "a": 2, "m": {"y": 1, "b": 2}}, "json")
    assert encoded.text == '{"z": 1, "a": 2, "m": {"y": 1, "b": 2}}'
    assert list(encoded.decode({results.JSON})) == ["z", "a", "m"]
    assert results.encode({"x": 1}, "pickle").text is None


def test_a_value_the_serializer_cannot_carry_is_not_encodable() -> None:
    with pytest.raises(results.NotEncodable, match="set"):
        results.encode({1, 2}, "json")
    with pytest.raises(results.NotEncodable):
        results.encode(lambda: 1, "pickle")
    with pytest.raises(results.NotEncodable):
        results.encode(1, "no-such-serializer")
    # Past the interpreter's limit on an int's digits: refused as kombu refuses
    # it (the claim then completes without a stored result), alone or inside
    # a value the plain path would otherwise write itself.
    huge = 10 ** 5000
    limited = hasattr(sys, "get_int_max_str_digits")  # Python 3.10.7 and later
    for value in (huge, [huge], {"n": huge}) if limited else ():
        with pytest.raises(results.NotEncodable):
            results.encode(value, "json")


def test_decoding_honours_the_accepted_content_types() -> None:
    encoded = results.encode((1, 2), "pickle")
    with pytest.raises(ContentDisallowed):
        encoded.decode({results.JSON})
    assert encoded.decode({"application/x-python-serialize"}) == (1, 2)


def test_a_result_handle_is_stored_as_its_tuple_except_under_pickle() -> None:
    app = Celery("results_unit", set_as_current=False)
    handle = AsyncResult("abc", app=app)
    assert results.encode(handle, "json").decode({results.JSON}) == [["abc", None], None]
    app.close()


def test_accepted_content_follows_the_backend_precedence() -> None:
    app = Celery("results_unit", set_as_current=False)
    assert results.accept_of(app.conf) == {results.JSON}
    app.conf.accept_content = ["json", "pickle"]
    assert results.accept_of(app.conf) == {results.JSON, "application/x-python-serialize"}
    app.conf.result_accept_content = ["msgpack"]
    assert results.accept_of(app.conf) == {"application/x-msgpack"}
    app.close()


def _plain_values(seed: int, count: int) -> list[Any]:
    """Values the json fast path writes itself, and neighbours it must leave to kombu."""
    import random

    rng = random.Random(seed)

    def scalar() -> Any:
        return rng.choice([
            rng.randrange(-10**20, 10**20), rng.random(), rng.choice([True, False, None]),
            "".join(chr(rng.randrange(0x2FFF)) for _ in range(rng.randrange(6))),
            rng.choice([-0.0, 1e300, float("inf"), float("-inf"), float("nan")])])

    def value() -> Any:
        kind = rng.randrange(6)
        if kind == 0:
            return {str(scalar()): scalar() for _ in range(rng.randrange(4))}
        if kind == 1:
            return [scalar() for _ in range(rng.randrange(4))]
        if kind == 2:
            return tuple(scalar() for _ in range(rng.randrange(4)))
        if kind == 3:  # one level deeper, or a key that is not str: kombu's own path
            return rng.choice([{"n": [scalar()]}, [[scalar()]], {1: scalar()}, (DATE,)])
        return scalar()

    return [value() for _ in range(count)]


def test_plain_json_results_are_written_as_kombu_writes_them() -> None:
    # Results of plain values skip kombu's encoder; the bytes must not change.
    for value in _plain_values(seed=12, count=5000):
        content_type, encoding, data = serialization.dumps(value, serializer="json")
        encoded = results.encode(value, "json")
        assert (encoded.payload, encoded.content_type, encoded.content_encoding) == (
            data.encode(encoding), content_type, encoding), value


def test_an_application_json_serializer_keeps_its_own_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A json serializer registered by the application (compact separators
    # here): the plain-value path stands aside, and kombu's bytes are stored.
    import json

    from kombu.utils import json as kombu_json

    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    results._kombu_json_is_standard.cache_clear()
    serialization.register("json", compact, kombu_json.loads, "application/json", "utf-8")
    try:
        assert results.encode({"a": 1, "b": "x"}, "json").payload == b'{"a":1,"b":"x"}'
    finally:
        serialization.register("json", kombu_json.dumps, kombu_json.loads, "application/json",
                               "utf-8")
        results._kombu_json_is_standard.cache_clear()
    assert results.encode({"a": 1, "b": "x"}, "json").payload == b'{"a": 1, "b": "x"}'
