"""Task arguments of every type a key or digest must carry unchanged, per task serializer."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal
from typing import Any

WHEN = datetime.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=datetime.timezone.utc)
NESTED = {"z": {"b": [1, (2, 3)], "a": {"x": None, "y": 0.25}}, "k": "é"}
#: A key over the typed arguments (bytes, tuples and dicts go into the digest only).
KEY = "k:{when}:{day}:{ident}:{amount}"

#: The arguments each serializer carries (kombu's msgpack has no datetime,
#: Decimal or UUID: publishing those fails before any claim is involved).
ARGUMENTS: dict[str, dict[str, Any]] = {
    "json": {"when": WHEN, "day": WHEN.date(), "ident": uuid.UUID(int=7),
             "amount": Decimal("12.50"), "raw": b"\x00\xff\x10", "text": b"abc",
             "pair": (1, (2, 3)), "nested": NESTED},
    "msgpack": {"when": "2026-03-04", "day": 4, "ident": "id-7", "amount": 1250,
                "raw": b"\x00\xff\x10", "text": b"abc", "pair": (1, (2, 3)), "nested": NESTED},
}
ARGUMENTS["pickle"] = ARGUMENTS["json"]


def job(when: Any, day: Any, ident: Any, amount: Any, raw: bytes, text: bytes,
        pair: tuple[Any, ...], nested: dict[str, Any]) -> None:
    """The signature of the task that takes them."""
