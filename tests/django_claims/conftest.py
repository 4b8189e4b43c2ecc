"""Django for the tests in this directory: configured once per process, with
test databases of their own (created at the start, dropped at the end).

``CELERY_CLAIM_TEST_DJANGO_DRIVER=psycopg2`` hides psycopg 3 from the
process, so Django's PostgreSQL backend runs on psycopg2 (the test of that
backend re-runs these tests that way in a subprocess).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "examples" / "django"
HAD_SETTINGS_MODULE = "DJANGO_SETTINGS_MODULE" in os.environ
DRIVER = os.environ.get("CELERY_CLAIM_TEST_DJANGO_DRIVER", "psycopg")
if DRIVER == "psycopg2":
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # Django falls back to psycopg2

for path in (str(EXAMPLE), str(HERE.parent)):
    if path not in sys.path:
        sys.path.insert(0, path)
# Configured in the process, not through DJANGO_SETTINGS_MODULE: the worker
# processes other tests start inherit the environment, and must not load Django.
import django  # noqa: E402
from django.conf import settings  # noqa: E402

if not settings.configured:
    import django_claims.django_test_settings as test_settings

    settings.configure(**{name: getattr(test_settings, name) for name in dir(test_settings)
                          if name.isupper()})
    django.setup()
    # The example's Celery module sets DJANGO_SETTINGS_MODULE (as a project's
    # does); take it back out of the environment the workers inherit.
    import proj.celery  # noqa: F401
    if not HAD_SETTINGS_MODULE:
        os.environ.pop("DJANGO_SETTINGS_MODULE", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.django)


@pytest.fixture(scope="session", autouse=True)
def django_databases(database_url: str) -> Iterator[None]:
    """Django's test databases, migrated (``database_url`` checks the server is up)."""
    from django.test.utils import (
        setup_databases,
        setup_test_environment,
        teardown_databases,
        teardown_test_environment,
    )

    setup_test_environment()
    config = setup_databases(verbosity=0, interactive=False, serialized_aliases=[])
    yield
    teardown_databases(config, verbosity=0)
    teardown_test_environment()
