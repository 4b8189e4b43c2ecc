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
DRIVER = os.environ.get("CELERY_CLAIM_TEST_DJANGO_DRIVER", "psycopg")
if DRIVER == "psycopg2":
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # Django falls back to psycopg2

for path in (str(EXAMPLE), str(HERE.parent)):
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ["DJANGO_SETTINGS_MODULE"] = "django_claims.django_test_settings"

import django  # noqa: E402

django.setup()


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
