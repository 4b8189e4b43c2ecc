"""The operators' statements: forced release, purge, listing and counts.

They build on the table and clock of :mod:`celery_claim.sql`; the life
cycle's statements, and the acquirable rule, are there.
"""

from __future__ import annotations

import sqlalchemy as sa

from celery_claim.sql import RELEASED, RUNNING, Builder, _p, _record_columns, db_now, kept_until

__all__ = ["STATEMENTS"]


def _force_release(t: sa.Table, dialect: str) -> sa.Executable:
    live = sa.and_(t.c.state == RUNNING, t.c.lease_expires_at >= db_now())
    return (
        sa.update(t)
        .where(t.c.key == _p("key"), t.c.token == _p("token"),
               sa.or_(sa.not_(live), _p("force", sa.Boolean)))
        .values(state=RELEASED, lease_expires_at=sa.null(), updated_at=db_now(),
                error=_p("error"), expires_at=kept_until(t, _p("ttl_seconds", sa.Float)))
        .returning(t.c.token)
    )


def _purge(t: sa.Table, dialect: str) -> sa.Executable:
    batch = (
        sa.select(t.c.key)
        .where(t.c.expires_at < db_now(), t.c.state != RUNNING)
        .limit(_p("batch_size", sa.Integer))
    )
    if dialect == "postgresql":
        # Rows an acquire is re-claiming right now are skipped, never waited on.
        batch = batch.with_for_update(skip_locked=True)
    return sa.delete(t).where(t.c.key.in_(batch.scalar_subquery()))


def _list(t: sa.Table, dialect: str) -> sa.Executable:
    stale = sa.and_(t.c.state == RUNNING, t.c.lease_expires_at < db_now())
    return (
        sa.select(*_record_columns(t))
        .where(
            t.c.key > _p("after_key"),
            sa.or_(_p("state", sa.String).is_(None), t.c.state == _p("state", sa.String)),
            sa.or_(_p("task_name", sa.String).is_(None),
                   t.c.task_name == _p("task_name", sa.String)),
            sa.or_(sa.not_(_p("stale", sa.Boolean)), stale),
        )
        .order_by(t.c.key)
        .limit(_p("limit", sa.Integer))
    )


def _stats(t: sa.Table, dialect: str) -> sa.Executable:
    stale = sa.and_(t.c.state == RUNNING, t.c.lease_expires_at < db_now())
    return (
        sa.select(
            t.c.task_name, t.c.state, sa.func.count().label("claims"),
            sa.func.coalesce(sa.func.sum(t.c.duplicates), 0).label("duplicates"),
            sa.func.count().filter(stale).label("stale"),
            sa.func.coalesce(sa.func.sum(t.c.attempt), 0).label("acquisitions"),
        )
        .group_by(t.c.task_name, t.c.state)
        .order_by(t.c.task_name, t.c.state)
    )


#: The operators' statements by name: (description, builder).
STATEMENTS: dict[str, tuple[str, Builder]] = {
    "force_release": ("operator release, fenced by token; refuses a live lease unless forced",
                      _force_release),
    "purge": ("delete one batch of finished claims past their expiry", _purge),
    "list": ("one page of claims by key, filtered by state, task and stale lease", _list),
    "stats": ("claims, duplicates and stale leases by task and state", _stats),
}
