"""The soak command without services: options, the report table, the exit status."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from celery_claim import cli, soak
from celery_claim.proof.counting import latency_bucket

URLS = ["--database-url", "postgresql+psycopg://u:secret@db/x", "--broker-url",
        "redis://127.0.0.1:6379/3"]


def side(label: str, double: int = 0, lost: int = 0) -> soak.SideReport:
    return soak.SideReport(label=label, records=1000, published=2000, deliveries=2300,
                           suppressed=1300, double_effects=double, records_doubled=double,
                           lost=lost, redelivered=4, seconds=10.0)


def report(double: int = 0, lost: int = 0, command: str = "") -> soak.SoakReport:
    return soak.SoakReport(command=command, seconds=10.0, workers="4 x 2 (prefork, threads)",
                           claimed=side("ClaimTask", double, lost),
                           naive=side("check-then-act", 41), latency_ms={"p50": 1.2},
                           kills={"pool process": 3, "worker": 1}, events={}, unfinished_claims=0)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_run(options: soak.SoakOptions, *, quiet: bool = False,
                 command: str = "") -> soak.SoakReport:
        calls.append({"options": options, "command": command})
        return report(double=int(options.records == 13), command=command)

    monkeypatch.setattr(soak, "run", fake_run)
    return calls


def test_latency_buckets_keep_two_significant_digits() -> None:
    assert latency_bucket(0.0012345) == 1200
    assert latency_bucket(0.000004) == 4
    assert latency_bucket(0.25) == 250_000


def test_percentiles_of_a_histogram() -> None:
    found = soak.percentiles({1000: 50, 2000: 40, 9000: 9, 50_000: 1})
    assert found == {"p50": 1.0, "p90": 2.0, "p99": 9.0, "p99.9": 50.0, "max": 50.0}
    assert soak.percentiles({}) == {}


def test_the_summary_table_and_a_zero_exit(runs: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(cli.claim, ["soak", *URLS, "--records", "500", "--copies", "3",
                                            "--kill-rate", "12", "--no-control"])
    assert result.exit_code == 0, result.output
    options = runs[0]["options"]
    assert (options.records, options.copies, options.kill_rate, options.control) == (
        500, 3, 12.0, False)
    assert runs[0]["command"] == (
        "celery-claim soak --database-url postgresql+psycopg://u:***@db/x --broker-url "
        "redis://127.0.0.1:6379/3 --records 500 --copies 3 --kill-rate 12 --no-control")
    assert "ClaimTask ran every record exactly once" in result.output
    assert "check-then-act ran 41 records more than once" in result.output


def test_a_double_effect_exits_1(runs: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(soak.soak, [*URLS, "--records", "13", "--json"])
    assert result.exit_code == 1
    assert '"ok": false' in result.output


def test_urls_come_from_the_environment_or_the_group(runs: list[dict[str, Any]]) -> None:
    env = {"CELERY_BROKER_URL": "redis://r/1"}
    result = CliRunner().invoke(cli.claim, ["--database-url", "postgresql+psycopg://h/d",
                                            "soak"], env=env)
    assert result.exit_code == 0, result.output
    assert runs[0]["options"].database_url == "postgresql+psycopg://h/d"
    assert runs[0]["options"].broker_url == "redis://r/1"


def test_missing_or_wrong_services_are_refused() -> None:
    runner = CliRunner()
    missing = runner.invoke(soak.soak, ["--broker-url", "redis://r/1"],
                            env={"CELERY_CLAIM_DATABASE_URL": ""})
    assert missing.exit_code == 2
    assert "--database-url" in missing.output
    sqlite = runner.invoke(soak.soak, ["--database-url", "sqlite:///x.db", "--broker-url",
                                       "redis://r/1"])
    assert sqlite.exit_code == 1
    assert "needs PostgreSQL" in sqlite.output
