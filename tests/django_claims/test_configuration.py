"""claim_django_database: one claim store, Django's; a clear error otherwise."""

from __future__ import annotations

import types
from typing import Any

import pytest
from celery import Celery

from celery_claim import ClaimConfigurationError, settings
from celery_claim.django.connector import DjangoConnector, claim_store


def conf(**values: object) -> Any:
    """A Celery app's configuration, from Django-style ``CELERY_*`` settings."""
    app = Celery("c", set_as_current=False)
    app.config_from_object(types.SimpleNamespace(
        **{f"CELERY_{k.upper()}": v for k, v in values.items()}), namespace="CELERY")
    return app.conf


def test_the_celery_namespace_spelling_reaches_the_setting() -> None:
    resolved = settings.from_sources({}, conf(claim_django_database="default"), environ={})
    assert resolved.django_database == "default"
    assert resolved.database_url is None


@pytest.mark.parametrize("other", ["claim_database_url", "claim_engine"])
def test_it_is_not_set_together_with_another_store(other: str) -> None:
    value = "postgresql+psycopg://db/x" if other == "claim_database_url" else object()
    with pytest.raises(ClaimConfigurationError, match=f"claim_django_database.*{other}"):
        settings.from_sources({}, {"claim_django_database": "default", other: value},
                              environ={})


def test_an_environment_url_yields_to_it() -> None:
    resolved = settings.from_sources({}, {"claim_django_database": "default"},
                                     environ={"CELERY_CLAIM_DATABASE_URL": "sqlite:///x.db"})
    assert (resolved.django_database, resolved.database_url) == ("default", None)


def test_a_task_option_conflicting_with_the_app_is_refused() -> None:
    with pytest.raises(ClaimConfigurationError, match="choose one claim store"):
        settings.from_sources({"claim_database_url": "sqlite:///x.db"},
                              {"claim_django_database": "default"}, environ={})


def test_an_unknown_alias_is_refused() -> None:
    with pytest.raises(ClaimConfigurationError, match="DATABASES alias"):
        DjangoConnector("nope")
    with pytest.raises(ClaimConfigurationError, match="DATABASES alias"):
        settings.from_sources({}, {"claim_django_database": ""}, environ={})


def test_the_store_has_no_engine_and_says_so() -> None:
    store = claim_store()
    assert "Django's database 'default'" in repr(store)
    with pytest.raises(ClaimConfigurationError, match="no SQLAlchemy engine"):
        store.engine  # noqa: B018
