"""Claim stores the tests build on engines of their own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from celery_claim import ClaimStore


def store_on_engine(url: str, table: str, **connect_args: Any) -> Iterator[ClaimStore]:
    """A claim store with its own fresh table, on an engine of the test's own
    (``connect_args`` for the driver), as an application's engine would be."""
    engine = sa.create_engine(url, connect_args=connect_args)
    store = ClaimStore(engine=engine, table=table)
    store.create_schema()
    yield store
    store.drop_schema()
    store.dispose()
    engine.dispose()
