"""What the operator tools share: finding the claim store, purging in batches.

The command line (``celery-claim``, ``celery -A proj claim``) and the beat
task (:func:`celery_claim.tasks.purge`) both find the store the way a worker
does: an explicit value, then the Celery app's ``claim_*`` configuration,
then the ``CELERY_CLAIM_*`` environment.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery_claim import errors, settings, sql
from celery_claim.store import ClaimStore

__all__ = ["StoreConfig", "purge_in_batches", "resolve"]

#: Hint added to "cannot reach the store" errors.
URL_HINT = "check --database-url, app.conf.claim_database_url or CELERY_CLAIM_DATABASE_URL"


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """Where the claims live: a URL or an engine, and a table."""

    database_url: str | None
    engine: Any
    table: str
    #: A Django DATABASES alias (``claim_django_database``): Django's connection.
    django_database: str | None = None

    def open(self) -> ClaimStore:
        """A store for these settings (no schema is created)."""
        if self.django_database is not None:
            from celery_claim.task import django_store

            return django_store(self.django_database, self.table)
        return ClaimStore(self.database_url, engine=self.engine, table=self.table,
                          create_schema=False)

    def describe(self) -> str:
        """The store's location with any password hidden."""
        if self.django_database is not None:
            return f"{self.table} in Django's database {self.django_database!r}"
        if self.engine is not None:
            url = self.engine.url.render_as_string(hide_password=True)
        else:
            import sqlalchemy as sa

            try:
                url = sa.engine.make_url(self.database_url or "").render_as_string(
                    hide_password=True)
            except sa.exc.ArgumentError:
                url = "(invalid URL)"
        return f"{self.table} at {url}"


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None and v != ""), None)


def resolve(conf: Mapping[str, Any] | None = None, *, database_url: str | None = None,
            table: str | None = None, environ: Mapping[str, str] | None = None,
            require_url: bool = True) -> StoreConfig:
    """Resolve the store: explicit value > Celery config > environment > default.

    Only the settings that locate the store are read, so unrelated
    ``CELERY_CLAIM_*`` variables do not stop an operator tool.
    """
    conf = conf if conf is not None else {}
    env = os.environ if environ is None else environ
    engine = conf.get("claim_engine") if database_url is None else None
    url = _first(database_url, conf.get("claim_database_url"),
                 env.get(f"{settings.ENV_PREFIX}DATABASE_URL"))
    name = _first(table, conf.get("claim_table"), env.get(f"{settings.ENV_PREFIX}TABLE"),
                  sql.DEFAULT_TABLE)
    settings.validate("claim_table", name)
    alias = conf.get("claim_django_database") if database_url is None else None
    if alias is not None:
        return StoreConfig(database_url=None, engine=None, table=str(name),
                           django_database=str(alias))
    if engine is None and url is None:
        if require_url:
            raise errors.ClaimConfigurationError(
                "no claim store configured: pass --database-url, set "
                "CELERY_CLAIM_DATABASE_URL, or set app.conf.claim_database_url")
    elif engine is None:
        settings.validate("claim_database_url", url)
    return StoreConfig(database_url=url, engine=engine, table=str(name))


def purge_in_batches(store: ClaimStore, *, batch_size: int = 1000,
                     max_batches: int | None = None, pause: float = 0.0,
                     on_batch: Callable[[int], None] | None = None) -> int:
    """Delete finished claims past their expiry, one short statement per batch.

    Each batch is its own transaction and skips rows an acquire has locked,
    so it never makes an acquire wait for long. ``pause`` seconds between
    batches spread the load. Returns how many claims were deleted.
    """
    if batch_size < 1:
        raise errors.ClaimConfigurationError("batch size must be at least 1",
                                             batch_size=batch_size)
    deleted = batches = 0
    while max_batches is None or batches < max_batches:
        count = store.purge(batch_size=batch_size, max_batches=1)
        deleted += count
        batches += 1
        if on_batch is not None:
            on_batch(count)
        if count < batch_size:
            break
        if pause > 0:
            time.sleep(pause)
    return deleted
