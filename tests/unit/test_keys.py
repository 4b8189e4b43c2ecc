from __future__ import annotations

import datetime
import decimal
import enum
import inspect
import uuid
from typing import Any

import pytest

from celery_claim import ClaimConfigurationError, ClaimKeyError
from celery_claim.keys import DEFAULT_KEY, KeyBuilder, payload_digest


def charge(order_id: int, amount_cents: int, currency: str = "EUR") -> None: ...


SIG = inspect.signature(charge)


class Color(enum.Enum):
    RED = "red"


def test_default_key_is_task_name_and_id() -> None:
    assert KeyBuilder("billing.charge", SIG, DEFAULT_KEY).build("abc", (1, 2), {}) == \
        "billing.charge:abc"


@pytest.mark.parametrize(("args", "kwargs"), [
    ((7, 100), {}), ((7,), {"amount_cents": 100}), ((), {"order_id": 7, "amount_cents": 100}),
])
def test_template_binds_positional_keyword_and_defaults(args: tuple, kwargs: dict) -> None:
    builder = KeyBuilder("charge", SIG, "charge:{order_id}:{currency}")
    assert builder.build("id", args, kwargs) == "charge:7:EUR"


def test_template_may_use_task_name_and_id() -> None:
    builder = KeyBuilder("charge", SIG, "{task_name}/{order_id}/{task_id}")
    assert builder.build("t1", (7, 1), {}) == "charge/7/t1"


def test_template_naming_unknown_argument_is_a_configuration_error() -> None:
    with pytest.raises(ClaimConfigurationError, match=r"\{order\}, which is not an argument"):
        KeyBuilder("charge", SIG, "charge:{order}")


def test_positional_template_fields_are_refused() -> None:
    with pytest.raises(ClaimConfigurationError, match="must name arguments"):
        KeyBuilder("charge", SIG, "charge:{}")


def test_malformed_template_is_refused() -> None:
    with pytest.raises(ClaimConfigurationError, match="not a valid format string"):
        KeyBuilder("charge", SIG, "charge:{order_id")


@pytest.mark.parametrize(("value", "text"), [
    (7, "7"), ("x", "x"), (decimal.Decimal("1.50"), "1.50"),
    (uuid.UUID(int=5), "00000000-0000-0000-0000-000000000005"),
    (datetime.date(2026, 1, 2), "2026-01-02"), (Color.RED, "red"),
])
def test_stable_values_format(value: object, text: str) -> None:
    assert KeyBuilder("c", SIG, "c:{order_id}").build("i", (value, 1), {}) == f"c:{text}"


@pytest.mark.parametrize("value", [object(), None, 1.5, [1, 2], True])
def test_values_without_stable_text_are_refused(value: object) -> None:
    with pytest.raises(ClaimKeyError, match="callable claim_key"):
        KeyBuilder("c", SIG, "c:{order_id}").build("i", (value, 1), {})


def test_callable_key() -> None:
    builder = KeyBuilder("c", SIG, lambda order_id, amount_cents, currency="EUR": f"o{order_id}")
    assert builder.build("i", (3, 4), {}) == "o3"


def test_callable_key_must_return_text() -> None:
    builder = KeyBuilder("c", SIG, lambda *a, **k: 5)
    with pytest.raises(ClaimKeyError, match="non-empty str"):
        builder.build("i", (3, 4), {})


def test_over_long_key_is_a_clear_error() -> None:
    builder = KeyBuilder("c", SIG, "c:{currency}")
    with pytest.raises(ClaimKeyError, match="longer than 512"):
        builder.build("i", (1, 2, "x" * 600), {})


def test_digest_is_canonical() -> None:
    a = payload_digest({"order_id": 1, "meta": {"b": 2, "a": {3, 1}}})
    b = payload_digest({"meta": {"a": {1, 3}, "b": 2}, "order_id": 1})
    assert a == b
    assert len(a or "") == 64
    assert a != payload_digest({"order_id": 2, "meta": {"b": 2, "a": {3, 1}}})


@pytest.mark.parametrize("arguments", [
    {"n": 5}, {"b": "é", "a": None, "c": True, "d": -3}, {}, {"x": 10**30},
])
def test_plain_arguments_digest_as_their_canonical_form(arguments: dict[str, object]) -> None:
    # Plain values skip the canonical walk; the digest is the walk's all the same.
    import hashlib

    from celery_claim.keys import _CANONICAL_JSON, _canonical

    walked = _CANONICAL_JSON(_canonical(arguments)).encode()
    assert payload_digest(arguments) == hashlib.sha256(walked).hexdigest()


