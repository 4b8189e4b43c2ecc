"""A duplicate returns what the first delivery returned: the same value, the same
types, the same encoded bytes, through the app's result serializer (a real
``celery worker``, PostgreSQL, and Redis as broker and result backend)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from support.core_apps import AppModule, app_module

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SOURCE = '''
import datetime
from decimal import Decimal

app.conf.update(result_serializer=os.environ["CORE_SERIALIZER"],
                result_accept_content=["json", os.environ["CORE_SERIALIZER"]])


@app.task(base=ClaimTask, bind=True, name="fidelity.bill", claim_key="bill:{order}")
def bill(self, order):
    return {"amount": Decimal("12.50"), "at": datetime.datetime(2026, 1, 2, 3, 4, 5, 6),
            "pair": (1, 2), "order": order}
'''

EXPECTED: dict[str, Any] = {"amount": Decimal("12.50"),
                            "at": datetime.datetime(2026, 1, 2, 3, 4, 5, 6), "order": 7}


def _types(value: Any) -> Any:
    """The value's shape with every leaf replaced by its type."""
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value), [_types(v) for v in value])
    return type(value)


@pytest.fixture(params=["json", "pickle"])
def fidelity(request: pytest.FixtureRequest, tmp_path: Path, database_url: str,
             redis_url: str, table_name: str) -> Iterator[AppModule]:
    yield from app_module(tmp_path, SOURCE, redis_url=redis_url, database_url=database_url,
                          table=table_name, CORE_SERIALIZER=request.param)


@pytest.mark.slow
def test_a_business_key_duplicate_gets_the_first_result_types_included(
        fidelity: AppModule) -> None:
    serializer = fidelity.env["CORE_SERIALIZER"]
    producer = fidelity.producer(result_serializer=serializer,
                                 result_accept_content=["json", serializer])
    with fidelity.worker():
        first = fidelity.send(producer, "fidelity.bill", 7)
        first_value = first.get(timeout=30)
        # The same job published again under its own task id.
        duplicate = fidelity.send(producer, "fidelity.bill", 7)
        assert duplicate.id != first.id
        duplicate_value = duplicate.get(timeout=30)
    pair = (1, 2) if serializer == "pickle" else [1, 2]  # what the backend carries
    assert first_value == {**EXPECTED, "pair": pair}
    assert duplicate_value == first_value
    assert _types(duplicate_value) == _types(first_value)
    assert type(duplicate_value["amount"]) is Decimal
    assert type(duplicate_value["at"]) is datetime.datetime
    # The same encoded bytes: what a chord on Celery 5.5/5.6 counts by.
    encoded = producer.backend.encode(first_value)
    assert producer.backend.encode(duplicate_value) == encoded
    (row,) = fidelity.rows("SELECT result, duplicates FROM {table}")
    assert bytes(row.result) == (encoded.encode() if isinstance(encoded, str) else encoded)
    assert row.duplicates == 1
