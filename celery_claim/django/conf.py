"""Where the Django app finds the claims: the database alias and the table.

Both are read from Django's settings with the names the Celery configuration
uses under ``namespace="CELERY"``: ``CELERY_CLAIM_DJANGO_DATABASE`` (default
``"default"``) and ``CELERY_CLAIM_TABLE`` (default ``celery_claims``).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from celery_claim import errors, sql

__all__ = ["database_alias", "table_name"]


def database_alias() -> str:
    """The ``DATABASES`` alias the claims live in."""
    alias = getattr(settings, "CELERY_CLAIM_DJANGO_DATABASE", None) or "default"
    if not isinstance(alias, str) or alias not in settings.DATABASES:
        known = ", ".join(sorted(settings.DATABASES))
        raise ImproperlyConfigured(
            f"CELERY_CLAIM_DJANGO_DATABASE must name a DATABASES alias (one of: {known}), "
            f"not {alias!r}")
    return alias


def table_name() -> str:
    """The claims table's name: a plain identifier (no schema) in the Django app."""
    name = getattr(settings, "CELERY_CLAIM_TABLE", None) or sql.DEFAULT_TABLE
    try:
        schema, table = sql.parse_table_name(name)
    except errors.ClaimConfigurationError as exc:
        raise ImproperlyConfigured(str(exc)) from exc
    if schema is not None:
        raise ImproperlyConfigured(
            "CELERY_CLAIM_TABLE must be a plain table name with the Django app; to keep the "
            "claims in another schema, put that schema on the connection's search_path "
            f"(DATABASES OPTIONS), not in the name (got {name!r})")
    return table
