"""The command line without a database: DDL, resolution, exit codes, plugins."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any

import click
import pytest
from click.testing import CliRunner

from celery_claim import _admin, cli, demo, errors


def run(*args: str, **kw: Any) -> Any:
    return CliRunner().invoke(cli.claim, list(args), **kw)


def test_schema_without_a_database_prints_postgresql_ddl() -> None:
    result = run("schema", env={"CELERY_CLAIM_DATABASE_URL": ""})
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE celery_claims" in result.stdout
    assert "result BYTEA" in result.stdout
    assert "celery_claims_expires_idx" in result.stdout
    assert "key TEXT NOT NULL" in result.stdout
    # One secondary index and no check constraint: completions stay HOT updates.
    assert "CREATE INDEX" in result.stdout
    assert result.stdout.count("CREATE INDEX") == 1
    assert "CHECK" not in result.stdout


def test_schema_for_sqlite_and_a_custom_table() -> None:
    result = run("--table", "ops.claims", "schema", "--dialect", "sqlite")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE ops.claims" in result.stdout
    assert "BYTEA" not in result.stdout


def test_schema_apply_needs_a_database() -> None:
    result = run("schema", "--apply", env={"CELERY_CLAIM_DATABASE_URL": ""})
    assert result.exit_code == 1
    assert result.stderr.startswith("celery-claim: error: no claim store configured")


def test_help_lists_every_command() -> None:
    result = run("--help")
    for name in ("schema", "status", "list", "release", "purge", "stats", "demo"):
        assert f"  {name}" in result.stdout


def test_soak_is_mounted_when_its_module_provides_a_command(monkeypatch:
                                                            pytest.MonkeyPatch) -> None:
    @click.command()
    def fake_soak() -> None:
        click.echo("soaking")

    module = types.ModuleType("celery_claim.soak")
    module.__spec__ = importlib.machinery.ModuleSpec("celery_claim.soak", None)
    module.command = fake_soak  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "celery_claim.soak", module)
    assert "soak" in run("--help").stdout
    assert run("soak").stdout == "soaking\n"


def test_resolve_precedence() -> None:
    conf = {"claim_database_url": "sqlite:///conf.db", "claim_table": "conf_table"}
    env = {"CELERY_CLAIM_DATABASE_URL": "sqlite:///env.db", "CELERY_CLAIM_TABLE": "env_table",
           "CELERY_CLAIM_SOMETHING_ELSE": "ignored"}
    explicit = _admin.resolve(conf, database_url="sqlite:///x.db", table="x", environ=env)
    assert (explicit.database_url, explicit.table) == ("sqlite:///x.db", "x")
    from_conf = _admin.resolve(conf, environ=env)
    assert (from_conf.database_url, from_conf.table) == ("sqlite:///conf.db", "conf_table")
    from_env = _admin.resolve({}, environ=env)
    assert (from_env.database_url, from_env.table) == ("sqlite:///env.db", "env_table")
    default = _admin.resolve({}, environ={"CELERY_CLAIM_DATABASE_URL": "sqlite://"})
    assert default.table == "celery_claims"
    with pytest.raises(errors.ClaimConfigurationError, match="no claim store configured"):
        _admin.resolve({}, environ={})
    with pytest.raises(errors.ClaimConfigurationError, match="plain identifier"):
        _admin.resolve({}, table="a b", environ=env)


def test_describe_hides_the_password() -> None:
    config = _admin.resolve({}, database_url="postgresql+psycopg://u:secret@h/db", environ={})
    assert "secret" not in config.describe()
    assert config.describe() == "celery_claims at postgresql+psycopg://u:***@h/db"


def test_purge_batch_size_is_checked() -> None:
    with pytest.raises(errors.ClaimConfigurationError):
        _admin.purge_in_batches(object(), batch_size=0)  # type: ignore[arg-type]


def side(label: str, double: int, lost: int = 0) -> demo.SideResult:
    return demo.SideResult(label=label, jobs=10, deliveries=30, charges=10 + double,
                           double_effects=double, suppressed=20 - double, lost=lost,
                           seconds=2.0)


@pytest.mark.parametrize(("claim_double", "claim_lost", "exit_code"),
                         [(0, 0, 0), (1, 0, 1), (0, 2, 1)])
def test_demo_exit_code_follows_the_claimtask_side(monkeypatch: pytest.MonkeyPatch,
                                                   claim_double: int, claim_lost: int,
                                                   exit_code: int) -> None:
    def fake_run(options: demo.DemoOptions, quiet: bool = False) -> demo.DemoReport:
        assert options.jobs == 5
        return demo.DemoReport(name="x", claim_store="s", broker="b", processes=4,
                               naive=side("check-then-act", 7),
                               claim=side("ClaimTask", claim_double, claim_lost))

    monkeypatch.setattr(demo, "run", fake_run)
    result = run("demo", "--jobs", "5", "--json")
    assert result.exit_code == exit_code
    if exit_code:
        assert f"made {claim_double} double charge(s) and lost {claim_lost}" in result.stderr


def test_demo_report_table_prints_both_sides() -> None:
    from rich.console import Console

    report = demo.DemoReport(name="x", claim_store="s", broker="b", processes=4,
                             naive=side("check-then-act", 7), claim=side("ClaimTask", 0))
    console = Console(record=True, width=100)
    demo.print_report(report, console)
    text = console.export_text()
    assert "check-then-act" in text
    assert "ClaimTask charged every order exactly once." in text
    assert report.naive.throughput == 15.0
