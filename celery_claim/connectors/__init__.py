"""Connectors: how the claim store reaches its database.

:class:`~celery_claim.connectors.base.Connector` is the interface (its module
docstring is the guide for writing one);
:class:`~celery_claim.connectors.sqlalchemy.SQLAlchemyConnector` runs the
store on a SQLAlchemy engine (PostgreSQL through psycopg 3, or SQLite).
"""

from __future__ import annotations

from celery_claim.connectors.base import Connector, Result, Transaction, cursor_result

__all__ = ["Connector", "Result", "Transaction", "cursor_result"]
