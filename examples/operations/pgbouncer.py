"""A claim engine of your own: through PgBouncer, or shared with the application."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from celery import Celery


def set_plan_cache_mode(dbapi_connection: Any, _record: Any) -> None:
    # What celery-claim does on the engines it creates: custom plans always
    # use the primary key, even if the table was analysed while empty.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_custom_plan")
    dbapi_connection.commit()


def direct_engine(url: str) -> sa.Engine:
    """Shared with the application, straight to PostgreSQL."""
    engine = sa.create_engine(url, pool_size=10, pool_pre_ping=True)
    sa.event.listen(engine, "connect", set_plan_cache_mode)
    return engine


def pgbouncer_engine(url: str) -> sa.Engine:
    """Through PgBouncer in transaction mode: no prepared statements, no session SET."""
    # prepare_threshold=None: psycopg never prepares, so nothing depends on the
    # server session, and no generic plan can be cached.
    return sa.create_engine(url, connect_args={"prepare_threshold": None},
                            pool_pre_ping=True)


app = Celery("proj", broker="redis://localhost:6379/0")
app.conf.claim_engine = direct_engine("postgresql+psycopg://postgres@localhost:5432/test")
