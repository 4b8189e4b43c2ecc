"""``celery-claim demo`` end to end: real worker processes, both backends."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from celery_claim.testing import wait_for

BIN = Path(sys.executable).parent


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("CELERY_CLAIM_") and k != "CELERY_BROKER_URL"}
    return subprocess.run([str(BIN / "celery-claim"), "demo", *args], capture_output=True,
                          text=True, env={**clean, **(env or {})}, timeout=240, check=False)


def check_report(report: dict[str, Any], jobs: int, copies: int) -> None:
    naive, claim = report["naive"], report["claim"]
    for side in (naive, claim):
        assert side["jobs"] == jobs
        assert side["deliveries"] == jobs * copies
        assert side["lost"] == 0
    # The control must show the race, or the demo proves nothing.
    assert naive["double_effects"] > 0
    assert naive["charges"] == jobs + naive["double_effects"]
    assert claim["double_effects"] == 0
    assert claim["charges"] == jobs
    assert claim["suppressed"] == jobs * (copies - 1)
    assert report["ok"] is True


def test_demo_runs_on_the_embedded_default_with_nothing_configured() -> None:
    result = run_demo("--jobs", "40")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "SQLite" in out
    assert "embedded default" in out
    assert "kombu filesystem transport" in out
    assert "check-then-act" in out
    assert "ClaimTask charged every order exactly once." in out
    for header in ("jobs", "deliveries", "double", "suppressed", "throughput"):
        assert header in out


def test_demo_json_on_postgresql_and_redis(database_url: str, redis_url: str) -> None:
    result = run_demo("--jobs", "40", "--copies", "3", "--json",
                      "--database-url", database_url, "--broker-url", redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    check_report(report, jobs=40, copies=3)
    assert report["claim_store"].startswith("postgresql+psycopg://")
    assert report["broker"] == redis_url
    # It cleaned up after itself: no demo tables left behind.
    assert not [n for n in _demo_tables(database_url) if report["name"] in n]


def test_demo_reads_the_usual_environment_variables(database_url: str, redis_url: str) -> None:
    result = run_demo("--jobs", "10", "--json",
                      env={"CELERY_CLAIM_DATABASE_URL": database_url,
                           "CELERY_BROKER_URL": redis_url})
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["claim_store"].startswith("postgresql")
    assert report["claim"]["double_effects"] == 0


def test_demo_with_an_unreachable_database_is_a_one_line_error() -> None:
    result = run_demo("--database-url", "postgresql+psycopg://postgres@127.0.0.1:1/x")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("celery-claim: error: ")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_cleans_up_when_interrupted(database_url: str, redis_url: str,
                                         sig: signal.Signals) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_CLAIM_")}
    before = set(_demo_tables(database_url))
    # SIGINT back to its default in the demo, as a terminal's shell gives it: a
    # run started in the background by a shell without job control (as CI may
    # be) inherits SIGINT ignored, and Python then keeps it ignored instead of
    # raising KeyboardInterrupt. Set in a small launcher that then becomes the
    # demo (exec), not in preexec_fn, which is unsafe in a threaded process.
    proc = subprocess.Popen([sys.executable, "-c", _AS_AT_A_TERMINAL, str(BIN / "celery-claim"),
                             "demo", "--jobs", "2000", "--json",
                             "--database-url", database_url, "--broker-url", redis_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean)
    ours: set[str] = set()
    try:
        # Interrupt once the workers run (the demo tables exist and charges are coming in).
        ours = wait_for(lambda: set(_demo_tables(database_url)) - before, timeout=60)
        time.sleep(4)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # What the demo left behind (its workers run in sessions of their own)
        # is killed whatever happened, and then counted against it.
        left = _run_pids(ours)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert not ours & set(_demo_tables(database_url))
    assert _run_name(ours) is not None
    assert not left


_AS_AT_A_TERMINAL = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                     "os.execv(sys.argv[1], sys.argv[1:])")


def _run_name(tables: set[str]) -> str | None:
    match = re.search(r"demo_([0-9a-f]{8})", next(iter(tables), ""))
    return match.group(1) if match else None


def _run_pids(tables: set[str]) -> list[int]:
    """The processes of the demo run that created ``tables``."""
    name = _run_name(tables)
    return [] if name is None else [
        pid for pid in _pids() if f"claim-demo-{name}" in _cmdline(pid)]


def _demo_tables(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()
    return [n for n in names if n.startswith(("claim_demo_", "celery_claims_demo_"))]


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
