"""Keys and payload digests survive kombu's round trip unchanged, for each task
serializer: what the producer sends and what the worker (or a re-published
retry or deferral) decodes give the same key and the same digest."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from kombu import serialization
from support.core_values import ARGUMENTS, KEY, job

from celery_claim import keys


def _builder(template: str) -> keys.KeyBuilder:
    return keys.KeyBuilder("t", inspect.signature(job), template)


def _through_kombu(serializer: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The task message body (protocol 2: args, kwargs, embed) there and back."""
    content_type, encoding, body = serialization.dumps((args, kwargs, {}), serializer=serializer)
    decoded_args, decoded_kwargs, _ = serialization.loads(body, content_type, encoding,
                                                          accept={content_type})
    return tuple(decoded_args), decoded_kwargs


@pytest.mark.parametrize("serializer", sorted(ARGUMENTS))
@pytest.mark.parametrize("split", [0, 3, 8], ids=["kwargs", "mixed", "args"])
def test_key_and_digest_are_the_same_after_each_round_trip(serializer: str, split: int) -> None:
    builder = _builder(KEY)
    values = ARGUMENTS[serializer]
    names = list(values)
    args = tuple(values[n] for n in names[:split])
    kwargs = {n: values[n] for n in names[split:]}
    original_key = builder.build("id", args, kwargs)
    original_digest = keys.payload_digest(builder.bind(args, kwargs))
    assert original_digest is not None
    # The first delivery, then a re-publish of what it decoded (retry,
    # deferral), then one more: the same key and digest every time.
    for _ in range(3):
        args, kwargs = _through_kombu(serializer, args, kwargs)
        assert builder.build("id", args, kwargs) == original_key
        assert keys.payload_digest(builder.bind(args, kwargs)) == original_digest


def test_the_same_call_as_args_or_kwargs_has_one_digest() -> None:
    builder = _builder("k:{amount}")
    values = ARGUMENTS["json"]
    by_name = keys.payload_digest(builder.bind((), values))
    by_position = keys.payload_digest(builder.bind(tuple(values.values()), {}))
    assert by_name == by_position


def test_arguments_with_no_stable_form_have_no_digest() -> None:
    class Opaque:
        pass

    assert keys.payload_digest({"x": Opaque()}) is None
