"""The proof's tools as users run them: the soak command and the pytest-celery example.

``celery-claim soak`` runs a short soak with kills and its naive control;
the ``examples.proof.`` project (its app, the conftest that backs
pytest-celery's ``celery_setup`` with local worker processes, and its tests)
passes under pytest as a user's project would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]


def environment(database_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAIM_", "CELERY_"))}
    return {**env, "CELERY_CLAIM_DATABASE_URL": database_url, "CELERY_BROKER_URL": redis_url}


def _run_in_own_group(command: list[str], *, env: dict[str, str],
                      timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command``; past ``timeout``, SIGTERM, on which a run stops its
    workers and removes its tables (left running, they would take later
    tests' CPU), then SIGKILL for its whole process group."""
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"{command[2]} did not finish in {timeout:g}s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# The run's own timeout comes first, so that a run that hangs is stopped with
# SIGTERM and its output is shown; pytest-timeout is the last resort.
@pytest.mark.timeout(420)
def test_soak_runs_once_with_kills_and_its_control_doubles(database_url: str,
                                                          redis_url: str) -> None:
    # A kill a second on average: the run lasts about 12 s and kills only
    # workers that have run for 5 s, so at 30 a minute one run in twenty
    # killed nothing at all; at 120 a minute a slow machine spent the run
    # restarting workers.
    result = _run_in_own_group(
        [sys.executable, "-m", "celery_claim.soak", "--records", "300", "--copies", "3",
         "--workers", "2", "--kill-rate", "60", "--lease", "2", "--visibility-timeout", "5",
         "--json"],
        env=environment(database_url, redis_url), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    claimed, naive = report["claimed"], report["naive"]
    assert report["ok"] is True
    assert (claimed["double_effects"], claimed["lost"]) == (0, 0)
    assert claimed["deliveries"] >= 900
    assert claimed["suppressed"] >= 600
    assert naive["published"] == 900
    assert report["latency_ms"]["p50"] > 0
    # The same run shows what it guards against: the control ran records twice,
    # and pool processes or workers were killed while the work went on.
    assert naive["double_effects"] > 0, naive
    assert naive["records_doubled"] > 0, naive
    assert sum(report["kills"].values()) > 0, report["kills"]


def test_the_pytest_celery_example_project_passes(database_url: str, redis_url: str) -> None:
    result = subprocess.run(
        # One process: the example is a user's small project, with its own tables.
        [sys.executable, "-m", "pytest", "examples/proof", "-q", "-p", "no:cacheprovider",
         "-n", "0"],
        env=environment(database_url, redis_url), cwd=ROOT, capture_output=True, text=True,
        timeout=240, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