def _previous_digest(arguments: Any) -> str | None:
    """payload_digest as it was before the flat form."""
    import hashlib

    from celery_claim.keys import _CANONICAL_JSON, _PLAIN, _canonical

    try:
        if all(type(v) in _PLAIN for v in arguments.values()) and \
                all(type(k) is str for k in arguments):
            canonical = _CANONICAL_JSON(arguments)
        else:
            canonical = _CANONICAL_JSON(_canonical(arguments))
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_the_flat_form_is_the_encoders_text_exactly() -> None:
    # Digests stored by earlier releases must still match: the hand-written
    # text of a few plain arguments is the JSON encoder's, byte for byte.
    import hashlib
    import random

    from celery_claim.keys import _CANONICAL_JSON, _flat_json

    rng = random.Random(1234)
    texts = ["", "a", "é", "\u2028", "tab\tnew\nline", '"quoted"', "back\\slash",
             "\x00\x1f", "😀", "</script>", "über-Größe", "0", "null"]
    values: list[object] = [None, True, False, 0, -1, 1, 10**30, -(2**63), *texts]
    for _ in range(5000):
        arguments = {rng.choice(texts) + str(rng.randrange(3)): rng.choice(values)
                     for _ in range(rng.randrange(7))}
        assert _flat_json(arguments) == _CANONICAL_JSON(arguments), arguments
    assert _flat_json({"n": 1.5}) is None
    assert _flat_json({"n": [1]}) is None
    assert _flat_json({1: "x"}) is None  # type: ignore[dict-item]
    import types

    class Shadowed(dict):  # type: ignore[type-arg]
        def __getitem__(self, key: object) -> object:
            return "other"

    old_style = [types.MappingProxyType({"a": 1}), Shadowed(a=1),
                 {"b": decimal.Decimal(1), "a": 1}]
    for arguments in old_style:  # not the flat form: the encoder's answer, as before
        assert payload_digest(arguments) == _previous_digest(arguments)  # type: ignore[arg-type]
    mixed = {1: "x", "a": 2}
    assert _flat_json(mixed) is None  # type: ignore[arg-type]
    assert payload_digest(mixed) == hashlib.sha256(  # type: ignore[arg-type]
        _CANONICAL_JSON({"1": "x", "a": 2}).encode()).hexdigest()


def test_arguments_that_only_look_plain_take_the_canonical_walk() -> None:
    class Level(int, enum.Enum):
        HIGH = 3

    assert payload_digest({"level": Level.HIGH}) == payload_digest({"level": 3})
    assert payload_digest({"n": 1.5}) == payload_digest({"n": 1.5})
    assert payload_digest({"n": float("nan")}) is None


def test_digest_of_unstable_argument_is_none() -> None:
    assert payload_digest({"obj": object()}) is None


def job(order_id: int, amount: int, currency: str = "EUR", note: str = "") -> None: ...


JOB = inspect.signature(job)


@pytest.mark.parametrize(("args", "kwargs"), [
    ((1, 2), {}), ((1, 2, "USD"), {}), ((1, 2, "USD", "n"), {}), ((1,), {"amount": 2}),
    ((), {"order_id": 1, "amount": 2, "note": "x"}), ((1, 2), {"note": "x"}),
])
def test_fast_bind_matches_signature_bind(args: tuple, kwargs: dict) -> None:
    expected = JOB.bind(*args, **kwargs)
    expected.apply_defaults()
    assert KeyBuilder("job", JOB, DEFAULT_KEY).bind(args, kwargs) == dict(expected.arguments)


@pytest.mark.parametrize(("args", "kwargs"), [
    ((1, 2, 3, 4, 5), {}), ((1,), {}), ((1, 2), {"order_id": 1}), ((1, 2), {"other": 1}),
])
def test_fast_bind_rejects_what_signature_bind_rejects(args: tuple, kwargs: dict) -> None:
    with pytest.raises(TypeError):
        JOB.bind(*args, **kwargs)
    with pytest.raises(TypeError):
        KeyBuilder("job", JOB, DEFAULT_KEY).bind(args, kwargs)
