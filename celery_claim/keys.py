"""Claim keys and payload digests.

A key template is a :meth:`str.format` string over the task's bound
arguments (defaults applied) plus ``task_name`` and ``task_id``; a callable
key takes the task's arguments and returns the key. Only values with a
stable text form may go into a key: strings, integers, booleans, decimals,
UUIDs, dates and enums. An object's ``repr`` can hold a memory address, so a
duplicate would get a different key; such values are refused.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import hashlib
import inspect
import json
import string
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery_claim import errors, sql

__all__ = ["DEFAULT_KEY", "KeyBuilder", "payload_digest"]

DEFAULT_KEY = "{task_name}:{task_id}"
RESERVED = ("task_name", "task_id")

_STABLE = (str, int, decimal.Decimal, uuid.UUID, datetime.date, datetime.time)


class _StableFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        if isinstance(value, enum.Enum):
            value = value.value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is None or isinstance(value, bool) or not isinstance(value, _STABLE):
            raise errors.ClaimKeyError(
                "a claim key may only contain strings, integers, decimals, UUIDs, dates and "
                "enums; pass a callable claim_key to build keys from other values",
                value_type=type(value).__name__,
            )
        return super().format_field(value, format_spec)


_formatter = _StableFormatter()


def template_fields(template: str) -> list[str]:
    """The root names a template refers to (``{order.id}`` refers to ``order``)."""
    try:
        parsed = list(_formatter.parse(template))
    except ValueError as exc:
        raise errors.ClaimConfigurationError(
            f"claim_key is not a valid format string: {exc}", claim_key=template
        ) from exc
    names = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise errors.ClaimConfigurationError(
                "claim_key fields must name arguments, like 'charge:{order_id}'",
                claim_key=template,
            )
        names.append(root)
    return names


class KeyBuilder:
    """Builds a task's claim key and payload digest from its call arguments."""

    def __init__(self, task_name: str, signature: inspect.Signature | None,
                 key: str | Callable[..., str]) -> None:
        self.task_name = task_name
        self.signature = signature
        self.key = key
        self.is_default = key == DEFAULT_KEY
        self._names, self._defaults = _plain_parameters(signature)
        if isinstance(key, str):
            params = set(signature.parameters) if signature is not None else None
            for name in template_fields(key):
                if name in RESERVED:
                    continue
                if params is None or name not in params:
                    raise errors.ClaimConfigurationError(
                        f"claim_key names {{{name}}}, which is not an argument of the task",
                        task=task_name, claim_key=key,
                        arguments=sorted(params) if params else [],
                    )
        elif not callable(key):
            raise errors.ClaimConfigurationError(
                "claim_key must be a format string or a callable returning str",
                task=task_name, claim_key=key,
            )

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The call's arguments by name, defaults applied."""
        if self.signature is None:
            return {"args": list(args), "kwargs": dict(kwargs)}
        names = self._names
        if names is not None and len(args) <= len(names):
            # The common signature (plain parameters): what Signature.bind
            # does, without its cost. Anything unusual takes the full path.
            values = dict(zip(names, args, strict=False))  # len(args) <= len(names)
            if not kwargs and len(values) == len(names):
                return values
            if all(k in self._defaults or k in kwargs or k in values for k in names) and \
                    all(k in names and k not in values for k in kwargs):
                values.update(kwargs)
                return {k: values[k] if k in values else self._defaults[k] for k in names}
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def build(self, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              arguments: Mapping[str, Any] | None = None) -> str:
        """The claim key for one call."""
        if self.is_default:
            key = f"{self.task_name}:{task_id}"
        elif isinstance(self.key, str):
            values = dict(arguments if arguments is not None else self.bind(args, kwargs))
            values.update(task_name=self.task_name, task_id=task_id)
            try:
                key = _formatter.vformat(self.key, (), values)
            except (AttributeError, KeyError, IndexError, TypeError) as exc:
                raise errors.ClaimKeyError(
                    f"claim_key could not be formatted: {exc!r}", task=self.task_name,
                    claim_key=self.key,
                ) from exc
        else:
            key = self.key(*args, **kwargs)
            if not isinstance(key, str) or not key:
                raise errors.ClaimKeyError(
                    "a callable claim_key must return a non-empty str", task=self.task_name,
                    returned=type(key).__name__,
                )
        if len(key) > sql.MAX_KEY_LENGTH:
            raise errors.ClaimKeyError(
                f"claim key is longer than {sql.MAX_KEY_LENGTH} characters; build a shorter "
                "key, for example a hash of the long part in a callable claim_key",
                task=self.task_name, length=len(key), key_start=key[:60],
            )
        return key


def _plain_parameters(
        signature: inspect.Signature | None) -> tuple[tuple[str, ...] | None, dict[str, Any]]:
    """The parameter names and defaults, if every parameter is positional-or-keyword."""
    if signature is None:
        return None, {}
    params = signature.parameters.values()
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None, {}
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return tuple(signature.parameters), defaults


def _canonical(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    raise TypeError(type(value).__name__)


def payload_digest(arguments: Mapping[str, Any]) -> str | None:
    """SHA-256 of the canonical JSON of the call's arguments.

    ``None`` when an argument has no stable canonical form (an arbitrary
    object sent with the pickle serializer): the payload check is then
    skipped for that call rather than raising false mismatches.
    """
    try:
        canonical = (_flat_json(arguments)
                     if type(arguments) is dict and len(arguments) <= _FLAT_MAX else None)
        if canonical is None:
            if all(type(v) in _PLAIN for v in arguments.values()) and \
                    all(type(k) is str for k in arguments):
                canonical = _CANONICAL_JSON(arguments)  # already canonical: str keys, plain values
            else:
                canonical = _CANONICAL_JSON(_canonical(arguments))
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Values that are their own canonical form (floats are not: NaN is refused).
_PLAIN = frozenset({str, int, bool, type(None)})
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                   allow_nan=False).encode
#: Up to this many arguments, :func:`_flat_json` is quicker than the encoder,
#: which builds its C encoder anew on every call.
_FLAT_MAX = 6
_JSON_STR = json.encoder.encode_basestring  # the encoder's own, with ensure_ascii=False


def _flat_json(arguments: dict[str, Any]) -> str | None:
    """The text ``_CANONICAL_JSON`` gives for a dict of str keys and plain
    values, written out directly; None for anything else (the encoder then
    decides)."""
    for name in arguments:
        if type(name) is not str:  # the canonical walk makes it one
            return None
    parts = []
    for name in sorted(arguments):
        value = arguments[name]
        kind = type(value)
        if kind is str:
            text = _JSON_STR(value)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is bool:
            text = "true" if value else "false"
        elif value is None:
            text = "null"
        else:
            return None
        parts.append(f"{_JSON_STR(name)}:{text}")
    return "{" + ",".join(parts) + "}"
