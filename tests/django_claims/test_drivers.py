"""Django's PostgreSQL backend on either driver: these tests again on psycopg2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

HERE = Path(__file__).resolve().parent
DRIVER = os.environ.get("CELERY_CLAIM_TEST_DJANGO_DRIVER", "psycopg")
#: The in-process tests that need nothing but Django's connection.
ON_EITHER_DRIVER = ["test_atomic.py", "test_testcase.py", "test_admin.py", "test_commands.py",
                    "test_duplicate_count_commit.py",
                    "test_recipe.py", "test_drivers.py"]


def test_the_backend_runs_on_the_chosen_driver() -> None:
    assert connection.Database.__name__ == DRIVER


@pytest.mark.postgres
@pytest.mark.skipif(DRIVER == "psycopg2", reason="already running on psycopg2")
def test_the_same_tests_pass_on_psycopg2(database_url: str) -> None:
    url = database_url.replace("+psycopg://", "+psycopg2://", 1)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         "-k", "not test_the_same_tests_pass_on_psycopg2",
         *[str(HERE / name) for name in ON_EITHER_DRIVER]],
        env={**os.environ, "CELERY_CLAIM_TEST_DJANGO_DRIVER": "psycopg2",
             "CELERY_CLAIM_TEST_DATABASE_URL": url},
        capture_output=True, text=True, timeout=300, cwd=HERE.parents[1])
    print(result.stdout[-3000:], result.stderr[-2000:])
    assert result.returncode == 0
    assert " passed" in result.stdout
    assert " skipped" not in result.stdout.splitlines()[-1]
