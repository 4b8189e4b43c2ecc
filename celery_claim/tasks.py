"""Tasks to schedule with Celery beat.

Add this module to the app (``include=["celery_claim.tasks"]`` or
``app.conf.imports``) and schedule :func:`purge`::

    app.conf.beat_schedule = {
        "purge-claims": {"task": "celery_claim.purge", "schedule": 3600.0},
    }

It finds the claim store like every ClaimTask of the app:
``claim_database_url`` (or ``claim_engine``) and ``claim_table`` in the app's
configuration, then ``CELERY_CLAIM_DATABASE_URL`` / ``CELERY_CLAIM_TABLE``.
A purge is not a claimed task: it is safe to run twice.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from celery_claim import _admin

__all__ = ["purge"]

logger = logging.getLogger("celery_claim")


@shared_task(  # type: ignore[untyped-decorator]
    name="celery_claim.purge", base=Task, bind=True, ignore_result=False)
def purge(self: Any, batch_size: int = 1000, max_batches: int | None = None,
          pause: float = 0.0, table: str | None = None) -> dict[str, Any]:
    """Delete finished claims past their expiry, in short batches; returns the count.

    ``max_batches`` bounds one run (the next scheduled run carries on);
    ``pause`` seconds between batches spread the load; ``table`` overrides
    ``claim_table`` for apps with more than one claims table.
    """
    from celery_claim.settings import ClaimSettings
    from celery_claim.task import store_for

    config = _admin.resolve(self.app.conf, table=table)
    store = store_for(ClaimSettings(database_url=config.database_url, engine=config.engine,
                                    table=config.table, create_schema=False))
    deleted = _admin.purge_in_batches(store, batch_size=batch_size, max_batches=max_batches,
                                      pause=pause)
    logger.info("claim purge deleted %d expired claim(s) from %s", deleted, config.table,
                extra={"claim_event": "purge", "claim_deleted": deleted})
    return {"deleted": deleted, "table": config.table}
