"""The worker benchmark's CPU accounting: PostgreSQL's processes told apart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from benchmarks import workers


@pytest.mark.parametrize(("cmdline", "role"), [
    ("postgres: 15/main: root test 127.0.0.1(40312) idle", "postgres_backends"),
    ("postgres: 15/main: root test [local] INSERT", "postgres_backends"),
    ("postgres: app app 10.0.0.7(5521) idle in transaction", "postgres_backends"),
    ("postgres: 15/main: walwriter ", "postgres_background"),
    ("postgres: checkpointer ", "postgres_background"),
    ("postgres: 15/main: autovacuum worker test", "postgres_background"),
    ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", "postgres_background"),
])
def test_a_postgres_process_is_a_backend_when_its_title_names_a_client(
        cmdline: str, role: str) -> None:
    assert workers._postgres_role(cmdline) == role


def test_cpu_used_counts_what_ended_in_between_from_the_postmaster() -> None:
    before = {10: ("postgres_backends", 1.0), 11: ("postgres_background", 2.0),
              12: ("postgres_backends", 0.5), workers._REAPED: ("postgres_ended", 5.0),
              20: ("worker", 1.0), 30: ("redis", 3.0)}
    # 12 ended with 0.75 s in all (reaped: +0.75), 13 started; 21 is a new worker.
    after = {10: ("postgres_backends", 1.5), 11: ("postgres_background", 2.25),
             13: ("postgres_backends", 0.1), workers._REAPED: ("postgres_ended", 5.75),
             20: ("worker", 1.2), 21: ("worker", 0.3), 30: ("redis", 3.5)}
    used = workers._cpu_used(before, after)
    assert used["postgres_backends"] == pytest.approx(0.6)
    assert used["postgres_background"] == pytest.approx(0.25)
    assert used["postgres_ended"] == pytest.approx(0.25)
    assert used["postgres"] == pytest.approx(1.1)
    assert used["worker"] == pytest.approx(0.5)
    assert used["redis"] == pytest.approx(0.5)

