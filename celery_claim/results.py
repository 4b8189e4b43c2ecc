"""Results kept as the app's result backend encodes them.

The first delivery's return value is stored as the bytes Celery's result
backend would write for it: the app's ``result_serializer`` through kombu's
serialization registry (json with kombu's datetime, date, time, Decimal, UUID
and bytes types; pickle, msgpack and yaml where the app uses them), with the
content type and encoding beside it. A duplicate decodes those bytes, with
the content types the app accepts for results (``result_accept_content``,
else ``accept_content``), and returns the value. Celery then encodes that
value again for its own backend, and the bytes are the first delivery's: a
chord on Celery 5.5/5.6, which counts header parts by their encoded bytes,
counts the duplicate once.

The duplicate returns what the first delivery's caller reads from the result
backend: under json a tuple comes back as a list (as it does from the first
delivery's ``AsyncResult``), under pickle it stays a tuple.

This module needs only kombu; the store uses it to show JSON results as JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Collection
from typing import Any

from kombu import exceptions, serialization

# kombu is untyped: its three entry points, typed here once.
_dumps: Any = serialization.dumps
_loads: Any = serialization.loads
_prepare_accept: Any = serialization.prepare_accept_content

__all__ = ["JSON", "READABLE", "Encoded", "NotEncodable", "accept_of", "encode", "encode_json"]

#: The content type of kombu's json serializer: results shown as text.
JSON = "application/json"
_TEXT_TYPES = frozenset((JSON, "application/x-yaml", "application/text"))
#: What the store decodes for ``ClaimRecord.result``: every serializer but pickle.
READABLE = frozenset((JSON, "application/x-yaml", "application/x-msgpack", "application/text",
                      "application/data"))


class NotEncodable(Exception):
    """The result serializer cannot encode the value (or is not installed)."""


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A result as the serializer encoded it: the bytes, their content type and encoding."""

    payload: bytes
    content_type: str
    content_encoding: str

    def decode(self, accept: Collection[str] | None) -> Any:
        """The value, decoded by kombu; ``accept`` is a set of content types
        (``None`` accepts every serializer kombu has enabled). Raises kombu's
        ``ContentDisallowed`` or ``DecodeError``."""
        accepted = None if accept is None else set(accept)
        return _loads(self.payload, self.content_type, self.content_encoding,
                                   accept=accepted)

    @property
    def text(self) -> str | None:
        """The stored form as text where it is text (json, yaml); else ``None``."""
        if self.content_type not in _TEXT_TYPES or self.content_encoding == "binary":
            return None
        try:
            return self.payload.decode(self.content_encoding)
        except (LookupError, UnicodeError):
            return None

    def __repr__(self) -> str:
        shown = self.text if self.text is not None else f"<{len(self.payload)} bytes>"
        return f"Encoded({self.content_type}: {shown})"


#: Results that cannot be a result handle (the common ones; no class check for them).
_SCALARS = frozenset({type(None), bool, int, float, str, bytes, dict, list, tuple})


@functools.cache
def _result_base() -> type[Any]:
    """``celery.result.ResultBase``, imported on first use: the store imports this module."""
    from celery.result import ResultBase

    base: type[Any] = ResultBase
    return base


def encode(value: Any, serializer: str) -> Encoded:
    """``value`` as the result backend would encode it with ``serializer``.

    A result handle (``AsyncResult``, ``GroupResult``) is stored as its tuple
    unless the serializer is pickle, as Celery's ``prepare_value`` does.
    """
    if serializer == "json":
        text = _plain_json(value)
        if text is not None and _kombu_json_is_standard():
            return Encoded(text.encode(), JSON, "utf-8")
    if serializer != "pickle" and type(value) not in _SCALARS \
            and isinstance(value, _result_base()):
        value = value.as_tuple()
    try:
        content_type, content_encoding, data = _dumps(value, serializer=serializer)
    except (exceptions.EncodeError, exceptions.SerializerNotInstalled) as exc:
        raise NotEncodable(f"{type(exc).__name__}: {exc}") from exc
    if isinstance(data, str):
        data = data.encode(content_encoding or "utf-8")
    return Encoded(bytes(data), content_type, content_encoding or "utf-8")


#: Values kombu's json serializer writes as the standard library's encoder
#: does: its encoder differs only in ``default()``, which they never reach.
_JSON_SCALARS = frozenset({str, int, bool, type(None), float})
_json_encode = json.JSONEncoder().encode  # json.dumps's own settings
_json_string = json.encoder.encode_basestring_ascii  # with ensure_ascii, as json.dumps


def _plain_json(value: Any) -> str | None:
    """The json text of a plain value (a scalar, or a dict, list or tuple of
    scalars, with str keys), written as kombu's json serializer writes it;
    ``None`` for anything else (kombu then encodes it, or refuses it)."""
    try:
        return _plain_json_text(value)
    except ValueError:  # an int past the interpreter's digit limit: kombu says so
        return None


def _plain_json_text(value: Any) -> str | None:
    kind = type(value)
    if kind is str:
        return _json_string(value)
    if kind is int:
        return int.__repr__(value)
    if kind is bool or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if kind is float or kind is dict or kind is list or kind is tuple:
        if kind is dict:
            if not all(type(k) is str and type(v) in _JSON_SCALARS for k, v in value.items()):
                return None
        elif kind is not float and not all(type(v) in _JSON_SCALARS for v in value):
            return None
        text: str = _json_encode(value)
        return text
    return None


@functools.cache
def _kombu_json_is_standard() -> bool:
    """Whether kombu's ``json`` serializer writes plain values as the standard
    library does (it does, unless an application registered its own under
    that name): checked once per process, on a value of every plain kind."""
    probe = {"text": "é\"\n", "number": 7, "ratio": 1.5, "flag": True, "none": None,
             "list": [1, "x"]}
    try:
        _, _, data = _dumps(probe, serializer="json")
    except Exception:
        return False
    data = data.decode("utf-8") if isinstance(data, bytes) else data
    return bool(data == _json_encode(probe))


def encode_json(value: Any) -> Encoded:
    """``value`` through kombu's json serializer (the store's default)."""
    return encode(value, "json")


def accept_of(conf: Any) -> set[str] | None:
    """The content types the app accepts for results, with the backend's precedence:
    ``result_accept_content``, else ``accept_content``."""
    accept = conf.get("result_accept_content")
    if accept is None:
        accept = conf.get("accept_content")
    prepared: set[str] | None = _prepare_accept(accept)
    return prepared
